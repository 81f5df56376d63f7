/**
 * `pledger node daemon`: the agent's cycles on node-cron schedules, for months.
 *
 * The daemon itself only schedules. Each cycle runs as a short-lived child process of
 * the plain cron form (`pledger node instance --config FILE --json`), so that:
 * - what a cycle allocates (a deployment loads the release format and the template
 *   engine) goes away with it: the daemon stays as small as node-cron and its timers;
 * - a cycle that crashes, leaks or hangs cannot take the daemon down: it is reported,
 *   killed when it outlives `schedule.cycleTimeoutMs`, and the next tick runs again.
 *
 * Each cycle never overlaps itself (noOverlap: the daemon waits for its child, and the
 * child takes the same per-cycle lock as a one-shot command, so a cron run and the
 * daemon never run one cycle twice at once) and waits a random delay first, so that a
 * fleet does not call its master in the same second. The services belong to the
 * supervisor, not to the daemon: stopping or restarting the daemon never touches them.
 */
import { spawn } from 'node:child_process';
import cron, { type ScheduledTask } from 'node-cron';
import { PledgerError } from '../protocol/errors.js';
import { scheduleSettings, type NodeConfig } from './config.js';
import { errorMessage } from './files.js';
import { withLock } from './lock.js';
import type { Logger } from './log.js';
import { lockPath } from './paths.js';
import { connectSupervisor } from './supervisor-client.js';

export type CycleName = 'software' | 'instance' | 'promise' | 'usage' | 'report';
export const CYCLE_NAMES: readonly CycleName[] = ['software', 'instance', 'promise', 'usage', 'report'];

/** After SIGTERM, how long a cycle (and what it started in its process group) has before SIGKILL. */
const KILL_AFTER_TERM_MS = 2000;

export interface DaemonOptions {
  /** The node configuration file, handed to every cycle. */
  configFile: string;
  /** argv that runs `pledger` (node, its flags, the CLI's entry point). */
  pledger: string[];
}

/** What a cycle's child ended with. */
interface CycleEnd {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the daemon killed it: 'timeout' or 'stop'. */
  killedFor?: 'timeout' | 'stop';
  /** The error the cycle reported (its JSON error line), if any. */
  error?: { code: string; message: string };
  /** Its printed result, when it got that far. */
  result?: { results?: { item: string; status: string; message?: string }[]; offline?: boolean };
  ms: number;
}

interface RunningCycle {
  done: Promise<CycleEnd>;
  kill(reason: 'timeout' | 'stop'): void;
}

/** The arguments of one cycle's child: the plain form, which starts without commander. */
export function cycleArguments(name: CycleName, configFile: string): string[] {
  // Called every minute while the master may be away: the outbox's retry delay is respected.
  return ['node', name, '--config', configFile, '--json', ...(name === 'report' ? ['--respect-retry-delay'] : [])];
}

/**
 * Starts one cycle's child in a process group of its own, so that a kill reaches what it
 * started too (a promise command, for instance). Its log lines (JSON, on stderr) are
 * passed on as they come; its error line and its result are kept for the summary.
 */
function startCycle(name: CycleName, options: DaemonOptions, timeoutMs: number, log: Logger): RunningCycle {
  const began = Date.now();
  const [program, ...flags] = options.pledger;
  const child = spawn(program!, [...flags, ...cycleArguments(name, options.configFile)], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let killedFor: CycleEnd['killedFor'];
  let error: CycleEnd['error'];
  let stdout = '';
  let pendingErr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  const relay = (line: string) => {
    if (!line) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      // Not one of ours (a warning from node itself): kept, as JSON like every line of the log.
      return log.error('cycle output', { cycle: name, line });
    }
    const reported = (parsed as { error?: { code?: unknown; message?: unknown } }).error;
    if (reported && typeof reported.code === 'string' && typeof reported.message === 'string') error = { code: reported.code, message: reported.message };
    else process.stderr.write(`${line}\n`);
  };
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (pendingErr + chunk).split('\n');
    pendingErr = lines.pop()!;
    lines.forEach(relay);
  });
  const signalGroup = (signal: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, signal);
    } catch {
      // Already gone.
    }
  };
  const kill = (reason: 'timeout' | 'stop') => {
    if (killedFor || child.exitCode !== null || child.signalCode !== null) return;
    killedFor = reason;
    signalGroup('SIGTERM');
    setTimeout(() => signalGroup('SIGKILL'), KILL_AFTER_TERM_MS).unref();
  };
  const timer = setTimeout(() => kill('timeout'), timeoutMs);
  const done = new Promise<CycleEnd>((resolve) => {
    child.once('error', (spawnError) => {
      clearTimeout(timer);
      resolve({ exitCode: null, signal: null, error: { code: 'INTERNAL', message: spawnError.message }, ms: Date.now() - began });
    });
    child.once('close', (exitCode, signal) => {
      clearTimeout(timer);
      relay(pendingErr);
      let result: CycleEnd['result'];
      try {
        result = stdout ? (JSON.parse(stdout) as CycleEnd['result']) : undefined;
      } catch {
        result = undefined;
      }
      resolve({ exitCode, signal, killedFor, error, result, ms: Date.now() - began });
    });
  });
  return { done, kill };
}

