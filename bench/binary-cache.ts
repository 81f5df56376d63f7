/**
 * Figures for the binary cache, against a real master in this process: one release
 * whose only part is 32 MiB of random bytes (compresses as badly as real binaries),
 * installed by three nodes under three roots:
 *
 * 1. a node without the cache, which builds the part: the baseline;
 * 2. a node that uploads: the same build, plus packing, compressing and filing it;
 * 3. a node that downloads: verifying, unpacking and placing it instead of building.
 *
 * Run with `npm run bench:binary-cache`. Prints one line per figure. The build here is
 * one `head` command: a real build (a compiler, Debian packages) costs far more, and the
 * download side does not grow with it.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { initMaster, serveMaster } from '../master/server.js';
import { MasterClient } from '../protocol/client.js';
import { packSoftware } from '../protocol/software-archive.js';
import { resolveNodeConfig } from '../slave/config.js';
import { silentLogger } from '../slave/log.js';
import { installSoftware } from '../slave/software.js';

const PART_BYTES = 32 * 1024 * 1024;
const RUNS = 3;

process.env.PLEDGER_LOG_LEVEL = 'error';
const work = mkdtempSync(path.join(tmpdir(), 'pledger-bench-cache-'));
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const database = `sqlite:${path.join(work, 'master.db')}`;
  const { token } = await initMaster(database, 'admin');
  const master = await serveMaster({ database, host: '127.0.0.1', port: 0, softwareDir: null });
  const operator = new MasterClient({ url: master.url, token });
  const { publicKey } = await operator.binaryCache.key();
  const figures: Record<'plain' | 'upload' | 'download', number[]> = { plain: [], upload: [], download: [] };
  try {
    for (let run = 0; run < RUNS; run++) {
      // A new part each run (its build names the release): every node starts from nothing.
      const name = `blob${run}`;
      const dir = path.join(work, 'releases', name);
      mkdirSync(dir, { recursive: true });
      writeFileSync(
        path.join(dir, 'software.yaml'),
        `name: ${name}\nversion: 1.0.0\nparts:\n  blob:\n    shared: true\n    build: [[/bin/sh, -c, "head -c ${PART_BYTES} /dev/urandom > blob; echo ${name} > name"]]\nsoftware-types:\n  default: {}\n`,
      );
      await operator.software.publish(await packSoftware(dir));
      for (const [mode, binaryCache] of [
        ['plain', undefined],
        ['upload', { download: false, upload: true, publicKey }],
        ['download', { download: true, upload: false, publicKey }],
      ] as const) {
        const node = `${mode}-${run}`;
        const { credential } = await operator.nodes.register({ name: node });
        // Without the operator's leave the master would refuse the upload, and nothing would be there to download.
        if (binaryCache?.upload) await operator.nodes.update(node, { binaryCacheUpload: true });
        await operator.supplies.set({ software: `${name}@1.0.0`, node, state: 'available' });
        const root = path.join(work, 'nodes', node);
        const config = resolveNodeConfig({ masterUrl: master.url, credential, root, partitions: 1, ...(binaryCache ? { binaryCache } : {}) });
        const started = performance.now();
        const result = await installSoftware(config, silentLogger);
        const elapsed = performance.now() - started;
        if (result.results[0]?.status !== 'done') throw new Error(`${node}: ${JSON.stringify(result.results)}`);
        figures[mode].push(elapsed);
        await rm(root, { recursive: true, force: true });
      }
    }
  } finally {
    await master.close();
    await rm(work, { recursive: true, force: true });
  }
  const mib = PART_BYTES / 1024 / 1024;
  console.log(`part of ${mib} MiB (random bytes), median of ${RUNS} runs, each on a fresh node root:`);
  console.log(`build without the cache:          ${median(figures.plain).toFixed(0)} ms  (all: ${figures.plain.map((v) => v.toFixed(0)).join(', ')})`);
  console.log(`build and file it (upload):       ${median(figures.upload).toFixed(0)} ms  (all: ${figures.upload.map((v) => v.toFixed(0)).join(', ')})`);
  console.log(`take it from the cache (download): ${median(figures.download).toFixed(0)} ms  (all: ${figures.download.map((v) => v.toFixed(0)).join(', ')})`);
  console.log(`download side throughput:          ${(mib / (median(figures.download) / 1000)).toFixed(1)} MiB/s`);
}

await main();
