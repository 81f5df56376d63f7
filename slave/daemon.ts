/**
 * `pledger node daemon`: the agent's cycles on node-cron schedules, in one long-lived
 * process. Each cycle never overlaps itself (noOverlap, plus the same per-cycle lock as
 * the one-shot commands, so a cron run and the daemon never run one cycle twice at
 * once) and waits a random delay first, so that a fleet does not call its master in
 * the same second. The services belong to the supervisor, not to the daemon: stopping
 * or restarting the daemon never touches them.
 */
import cron, { type ScheduledTask } from 'node-cron';
import { PledgerError } from '../protocol/errors.js';
import { scheduleSettings, type NodeConfig } from './config.js';
import { errorMessage } from './files.js';
import { processInstances } from './instance.js';
import { withLock } from './lock.js';
import type { Logger } from './log.js';
import { lockPath } from './paths.js';
import { checkPromisesCycle } from './promise-cycle.js';
import { reportEvents } from './report.js';
import { installSoftware } from './software.js';
import { connectSupervisor } from './supervisor-client.js';
import { meterUsage } from './usage.js';

export { reportEvents } from './report.js';

export type CycleName = 'software' | 'instance' | 'promise' | 'usage' | 'report';

export const CYCLES: Record<CycleName, (config: NodeConfig, log: Logger) => Promise<unknown>> = {
  software: installSoftware,
  instance: processInstances,
  promise: checkPromisesCycle,
  usage: meterUsage,
  report: (config, log) => reportEvents(config, log, true),
};

export interface RunningDaemon {
  tasks: Record<CycleName, ScheduledTask>;
  /** Stops scheduling and waits for the cycles under way; the supervisor and its services stay. */
  stop(): Promise<void>;
}

/** Starts the supervisor (when it is not running) and schedules every cycle. */
export async function startDaemon(config: NodeConfig, log: Logger): Promise<RunningDaemon> {
  const schedule = scheduleSettings(config);
  for (const name of Object.keys(CYCLES) as CycleName[]) {
    if (!cron.validate(schedule[name])) throw new PledgerError('BAD_REQUEST', `invalid schedule.${name}: "${schedule[name]}" is not a cron expression`);
  }
  await connectSupervisor(config, log);
  const running = new Set<Promise<unknown>>();
  const run = (name: CycleName) => async () => {
    const cycle = CYCLES[name](config, log).catch((error: unknown) => {
      // A one-shot command holding the cycle's lock is doing the same work: not an error.
      if (error instanceof PledgerError && error.code === 'CONFLICT') log.info('cycle skipped', { cycle: name, reason: error.message });
      else log.error('cycle failed', { cycle: name, reason: errorMessage(error) });
    });
    running.add(cycle);
    try {
      await cycle;
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
    (Object.keys(CYCLES) as CycleName[]).map((name) => [
      name,
      cron.schedule(schedule[name], run(name), { name: `pledger-${name}`, noOverlap: true, maxRandomDelay: schedule.maxRandomDelayMs, logger: cronLogger }),
    ]),
  ) as Record<CycleName, ScheduledTask>;
  log.info('daemon started', { schedule });
  return {
    tasks,
    stop: async () => {
      await Promise.all(Object.values(tasks).map((task) => task.destroy()));
      await Promise.all([...running]);
      log.info('daemon stopped');
    },
  };
}

/** Runs the daemon until SIGTERM or SIGINT; one daemon per node root. */
export async function runDaemon(config: NodeConfig, log: Logger): Promise<void> {
  await withLock(lockPath(config.root, 'daemon'), 'running the daemon', async () => {
    const daemon = await startDaemon(config, log);
    await new Promise<void>((resolve) => {
      process.once('SIGTERM', resolve);
      process.once('SIGINT', resolve);
    });
    await daemon.stop();
  });
}
