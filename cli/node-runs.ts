/**
 * The node agent's runs as commands: the cycles cron starts every minute
 * (`pledger node software|instance|promise|usage|report`) and the daemon that runs them
 * for months. Both are started often or live long, so they are reachable without
 * commander and the modules of every other command: `leanNodeCommand` recognizes their
 * plain forms (those cron and service managers use) before the CLI is built, and
 * `pledger node ...` under commander calls the same functions.
 */
import { PledgerError } from '../protocol/errors.js';
import { createLogger } from '../slave/log.js';
import { defaultNodeConfigPath } from '../slave/paths.js';
import type { ItemResult } from '../slave/result.js';
import { print, reportError, table, type OutputOptions } from './output.js';

/** Exit codes of one-shot node runs: 2 is a promise that does not hold, 3 a success while the master was unreachable. */
export const NODE_EXIT = { success: 0, failure: 1, promiseFailure: 2, offline: 3 } as const;

export type CycleCommand = 'software' | 'instance' | 'promise' | 'usage' | 'report';
const CYCLE_COMMANDS: readonly string[] = ['software', 'instance', 'promise', 'usage', 'report'] satisfies CycleCommand[];

// Each command loads the parts of the node agent it runs, and only those.
const nodeConfig = () => import('../slave/config.js');

export function integer(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n)) throw new PledgerError('BAD_REQUEST', `${flag} ${value} is not a whole number`);
  return n;
}

/** JSON lines when asked for JSON or when nobody reads the terminal (cron). */
export const agentLogger = (g: OutputOptions) => createLogger(Boolean(g.json) || !process.stderr.isTTY);

function printResults(g: OutputOptions, results: ItemResult[], offline: boolean): void {
  print(g, { results, offline }, (v) =>
    [
      v.results.length === 0 ? 'nothing to do' : table(['ITEM', 'STATUS', 'MESSAGE'], v.results.map((r) => [r.item, r.status, r.message ?? ''])),
      ...(v.offline ? ['the master was unreachable: events are kept and will be sent at the next run'] : []),
    ].join('\n'),
  );
  const failed = results.filter((r) => r.status === 'failed');
  const onlyPromises = failed.length > 0 && failed.every((r) => r.promiseFailure);
  process.exitCode = onlyPromises ? NODE_EXIT.promiseFailure : failed.length > 0 ? NODE_EXIT.failure : offline ? NODE_EXIT.offline : NODE_EXIT.success;
}

/** Cron starts every node at the same second: each run first waits a random part of this. */
async function randomDelay(seconds: string | undefined): Promise<void> {
  const max = integer(seconds, '--max-random-delay') ?? 0;
  if (max > 0) await new Promise((resolve) => setTimeout(resolve, Math.random() * max * 1000));
}

export interface CycleOptions {
  config: string;
  maxRandomDelay?: string;
  /** `node report` only: after a failed send, wait for the outbox's retry delay (the daemon's way). */
  respectRetryDelay?: boolean;
}

/** One run of a cycle, its results printed and its exit code set. */
export async function runCycle(command: CycleCommand, options: CycleOptions, g: OutputOptions): Promise<void> {
  await randomDelay(options.maxRandomDelay);
  const { readNodeConfig } = await nodeConfig();
  const config = await readNodeConfig(options.config);
  const log = agentLogger(g);
  switch (command) {
    case 'software': {
      const run = await (await import('../slave/software.js')).installSoftware(config, log);
      return printResults(g, run.results, run.offline);
    }
    case 'instance': {
      const run = await (await import('../slave/instance.js')).processInstances(config, log);
      return printResults(g, run.results, run.offline);
    }
    case 'promise': {
      const run = await (await import('../slave/promise-cycle.js')).checkPromisesCycle(config, log);
      return printResults(g, run.results, run.offline);
    }
    case 'usage': {
      const sample = await (await import('../slave/usage.js')).meterUsage(config, log);
      return print(g, sample, (v) => `sampled ${v.partitions} partition(s); ${v.hoursReported} hour(s) of usage queued`);
    }
    case 'report': {
      const flushed = await (await import('../slave/report.js')).reportEvents(config, log, Boolean(options.respectRetryDelay));
      print(g, flushed, (v) => `${v.sent} event(s) sent, ${v.pending} waiting${v.offline ? ': the master is unreachable' : ''}`);
      process.exitCode = flushed.offline ? NODE_EXIT.offline : NODE_EXIT.success;
      return;
    }
  }
}

/**
 * The daemon, until SIGTERM or SIGINT. Its log is JSON lines on stderr. Each cycle runs
 * this same program in its plain cron form, with node's flags as the daemon got them.
 */
export async function runNodeDaemon(configFile: string): Promise<void> {
  const [{ readNodeConfig }, { runDaemon }, path] = await Promise.all([nodeConfig(), import('../slave/daemon.js'), import('node:path')]);
  // Lite mode without --no-expose-wasm before it makes V8 print a warning at every start:
  // one plain line per cycle in a log of JSON lines. Its cycles get the flag.
  const flags = process.execArgv.includes('--lite-mode') && !process.execArgv.includes('--no-expose-wasm') ? ['--no-expose-wasm', ...process.execArgv] : process.execArgv;
  const pledger = [process.execPath, ...flags, path.resolve(process.argv[1]!)];
  await runDaemon(await readNodeConfig(configFile), { configFile: path.resolve(configFile), pledger }, createLogger(true));
}

/**
 * The run that `argv` (the arguments after `pledger`) asks for, when it is one of the
 * plain forms: `node daemon [--config FILE]`, or `node CYCLE` with any of `--config
 * FILE`, `--json`, `--max-random-delay SECONDS` (and `--respect-retry-delay` for `report`). Undefined for anything else, which
 * commander handles (help, mistakes, every other command).
 */
export function leanNodeCommand(argv: string[]): (() => Promise<void>) | undefined {
  const [group, command, ...rest] = argv;
  if (group !== 'node' || command === undefined) return undefined;
  const options: Record<string, string | true> = {};
  const valued = ['--config', ...(command === 'daemon' ? [] : ['--max-random-delay'])];
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]!;
    const equals = arg.indexOf('=');
    const name = equals > 0 ? arg.slice(0, equals) : arg;
    if (name in options) return undefined;
    if (valued.includes(name)) {
      const value = equals > 0 ? arg.slice(equals + 1) : rest[++i];
      if (value === undefined || value === '' || (equals < 0 && value.startsWith('-'))) return undefined;
      options[name] = value;
    } else if ((arg === '--json' && command !== 'daemon') || (arg === '--respect-retry-delay' && command === 'report')) {
      options[arg] = true;
    } else {
      return undefined;
    }
  }
  const config = (options['--config'] as string | undefined) ?? defaultNodeConfigPath();
  const g: OutputOptions = { json: options['--json'] === true };
  if (command === 'daemon') return () => guarded(g, () => runNodeDaemon(config));
  if (!CYCLE_COMMANDS.includes(command)) return undefined;
  const maxRandomDelay = options['--max-random-delay'] as string | undefined;
  const respectRetryDelay = options['--respect-retry-delay'] === true;
  return () => guarded(g, () => runCycle(command as CycleCommand, { config, maxRandomDelay, respectRetryDelay }, g));
}

/** Errors are printed as commander's path prints them. */
async function guarded(g: OutputOptions, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    process.exitCode = reportError(g, error);
  }
}