/** One line in the log for a cycle that did not simply succeed; nothing for one that did. */
function logCycleEnd(name: CycleName, end: CycleEnd, log: Logger): void {
  const fields = { cycle: name, exitCode: end.exitCode, ms: end.ms };
  if (end.killedFor === 'timeout') return log.error('cycle timed out', { ...fields, reason: `still running after ${end.ms} ms: killed` });
  if (end.killedFor === 'stop') return log.error('cycle killed', { ...fields, reason: 'still running when the daemon stopped' });
  // A one-shot command holding the cycle's lock is doing the same work: not an error.
  if (end.error?.code === 'CONFLICT') return log.info('cycle skipped', { cycle: name, reason: end.error.message });
  if (end.error) return log.error('cycle failed', { ...fields, code: end.error.code, reason: end.error.message });
  if (end.signal) return log.error('cycle failed', { ...fields, reason: `ended by ${end.signal}` });
  if (end.exitCode === 0) return;
  const failed = (end.result?.results ?? []).filter((r) => r.status === 'failed').map((r) => ({ item: r.item, message: r.message }));
  if (end.exitCode === 3 || (end.result?.offline && failed.length === 0)) return log.info('cycle done offline', { ...fields, reason: 'the master was unreachable' });
  if (failed.length > 0) return log.error('cycle done with failures', { ...fields, failed });
  log.error('cycle failed', { ...fields, reason: `exited with code ${end.exitCode}` });
}

export interface RunningDaemon {
  tasks: Record<CycleName, ScheduledTask>;
  /** Stops scheduling, lets the cycles under way finish within the grace period, then kills them. */
  stop(): Promise<void>;
}

/** Starts the supervisor (when it is not running) and schedules every cycle. */
export async function startDaemon(config: NodeConfig, options: DaemonOptions, log: Logger): Promise<RunningDaemon> {
  const schedule = scheduleSettings(config);
  for (const name of CYCLE_NAMES) {
    if (!cron.validate(schedule[name])) throw new PledgerError('BAD_REQUEST', `invalid schedule.${name}: "${schedule[name]}" is not a cron expression`);
  }
  await connectSupervisor(config, log);
  const running = new Set<RunningCycle>();
  let stopping = false;
  const run = (name: CycleName) => async () => {
    // A tick whose random delay ended after SIGTERM starts nothing.
    if (stopping) return;
    const cycle = startCycle(name, options, schedule.cycleTimeoutMs, log);
    running.add(cycle);
    try {
      logCycleEnd(name, await cycle.done, log);
    } catch (error) {
      log.error('cycle failed', { cycle: name, reason: errorMessage(error) });
    } finally {
      running.delete(cycle);
    }
  };
  // node-cron's own messages (a missed tick on a loaded machine...) go to our log, as JSON lines like the rest.
  const cronLogger = {
    info: (message: string) => log.info(message, { source: 'node-cron' }),
    warn: (message: string) => log.info(message, { source: 'node-cron' }),
    error: (message: string | Error) => log.error(errorMessage(message), { source: 'node-cron' }),
    debug: () => {},
  };
  const tasks = Object.fromEntries(
    CYCLE_NAMES.map((name) => [
      name,
      cron.schedule(schedule[name], run(name), { name: `pledger-${name}`, noOverlap: true, maxRandomDelay: schedule.maxRandomDelayMs, logger: cronLogger }),
    ]),
  ) as Record<CycleName, ScheduledTask>;
  log.info('daemon started', { schedule, pid: process.pid });
  return {
    tasks,
    stop: async () => {
      stopping = true;
      await Promise.all(Object.values(tasks).map((task) => task.destroy()));
      const cycles = [...running];
      const grace = setTimeout(() => cycles.forEach((cycle) => cycle.kill('stop')), schedule.stopGraceMs);
      await Promise.all(cycles.map((cycle) => cycle.done));
      clearTimeout(grace);
      log.info('daemon stopped');
    },
  };
}

/** Runs the daemon until SIGTERM or SIGINT; one daemon per node root. */
export async function runDaemon(config: NodeConfig, options: DaemonOptions, log: Logger): Promise<void> {
  // Listening before anything starts: a SIGTERM that arrives while the supervisor is being
  // reached, or right after "daemon started" is logged, still stops the daemon cleanly.
  const stopRequested = new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
  });
  await withLock(lockPath(config.root, 'daemon'), 'running the daemon', async () => {
    const daemon = await startDaemon(config, options, log);
    await stopRequested;
    await daemon.stop();
  });
}
