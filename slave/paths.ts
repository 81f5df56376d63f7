/**
 * Where everything lives under the node's root. The agent writes nowhere else.
 *
 *   <root>/software/<hash>/        a built release (complete when it holds BUILT_MARKER)
 *   <root>/partitions/<reference>/ one partition: the instance's files, var/log, .pledger/
 *   <root>/state/                  the agent's memory: desired state, outbox, partition states
 */
import os from 'node:os';
import path from 'node:path';

/** The configuration file `pledger node configure` writes, unless told otherwise. */
export function defaultNodeConfigPath(): string {
  return process.env.PLEDGER_NODE_CONFIG || path.join(os.homedir(), '.config', 'pledger', 'node.json');
}

export const BUILT_MARKER = '.pledger-built';

export const softwareRoot = (root: string) => path.join(root, 'software');
export const softwarePath = (root: string, hash: string) => path.join(root, 'software', hash);
export const partitionsRoot = (root: string) => path.join(root, 'partitions');
export const partitionPath = (root: string, reference: string) => path.join(root, 'partitions', reference);
export const stateRoot = (root: string) => path.join(root, 'state');
export const partitionStatePath = (root: string, reference: string) => path.join(root, 'state', 'partitions', `${reference}.json`);
export const desiredStatePath = (root: string) => path.join(root, 'state', 'desired-state.json');
/** The outbox of the first versions, a JSON line per event: imported into the node database once. */
export const legacyOutboxPath = (root: string) => path.join(root, 'state', 'outbox.jsonl');
/** SQLite: the outbox and the usage meter, written by the agent's cycles and by the supervisor. */
export const nodeDatabasePath = (root: string) => path.join(root, 'state', 'node.db');
/** Held while a cycle runs (one run per cycle at a time), and by the supervisor while it lives. */
export const lockPath = (root: string, task: 'software' | 'instances' | 'promises' | 'usage' | 'report' | 'supervisor' | 'daemon') =>
  path.join(root, 'state', `${task}.lock`);
/** The supervisor's control socket, its memory of every service, and its own log. */
export const supervisorSocketPath = (root: string) => path.join(root, 'state', 'supervisor.sock');
export const supervisorStatePath = (root: string) => path.join(root, 'state', 'supervisor.json');
export const supervisorLogPath = (root: string) => path.join(root, 'state', 'supervisor.log');
/** Where cron's one-shot runs append their log lines. */
export const logPath = (root: string) => path.join(root, 'state', 'agent.log');
/** The last result of each promise of a partition's instance. */
export const promiseResultsPath = (root: string, reference: string) => path.join(root, 'partitions', reference, '.pledger', 'promises.json');
/** The agent's own files inside a partition (secrets), out of reach of rendered files. */
export const PARTITION_PRIVATE_DIR = '.pledger';
