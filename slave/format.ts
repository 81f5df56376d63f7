/**
 * Formatting a node: cutting its root into partitions, each with a directory, an
 * address of its own and a range of ports, and telling the master about them.
 */
import { chmod, mkdir } from 'node:fs/promises';
import type { PartitionDefinition, PartitionsReport } from '../protocol/api.js';
import { ipToNumber, numberToIp, type NodeConfig } from './config.js';
import type { Logger } from './log.js';
import { connectMaster } from './master.js';
import { partitionPath, partitionsRoot, softwareRoot, stateRoot } from './paths.js';

/** Partition i (0-based) is `part<i>`, at ipBase + i, with ports portBase + i * portsPerPartition onwards. */
export function computePartitions(config: Pick<NodeConfig, 'partitions' | 'ipBase' | 'portBase' | 'portsPerPartition'>): PartitionDefinition[] {
  const firstIp = ipToNumber(config.ipBase);
  return Array.from({ length: config.partitions }, (_, i) => {
    const first = config.portBase + i * config.portsPerPartition;
    return { reference: `part${i}`, ip: numberToIp(firstIp + i), ports: { first, last: first + config.portsPerPartition - 1 } };
  });
}

/** Idempotent: existing directories and their content are kept; the master gets the same list again. */
export async function formatNode(config: NodeConfig, log: Logger): Promise<PartitionDefinition[]> {
  const partitions = computePartitions(config);
  for (const dir of [softwareRoot(config.root), stateRoot(config.root), partitionsRoot(config.root)]) {
    await mkdir(dir, { recursive: true, mode: 0o750 });
  }
  for (const partition of partitions) {
    const dir = partitionPath(config.root, partition.reference);
    await mkdir(dir, { recursive: true });
    await chmod(dir, 0o750);
  }
  const report: PartitionsReport = { partitions };
  await connectMaster(config).node.partitions(report);
  log.info('node formatted', { partitions: partitions.length, root: config.root });
  return partitions;
}
