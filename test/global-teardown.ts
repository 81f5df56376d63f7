/**
 * Around the whole run: every process a test starts is gone when the suite ends.
 *
 * Before any test file runs, the run gets a folder of its own, which becomes TMPDIR (so
 * every temporary node root, database and release of the run is under it), and a mark,
 * PLEDGER_TEST_RUN, in the environment every test process inherits. After the last one,
 * every process that carries the mark in its environment, or runs from that folder, or
 * names it on its command line is ended: masters, node agents, supervisors (which get a
 * clean environment but are given their root) and services (which run in their
 * partition). Processes of other runs on the same machine carry neither, and are left alone.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Pids of this process and its ancestors: the runner and what started it are not the tests'. */
function ancestors(): Set<number> {
  const pids = new Set<number>();
  let pid = process.pid;
  while (pid > 1 && !pids.has(pid)) {
    pids.add(pid);
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      break;
    }
  }
  return pids;
}

/**
 * The processes of this run still alive (zombies excepted: they are only waiting to be
 * reaped), with every descendant of theirs: a child with neither mark nor folder (a
 * service's `sleep`) would otherwise outlive its parent, orphaned.
 */
export function processesOfRun(mark: string, folder: string): number[] {
  const spared = ancestors();
  const found: number[] = [];
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || spared.has(Number(entry))) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] === 'Z') continue;
      const parent = Number(fields[1]);
      children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
      const environ = readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0');
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      let cwd = '';
      try {
        cwd = readlinkSync(`/proc/${entry}/cwd`);
      } catch {
        // not ours to read
      }
      if (environ.includes(`PLEDGER_TEST_RUN=${mark}`) || cmdline.includes(folder) || cwd === folder || cwd.startsWith(`${folder}/`)) found.push(Number(entry));
    } catch {
      // it ended while we looked
    }
  }
  const all = new Set<number>();
  const add = (pid: number) => {
    if (all.has(pid)) return;
    all.add(pid);
    for (const child of children.get(pid) ?? []) add(child);
  };
  found.forEach(add);
  return [...all];
}

/** Whether a process runs (a zombie does not: it only waits to be reaped). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

function signal(pids: number[], name: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, name);
    } catch {
      // already gone
    }
  }
}

export default function setup(): () => Promise<void> {
  const mark = randomBytes(8).toString('hex');
  const folder = mkdtempSync(path.join(tmpdir(), 'pledger-test-run-'));
  // The node agents run as an ordinary user: they must reach their homes inside.
  chmodSync(folder, 0o755);
  process.env.TMPDIR = folder;
  process.env.PLEDGER_TEST_RUN = mark;

  return async () => {
    // Stopped first, so that none forks or exits between the listing and the signal and
    // leaves an orphan no longer found among the descendants.
    const first = processesOfRun(mark, folder);
    signal(first, 'SIGSTOP');
    signal(first, 'SIGTERM');
    signal(first, 'SIGCONT');
    // A moment to exit cleanly (a master closing its database); then whatever is left is killed.
    for (let i = 0; i < 40 && (processesOfRun(mark, folder).length > 0 || first.some(alive)); i++) await sleep(50);
    // Those listed first too: one that ignores SIGTERM and lost its parent carries nothing that finds it again.
    const left = () => [...new Set([...processesOfRun(mark, folder), ...first.filter(alive)])];
    signal(left(), 'SIGKILL');
    for (let i = 0; i < 100 && left().length > 0; i++) await sleep(20);
    const survivors = left();
    if (survivors.length > 0) throw new Error(`processes of the test run still alive after SIGKILL: ${survivors.join(', ')}`);
    rmSync(folder, { recursive: true, force: true });
  };
}
