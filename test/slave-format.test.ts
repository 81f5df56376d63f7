/** The node's configuration and how its root is cut into partitions. */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PledgerError } from '../protocol/errors.js';
import { defaultIpBase, defaultNodeConfigPath, readNodeConfig, resolveNodeConfig, writeNodeConfig, type NodeConfig } from '../slave/config.js';
import { computePartitions, formatNode } from '../slave/format.js';
import { silentLogger } from '../slave/log.js';
import { startInProcessMaster, type InProcessMaster } from './helpers/master-in-process.js';

let scratch: string;
let master: InProcessMaster;
let credential: string;

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'pledger-format-'));
  master = await startInProcessMaster();
  credential = await master.registerNode('format-node');
});

afterAll(async () => {
  await master.close();
  await rm(scratch, { recursive: true, force: true });
});

describe('partitions', () => {
  it('gives each partition the next address and its own range of ports', () => {
    expect(computePartitions({ partitions: 3, ipBase: '127.42.0.1', portBase: 30000, portsPerPartition: 10 })).toEqual([
      { reference: 'part0', ip: '127.42.0.1', ports: { first: 30000, last: 30009 } },
      { reference: 'part1', ip: '127.42.0.2', ports: { first: 30010, last: 30019 } },
      { reference: 'part2', ip: '127.42.0.3', ports: { first: 30020, last: 30029 } },
    ]);
    const wide = computePartitions({ partitions: 300, ipBase: '127.1.0.250', portBase: 20000, portsPerPartition: 5 });
    expect(wide[6]).toEqual({ reference: 'part6', ip: '127.1.1.0', ports: { first: 20030, last: 20034 } });
    expect(wide.at(-1)?.ip).toBe('127.1.2.37');
  });

  it('formats the node idempotently and reports its partitions to the master', async () => {
    const config: NodeConfig = resolveNodeConfig({ masterUrl: master.url, credential, root: path.join(scratch, 'node'), partitions: 2 });
    const first = await formatNode(config, silentLogger);
    expect(first.map((p) => p.reference)).toEqual(['part0', 'part1']);
    const nodes = await master.operator.nodes.list();
    expect(nodes).toEqual([expect.objectContaining({ name: 'format-node', partitions: 2, freePartitions: 2 })]);
    expect((await stat(path.join(config.root, 'partitions', 'part1'))).mode & 0o777).toBe(0o750);
    await writeFile(path.join(config.root, 'partitions', 'part0', 'keep.txt'), 'kept');
    expect(await formatNode(config, silentLogger)).toEqual(first);
    expect(await readFile(path.join(config.root, 'partitions', 'part0', 'keep.txt'), 'utf8')).toBe('kept');
    expect(master.answered.filter((r) => r === 'PUT /api/v1/node/partitions 200')).toHaveLength(2);
  });
});

describe('node configuration', () => {
  it('fills in the defaults', () => {
    expect(resolveNodeConfig({ masterUrl: 'http://127.0.0.1:8600', credential: 'c', root: '/srv/pledger' })).toEqual({
      masterUrl: 'http://127.0.0.1:8600',
      credential: 'c',
      root: '/srv/pledger',
      partitions: 4,
      ipBase: defaultIpBase('/srv/pledger'),
      portBase: 30000,
      portsPerPartition: 10,
    });
  });

  it('derives the default addresses from the root: the same root always, another root elsewhere, never 127.0.x.x', () => {
    const bases = Array.from({ length: 200 }, (_, i) => defaultIpBase(`/home/user${i}/pledger-node`));
    expect(bases.length).toBeGreaterThan(0);
    for (const base of bases) expect(base).toMatch(/^127\.([1-9]|[1-9]\d|1\d\d|2[0-4]\d|25[0-4])\.(\d|[1-9]\d|1\d\d|2[0-4]\d|25[0-5])\.1$/);
    expect(new Set(bases).size).toBeGreaterThan(190);
    expect(defaultIpBase('/srv/pledger/')).toBe(defaultIpBase('/srv/pledger'));
    const given = resolveNodeConfig({ masterUrl: 'http://127.0.0.1:8600', credential: 'c', root: '/srv/pledger', ipBase: '127.42.0.1' });
    expect(given.ipBase).toBe('127.42.0.1');
  });

  it('refuses a bad configuration with a clear error and a hint', () => {
    const base = { masterUrl: 'http://127.0.0.1:8600', credential: 'c', root: '/srv/pledger' };
    const refusal = (input: unknown) => {
      try {
        resolveNodeConfig(input);
      } catch (error) {
        expect(error).toBeInstanceOf(PledgerError);
        expect((error as PledgerError).code).toBe('BAD_REQUEST');
        expect((error as PledgerError).hint).toMatch(/pledger node configure/);
        return (error as Error).message;
      }
      throw new Error('accepted');
    };
    expect(refusal({ ...base, root: 'relative/dir' })).toMatch(/root/);
    expect(refusal({ ...base, credential: undefined })).toMatch(/credential/);
    expect(refusal({ ...base, ipBase: '10.0.0.1' })).toMatch(/ipBase/);
    expect(refusal({ ...base, ipBase: '127.0.0.300' })).toMatch(/not an IPv4 address/);
    expect(refusal({ ...base, portBase: 65530 })).toMatch(/above 65535/);
    expect(refusal({ ...base, colour: 'blue' })).toMatch(/must NOT have additional properties/);
  });

  it('writes the file with mode 0600 and reads it back', async () => {
    const file = path.join(scratch, 'conf', 'deep', 'node.json');
    const config = resolveNodeConfig({ masterUrl: 'http://127.0.0.1:8600', credential: 'secret', root: '/srv/pledger', partitions: 8 });
    await writeNodeConfig(file, config);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readNodeConfig(file)).toEqual(config);
  });

  it('says what to do when the file is missing or broken', async () => {
    await expect(readNodeConfig(path.join(scratch, 'none.json'))).rejects.toMatchObject({ code: 'BAD_REQUEST', message: /does not exist/ });
    const broken = path.join(scratch, 'broken.json');
    await writeFile(broken, '{ nope');
    await expect(readNodeConfig(broken)).rejects.toMatchObject({ code: 'BAD_REQUEST', message: /is not JSON/, hint: /pledger node configure/ });
  });

  it('finds its file through PLEDGER_NODE_CONFIG, or in ~/.config', () => {
    const saved = process.env.PLEDGER_NODE_CONFIG;
    try {
      process.env.PLEDGER_NODE_CONFIG = '/etc/pledger/node.json';
      expect(defaultNodeConfigPath()).toBe('/etc/pledger/node.json');
      delete process.env.PLEDGER_NODE_CONFIG;
      expect(defaultNodeConfigPath()).toMatch(/\.config\/pledger\/node\.json$/);
    } finally {
      if (saved === undefined) delete process.env.PLEDGER_NODE_CONFIG;
      else process.env.PLEDGER_NODE_CONFIG = saved;
    }
  });
});
