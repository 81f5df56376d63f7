/**
 * A fleet written straight into a master's database through the ledger, as
 * registrations, layouts and supplies would write it: the benchmarks need thousands of
 * nodes, which would take minutes to register over HTTP one by one. Also the figures
 * both benchmarks print: an fsync's time and the CPU time of processes.
 */
import { randomUUID } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { Kysely } from 'kysely';
import type { Tables } from '../master/db/tables.js';
import { record } from '../master/ledger/movements.js';
import { hashSecret, newSecret } from '../master/secrets.js';
import type { Labels } from '../protocol/api.js';

/** A release the benchmarks request: one software type, any parameters. */
export async function publishBenchSoftware(db: Kysely<Tables>, softwareId = 'bench@1.0.0'): Promise<string> {
  const [name, version] = softwareId.split('@') as [string, string];
  await db.transaction().execute(async (trx) => {
    await record(
      trx,
      {
        kind: 'software.published',
        data: {
          softwareId,
          name,
          version,
          hash: '0'.repeat(64),
          description: 'benchmark',
          definition: { name, version, 'software-types': { default: {} } },
          parameterSchemas: { default: { type: 'object' } },
        },
      },
      { actor: 'master', subject: softwareId },
    );
  });
  return softwareId;
}

export interface FleetSpec {
  nodes: number;
  partitions: number;
  softwareId: string;
  ownerId: string;
  labels?: (n: number) => Labels;
  /** Node names: `node-000042` by default. */
  name?: (n: number) => string;
}

export interface WrittenNode {
  id: string;
  name: string;
  /** The node's own credential, as `pledger node register` would have printed it. */
  credential: string;
}

/** Registers, lays out and supplies `spec.nodes` nodes, 500 to a transaction; each is seen now. */
export async function writeFleet(db: Kysely<Tables>, spec: FleetSpec): Promise<WrittenNode[]> {
  const written: WrittenNode[] = [];
  const now = new Date().toISOString();
  for (let first = 0; first < spec.nodes; first += 500) {
    await db.transaction().execute(async (trx) => {
      for (let n = first; n < Math.min(first + 500, spec.nodes); n++) {
        const nodeId = randomUUID();
        const name = spec.name?.(n) ?? `node-${String(n).padStart(6, '0')}`;
        const credential = newSecret('plg_n');
        const labels = spec.labels?.(n) ?? {};
        await record(
          trx,
          { kind: 'node.registered', data: { nodeId, name, credentialHash: hashSecret(credential), scope: 'open', ownerId: spec.ownerId, labels } },
          { actor: 'master', subject: nodeId },
        );
        const partitions = Array.from({ length: spec.partitions }, (_, p) => ({ reference: `part${p}`, ip: '127.0.0.1', ports: { first: 20000 + p * 10, last: 20009 + p * 10 } }));
        await record(trx, { kind: 'node.formatted', data: { nodeId, partitions } }, { actor: `node:${name}`, subject: nodeId });
        await record(trx, { kind: 'supply.requested', data: { nodeId, softwareId: spec.softwareId, state: 'available' } }, { actor: 'master', subject: nodeId });
        await trx.insertInto('node_heartbeats').values({ node_id: nodeId, last_seen_at: now }).execute();
        written.push({ id: nodeId, name, credential });
      }
    });
  }
  return written;
}

/** How long the disk takes to flush one small write: the floor of a commit's latency. */
export function fsyncMilliseconds(where: string): string {
  const file = path.join(where, 'fsync-probe');
  const fd = openSync(file, 'w');
  const times = [];
  for (let i = 0; i < 20; i++) {
    writeSync(fd, `${i}\n`);
    const start = performance.now();
    fsyncSync(fd);
    times.push(performance.now() - start);
  }
  closeSync(fd);
  rmSync(file);
  return times.sort((a, b) => a - b)[10]!.toFixed(1);
}

/** CPU time this process used since `before`: on a busy machine, wall time says less. */
export function cpuSeconds(before: NodeJS.CpuUsage): string {
  const used = process.cpuUsage(before);
  return ((used.user + used.system) / 1e6).toFixed(1);
}

export function seconds(since: number): string {
  return ((performance.now() - since) / 1000).toFixed(1);
}

const TICKS_PER_SECOND = 100;

/**
 * CPU time (user + system) of another process so far, in milliseconds, from
 * /proc/PID/stat (fields 14 and 15, in clock ticks of 10 ms on Linux).
 */
export function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}
