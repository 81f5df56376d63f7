/**
 * What the agent last did in each partition, kept in <root>/state/partitions/<ref>.json.
 * It is the agent's memory between runs: which instance and serial were deployed, which
 * processes belong to them, and what was last reported, so that nothing is redone or
 * reported twice when nothing changed.
 */
import { rm } from 'node:fs/promises';
import { readJsonFile, writeFileAtomic } from './files.js';
import { partitionStatePath } from './paths.js';
import type { PromiseDefinition } from '../protocol/software-release.js';
import type { ServiceRecord } from './processes.js';

/**
 * - `deployed`: files rendered and services started, promises not (yet) kept;
 * - `started`: deployed and every promise kept;
 * - `error`: this serial could not be deployed (`message` says why);
 * - `stopped`: services stopped on request;
 * - `destroyed`: a tombstone: the partition was wiped and the master told, which must
 *   not happen again at every run while the master still lists the destroyed instance.
 */
export type LocalStatus = 'deployed' | 'started' | 'error' | 'stopped' | 'destroyed' | 'waiting';

export interface PartitionState {
  instanceId: string;
  serial: number;
  status: LocalStatus;
  services: Record<string, ServiceRecord>;
  /** The last error reported for this serial. */
  message?: string;
  /** The instance's promises as rendered for this serial: what the periodic promise cycle checks. */
  promises?: Record<string, PromiseDefinition>;
}

export async function readPartitionState(root: string, reference: string): Promise<PartitionState | undefined> {
  return (await readJsonFile(partitionStatePath(root, reference))) as PartitionState | undefined;
}

export async function writePartitionState(root: string, reference: string, state: PartitionState): Promise<void> {
  await writeFileAtomic(partitionStatePath(root, reference), `${JSON.stringify(state, null, 2)}\n`, 0o600);
}

export async function deletePartitionState(root: string, reference: string): Promise<void> {
  await rm(partitionStatePath(root, reference), { force: true });
}
