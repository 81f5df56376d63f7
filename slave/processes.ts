/**
 * The processes of services, as /proc shows them. The supervisor (supervisor.ts) starts
 * each service in a process group of its own, detached, so that it outlives the agent
 * run that asked for it; afterwards a service is known by its pid and its start time,
 * which guards against pid reuse (a pid alone could name an unrelated process later).
 * Here: reading a process's state, telling whether it is still the same one, the
 * members of its group, stopping the whole group, and the clean environment it gets.
 */
import { readdir, readFile } from 'node:fs/promises';

export interface ServiceRecord {
  pid: number;
  /** Field 22 of /proc/<pid>/stat: clock ticks after boot at which the process started. */
  startTime: number;
}

interface ProcessStat {
  state: string;
  pgid: number;
  startTime: number;
}

/** The PATH every child gets: the agent's own environment never leaks into builds or services. */
export const CLEAN_PATH = '/usr/local/bin:/usr/bin:/bin';

export function cleanEnv(home: string): Record<string, string> {
  return { PATH: CLEAN_PATH, HOME: home, LANG: 'C.UTF-8' };
}

export async function readProcessStat(pid: number): Promise<ProcessStat | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may itself hold spaces or
  // parentheses: the fields are counted from the last closing one, which ends field 2.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const field = (n: number) => fields[n - 3] ?? '';
  return { state: field(3), pgid: Number(field(5)), startTime: Number(field(22)) };
}

/** Alive: the same process (same start time) still exists and is not a zombie. */
export async function isAlive(record: ServiceRecord): Promise<boolean> {
  const stat = await readProcessStat(record.pid);
  return stat !== undefined && stat.startTime === record.startTime && stat.state !== 'Z';
}

/**
 * The child writes straight into an open file, not through a pipe to the agent, so it
 * keeps its output when the agent exits. execa takes any descriptor; its types list 3-9.
 */
export function fileDescriptor(fd: number): 3 {
  return fd as 3;
}

/** The processes of a group that still run (zombies excluded: they are only waiting to be reaped). */
export async function groupMembers(pgid: number): Promise<number[]> {
  const members: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readProcessStat(Number(name));
    if (stat && stat.pgid === pgid && stat.state !== 'Z') members.push(Number(name));
  }
  return members;
}

/**
 * True when the group named by the service's pid is still the service's group. If the
 * leader is gone its children may still hold the group; if the pid now names another
 * process, the kernel had freed the number, so our group had no member left.
 */
async function ownsGroup(record: ServiceRecord): Promise<boolean> {
  const stat = await readProcessStat(record.pid);
  return stat === undefined || stat.startTime === record.startTime;
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

async function waitForEmptyGroup(pgid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if ((await groupMembers(pgid)).length === 0) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Stops a service and everything it started: SIGTERM to its process group, then
 * SIGKILL to the group if anything is left after the grace period.
 */
export async function stopProcessGroup(record: ServiceRecord, graceMs = 5000): Promise<void> {
  if (!(await ownsGroup(record))) return;
  if ((await groupMembers(record.pid)).length === 0) return;
  signalGroup(record.pid, 'SIGTERM');
  if (await waitForEmptyGroup(record.pid, graceMs)) return;
  signalGroup(record.pid, 'SIGKILL');
  if (!(await waitForEmptyGroup(record.pid, 2000))) throw new Error(`process group ${record.pid} survived SIGKILL`);
}

/** One line of the process table, as the supervisor and the usage meter need it. */
export interface ProcessInfo {
  pid: number;
  ppid: number;
  pgid: number;
  state: string;
  startTime: number;
  /** user + system CPU time, in clock ticks. */
  cpuTicks: number;
  /** user + system CPU time of the children it waited for (reaped), in clock ticks. */
  reapedCpuTicks: number;
  rssPages: number;
}

/** Clock ticks per second of /proc/<pid>/stat times: 100 on every Linux this runs on. */
export const CLOCK_TICKS_PER_SECOND = 100;

export function parseProcessStat(pid: number, text: string): ProcessInfo {
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const field = (n: number) => Number(fields[n - 3] ?? 0);
  return {
    pid,
    ppid: field(4),
    pgid: field(5),
    state: fields[0] ?? '',
    startTime: field(22),
    cpuTicks: field(14) + field(15),
    reapedCpuTicks: field(16) + field(17),
    rssPages: field(24),
  };
}

/** Every process visible in /proc, zombies included (their state says so). */
export async function readProcessTable(): Promise<ProcessInfo[]> {
  const table: ProcessInfo[] = [];
  const names = await readdir('/proc');
  await Promise.all(
    names.map(async (name) => {
      if (!/^\d+$/.test(name)) return;
      try {
        table.push(parseProcessStat(Number(name), await readFile(`/proc/${name}/stat`, 'utf8')));
      } catch {
        // ended while we looked
      }
    }),
  );
  return table;
}

/**
 * The live processes of the trees rooted at `groups` (process group ids of services):
 * every member of those groups and every descendant of a member, even one that moved to
 * a group or session of its own. With `zombies`, those that ended and wait for their
 * parent are kept too: they still hold the CPU time that parent is about to inherit.
 */
export function processTrees(table: ProcessInfo[], groups: Set<number>, zombies = false): ProcessInfo[] {
  const children = new Map<number, ProcessInfo[]>();
  for (const p of table) {
    const list = children.get(p.ppid);
    if (list) list.push(p);
    else children.set(p.ppid, [p]);
  }
  const found = new Map<number, ProcessInfo>();
  const visit = (p: ProcessInfo) => {
    if (found.has(p.pid)) return;
    found.set(p.pid, p);
    for (const child of children.get(p.pid) ?? []) visit(child);
  };
  for (const p of table) if (groups.has(p.pgid)) visit(p);
  return [...found.values()].filter((p) => zombies || p.state !== 'Z');
}
