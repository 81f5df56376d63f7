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
export const outboxPath = (root: string) => path.join(root, 'state', 'outbox.jsonl');
/** Held while a run builds software, or while a run converges partitions. */
export const lockPath = (root: string, task: 'software' | 'instances') => path.join(root, 'state', `${task}.lock`);
/** The agent's own files inside a partition (secrets), out of reach of rendered files. */
export const PARTITION_PRIVATE_DIR = '.pledger';
