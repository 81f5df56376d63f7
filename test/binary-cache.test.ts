/**
 * The binary cache of built parts, end to end: a real master process (on SQLite, and
 * on PostgreSQL when one is given), the real CLI, and node agents running as an
 * unprivileged user. Node A builds parts and files them; node B, under another root,
 * takes the relocatable ones instead of building them and builds the ones that hold
 * node A's root. An archive changed in the master's storage, a row whose signature
 * does not cover it, and a signed archive that leads out of the part are each refused,
 * and the part is built instead. A node that was not told to use the cache neither
 * takes from it nor gives to it; one the operator did not allow to file parts is
 * refused by the master, whatever its own configuration says, and builds anyway.
 */
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readlinkSync, symlinkSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import Sqlite from 'better-sqlite3';
import pg from 'pg';
import { create } from 'tar';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { binaryEntryMessage, encodePublicKey } from '../protocol/binary-cache.js';
import { freshDatabase, testEngines, type TestDatabase, type TestEngine } from './helpers/databases.js';
import { agentUser, pledger, portBase, processesMentioning, startMaster, type AgentUser, type RunningMaster, type RunResult } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Plain SQL on the master's own storage, to play the attacker who can write to it. */
interface Storage {
  query<T>(text: string, params?: unknown[]): Promise<T[]>;
  close(): Promise<void>;
}

async function openStorage(engine: TestEngine, url: string): Promise<Storage> {
  if (engine === 'sqlite') {
    const sqlite = new Sqlite(url.replace(/^sqlite:/, ''));
    return {
      query: async <T,>(text: string, params: unknown[] = []) => {
        const statement = sqlite.prepare(text);
        return (statement.reader ? statement.all(...params) : (statement.run(...params), [])) as T[];
      },
      close: async () => void sqlite.close(),
    };
  }
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  return {
    query: async <T,>(text: string, params: unknown[] = []) => {
      let n = 0;
      return (await client.query(text.replace(/\?/g, () => `$${++n}`), params)).rows as T[];
    },
    close: () => client.end(),
  };
}

interface CacheRow {
  part_hash: string;
  platform: string;
  prefix: string;
  sha256: string;
  signature: string;
}

/** A gzipped tar whose one entry has the name given as is: no tar tool writes `../` names. */
function tarWithName(name: string, content: string): Buffer {
  const header = Buffer.alloc(512);
  const field = (offset: number, text: string) => header.write(text, offset, 'latin1');
  field(0, name);
  field(100, '0000644\0');
  field(108, '0000000\0');
  field(116, '0000000\0');
  field(124, `${Buffer.byteLength(content).toString(8).padStart(11, '0')}\0`);
  field(136, '00000000000\0');
  field(148, '        ');
  field(156, '0');
  field(257, 'ustar\0');
  field(263, '00');
  const checksum = header.reduce((sum, byte) => sum + byte, 0);
  field(148, `${checksum.toString(8).padStart(6, '0')}\0 `);
  const body = Buffer.alloc(Math.ceil(Buffer.byteLength(content) / 512) * 512);
  body.write(content);
  return gzipSync(Buffer.concat([header, body, Buffer.alloc(1024)]));
}

describe.each(testEngines())('the binary cache of built parts (%s)', (engine) => {
  let db: TestDatabase;
  let master: RunningMaster;
  let storage: Storage;
  let agent: AgentUser;
  let asAdmin: Record<string, string>;
  let evidence: string;
  let cacheKey: string | undefined;
  const nodes: Record<string, { root: string; config: string; credential: string }> = {};

  const setUpload = (name: string, value: string) => pledger(['node', 'set', name, '--binary-cache-upload', value, '--json'], { env: asAdmin });
  const uploadAllowed = async (name: string) =>
    (await pledger(['node', 'list', '--json'], { env: asAdmin })).json<{ name: string; binaryCacheUpload: boolean }[]>().find((n) => n.name === name)!.binaryCacheUpload;

  /** Registers a node with the CLI and configures it, as its agent's user, with `cacheArgs`. */
  async function addNode(name: string, cacheArgs: (key: string) => string[]): Promise<void> {
    const registered = await pledger(['node', 'register', name, '--json'], { env: asAdmin });
    expect(registered.exitCode, registered.stderr).toBe(0);
    const { credential, binaryCacheKey } = registered.json<{ credential: string; binaryCacheKey: string }>();
    expect(binaryCacheKey).toMatch(/^ed25519:[A-Za-z0-9_-]{43}$/);
    cacheKey ??= binaryCacheKey;
    // Every registration prints the same key: the master's.
    expect(binaryCacheKey).toBe(cacheKey);
    const root = path.join(agent.home, `root-${name}`);
    const config = path.join(agent.home, `${name}.json`);
    const configured = await pledger(
      ['node', 'configure', '--master', master.url, '--credential', credential, '--root', root, '--config', config, '--partitions', '1',
        '--ip-base', '127.46.0.1', '--port-base', String(portBase()), ...cacheArgs(binaryCacheKey)],
      { user: agent },
    );
    expect(configured.exitCode, configured.stderr).toBe(0);
    nodes[name] = { root, config, credential };
  }

  const runSoftware = (name: string): Promise<RunResult> =>
    pledger(['node', 'software', '--config', nodes[name]!.config, '--json'], { user: agent, timeoutMs: 300_000 });

  /**
   * Publishes a release of two parts and supplies it to `targets`. Every build of a part
   * appends its folder to the evidence file: a part taken from the cache leaves no line.
   * `portable` holds no path of its node; `rooted` writes its own path into a file.
   */
  async function publish(name: string, targets: string[]): Promise<void> {
    const record = `printf "%s\\n" "$PWD" >> "$0"`;
    const dir = writeTree({
      'software.yaml': [
        `name: ${name}`,
        'version: 1.0.0',
        'parts:',
        '  portable:',
        '    shared: true',
        `    build: [[/bin/sh, -c, '${record}; echo ${name} > what; date +%s%N > stamp', "${evidence}"]]`,
        '  rooted:',
        '    shared: true',
        `    build: [[/bin/sh, -c, '${record}; echo "$1" > where', "${evidence}", "{{ part.path }}"]]`,
        'software-types:',
        '  default: {}',
        '',
      ].join('\n'),
    });
    const published = await pledger(['software', 'publish', dir], { env: asAdmin });
    expect(published.exitCode, published.stderr).toBe(0);
    for (const node of targets) expect((await pledger(['supply', name, node], { env: asAdmin })).exitCode).toBe(0);
  }

  const builds = () => (existsSync(evidence) ? readFileSync(evidence, 'utf8').trim().split('\n').filter(Boolean) : []);
  /** The folder a node's release links its part to. */
  function partDir(node: string, release: string, part: string): string {
    return readlinkSync(path.join(nodes[node]!.root, 'software', releaseHash(node, release), 'parts', part));
  }
  const releaseHashes = new Map<string, string>();
  function releaseHash(node: string, release: string): string {
    return releaseHashes.get(`${node}/${release}`)!;
  }
  async function rememberHash(node: string, release: string): Promise<void> {
    const listed = await pledger(['node', 'list', '--json'], { env: asAdmin });
    const software = listed.json<{ name: string; software: { name: string; hash: string; status: string }[] }[]>().find((n) => n.name === node)!.software;
    const entry = software.find((s) => s.name === release)!;
    expect(entry.status).toBe('built');
    releaseHashes.set(`${node}/${release}`, entry.hash);
  }
  const rows = (partHash: string) => storage.query<CacheRow>('select part_hash, platform, prefix, sha256, signature from binary_cache where part_hash = ?', [partHash]);
  const stamp = (dir: string) => readFileSync(path.join(dir, 'stamp'), 'utf8');

  beforeAll(async () => {
    db = await freshDatabase(engine);
    master = await startMaster(db.url);
    storage = await openStorage(engine, db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    agent = agentUser();
    evidence = path.join(agent.home, 'builds.log');
    await addNode('builder', (key) => ['--binary-cache', 'both', '--binary-cache-key', key]);
    const allowed = await setUpload('builder', 'on');
    expect(allowed.exitCode, allowed.stderr).toBe(0);
    expect(allowed.json<{ binaryCacheUpload: boolean }>().binaryCacheUpload).toBe(true);
    await addNode('taker', (key) => ['--binary-cache', 'download', '--binary-cache-key', key]);
    await addNode('plain', () => []);
  }, 120_000);

  afterAll(async () => {
    for (const node of Object.values(nodes)) {
      for (const p of processesMentioning(node.root)) process.kill(p.pid, 'SIGKILL');
    }
    await storage?.close();
    await master?.stop();
    await db?.drop();
  });

  it('keeps the key with the master: the same key at every call, the private half never served', async () => {
    const again = await pledger(['node', 'binary-cache-key', '--json'], { env: asAdmin });
    expect(again.json<{ publicKey: string }>().publicKey).toBe(cacheKey);
    const stored = await storage.query<{ public_key: string; private_key: string }>('select public_key, private_key from signing_keys');
    expect(stored).toHaveLength(1);
    expect(stored[0]!.public_key).toBe(cacheKey);
    const served = await fetch(`${master.url}/api/v1/binary-cache/key`, { headers: { authorization: `Bearer ${master.adminToken}` } });
    expect(await served.json()).toEqual({ publicKey: cacheKey });
    expect((await fetch(`${master.url}/api/v1/binary-cache/key`)).status).toBe(401);
    // Written in the node's configuration as given, nothing else.
    const config = JSON.parse(readFileSync(nodes.taker!.config, 'utf8')) as { binaryCache: unknown };
    expect(config.binaryCache).toEqual({ download: true, upload: false, publicKey: cacheKey });
    expect(JSON.parse(readFileSync(nodes.plain!.config, 'utf8'))).not.toHaveProperty('binaryCache');
  });

  it('refuses a cache mode without a key, an unknown mode and a malformed key, writing nothing', async () => {
    const config = path.join(agent.home, 'refused.json');
    const base = ['node', 'configure', '--master', master.url, '--credential', 'x', '--root', path.join(agent.home, 'r'), '--config', config];
    const noKey = await pledger([...base, '--binary-cache', 'download'], { user: agent });
    expect(noKey.exitCode).not.toBe(0);
    expect(noKey.stderr).toContain('--binary-cache download needs --binary-cache-key');
    const badMode = await pledger([...base, '--binary-cache', 'sometimes', '--binary-cache-key', cacheKey!], { user: agent });
    expect(badMode.stderr).toContain('expected off, download, upload or both');
    const badKey = await pledger([...base, '--binary-cache', 'both', '--binary-cache-key', 'ed25519:short'], { user: agent });
    expect(badKey.exitCode).not.toBe(0);
    expect(badKey.stderr).toContain('binaryCache.publicKey');
    expect(existsSync(config)).toBe(false);
  });

  it('files what node A built; node B under another root takes the relocatable part without building it', async () => {
    await publish('shared-build', ['builder', 'taker']);
    const built = await runSoftware('builder');
    expect(built.exitCode, built.stderr).toBe(0);
    await rememberHash('builder', 'shared-build');
    const portableA = partDir('builder', 'shared-build', 'portable');
    const rootedA = partDir('builder', 'shared-build', 'rooted');
    expect(builds()).toEqual([portableA, rootedA]);
    expect(built.stderr).toContain('part filed in the binary cache');

    // The portable part is filed for any root; the rooted one for node A's root only.
    const portableRows = await rows(path.basename(portableA));
    expect(portableRows).toHaveLength(1);
    expect(portableRows[0]!.prefix).toBe('');
    expect(portableRows[0]!.platform).toMatch(/^[a-z0-9._+-]+\/[a-z0-9_]+$/);
    const rootedRows = await rows(path.basename(rootedA));
    expect(rootedRows.map((r) => r.prefix)).toEqual([nodes.builder!.root]);

    const taken = await runSoftware('taker');
    expect(taken.exitCode, taken.stderr).toBe(0);
    await rememberHash('taker', 'shared-build');
    const portableB = partDir('taker', 'shared-build', 'portable');
    const rootedB = partDir('taker', 'shared-build', 'rooted');
    expect(portableB.startsWith(nodes.taker!.root)).toBe(true);
    expect(taken.stderr).toContain('part taken from the binary cache');
    // Only the rooted part was built on node B: its path is node B's own.
    expect(builds()).toEqual([portableA, rootedA, rootedB]);
    expect(stamp(portableB)).toBe(stamp(portableA));
    expect(readFileSync(path.join(portableB, 'what'), 'utf8')).toBe('shared-build\n');
    // Marked as built by node B itself, once the part was in place.
    expect(existsSync(path.join(portableB, '.pledger-built'))).toBe(true);
    expect(readFileSync(path.join(portableB, '.pledger-built'), 'utf8')).not.toBe(readFileSync(path.join(portableA, '.pledger-built'), 'utf8'));
    expect(readFileSync(path.join(rootedB, 'where'), 'utf8').trim()).toBe(rootedB);
    // Node B downloads only: nothing was filed for its root.
    expect((await rows(path.basename(rootedB))).map((r) => r.prefix)).toEqual([nodes.builder!.root]);
  });

  it('files nothing from a node the operator did not allow, which builds its parts anyway, and files once allowed', async () => {
    await addNode('unvouched', (key) => ['--binary-cache', 'both', '--binary-cache-key', key]);
    expect(await uploadAllowed('unvouched')).toBe(false);
    const entries = async () => Number((await storage.query<{ n: number | string }>('select count(*) as n from binary_cache'))[0]!.n);
    const before = await entries();

    await publish('unvouched-build', ['unvouched']);
    const buildsBefore = builds().length;
    const refused = await runSoftware('unvouched');
    expect(refused.exitCode, refused.stderr).toBe(0);
    expect(refused.stderr).toContain('part not filed in the binary cache');
    expect(refused.stderr).toContain('node unvouched may not file parts in the binary cache');
    expect(refused.stderr).not.toContain('part filed in the binary cache');
    await rememberHash('unvouched', 'unvouched-build');
    const portable = partDir('unvouched', 'unvouched-build', 'portable');
    const rooted = partDir('unvouched', 'unvouched-build', 'rooted');
    expect(builds().slice(buildsBefore)).toEqual([portable, rooted]);
    expect(readFileSync(path.join(portable, 'what'), 'utf8')).toBe('unvouched-build\n');
    expect(await entries()).toBe(before);

    // The operator's switch, recorded in the ledger like the node's other settings.
    const allowed = await setUpload('unvouched', 'on');
    expect(allowed.exitCode, allowed.stderr).toBe(0);
    expect(await uploadAllowed('unvouched')).toBe(true);
    const movements = await storage.query<{ actor: string; data: string }>("select actor, data from movements where kind = 'node.updated' order by seq");
    expect(JSON.parse(movements.at(-1)!.data)).toMatchObject({ binaryCacheUpload: true });
    expect(movements.at(-1)!.actor).toMatch(/^account:/);

    await publish('vouched-build', ['unvouched']);
    const filed = await runSoftware('unvouched');
    expect(filed.exitCode, filed.stderr).toBe(0);
    expect(filed.stderr).toContain('part filed in the binary cache');
    await rememberHash('unvouched', 'vouched-build');
    const filedBy = await storage.query<{ name: string; prefix: string }>(
      'select nodes.name, binary_cache.prefix from binary_cache join nodes on nodes.id = binary_cache.uploaded_by where part_hash = ?',
      [path.basename(partDir('unvouched', 'vouched-build', 'portable'))],
    );
    expect(filedBy).toEqual([{ name: 'unvouched', prefix: '' }]);

    const off = await setUpload('unvouched', 'off');
    expect(off.exitCode, off.stderr).toBe(0);
    expect(off.json<{ binaryCacheUpload: boolean }>().binaryCacheUpload).toBe(false);
    const bad = await setUpload('unvouched', 'maybe');
    expect(bad.exitCode).not.toBe(0);
    expect(bad.stderr).toContain('--binary-cache-upload maybe: expected on or off');
    expect(await uploadAllowed('unvouched')).toBe(false);
  });

  it('refuses an archive changed or truncated in the master storage (checksum) and builds the part', async () => {
    const damage = {
      changed: (bytes: Buffer) => {
        const changed = Buffer.from(bytes);
        changed[changed.length - 5]! ^= 0xff;
        return changed;
      },
      truncated: (bytes: Buffer) => bytes.subarray(0, Math.floor(bytes.length / 2)),
    };
    for (const [kind, spoil] of Object.entries(damage)) {
      const release = `tampered-${kind}`;
      await publish(release, ['builder', 'taker']);
      expect((await runSoftware('builder')).exitCode).toBe(0);
      await rememberHash('builder', release);
      const portableA = partDir('builder', release, 'portable');
      const partHash = path.basename(portableA);
      const [stored] = await storage.query<{ content: Buffer }>('select content from binary_cache where part_hash = ? and prefix = ?', [partHash, '']);
      await storage.query('update binary_cache set content = ? where part_hash = ? and prefix = ?', [spoil(Buffer.from(stored!.content)), partHash, '']);

      const before = builds().length;
      const run = await runSoftware('taker');
      expect(run.exitCode, run.stderr).toBe(0);
      expect(run.stderr).toContain('binary cache entry refused: building the part instead');
      expect(run.stderr).toContain('checksum mismatch');
      await rememberHash('taker', release);
      const portableB = partDir('taker', release, 'portable');
      expect(builds().slice(before)).toContain(portableB);
      expect(stamp(portableB)).not.toBe(stamp(portableA));
      expect(readFileSync(path.join(portableB, 'what'), 'utf8')).toBe(`${release}\n`);
    }
  });

  it('refuses every entry to a node configured with another key, and builds', async () => {
    const otherKey = encodePublicKey(generateKeyPairSync('ed25519').publicKey);
    await addNode('stranger', () => ['--binary-cache', 'download', '--binary-cache-key', otherKey]);
    expect((await pledger(['supply', 'shared-build', 'stranger'], { env: asAdmin })).exitCode).toBe(0);
    const before = builds().length;
    const run = await runSoftware('stranger');
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.stderr).toContain('signature does not check against the configured binary cache key');
    await rememberHash('stranger', 'shared-build');
    expect(builds().slice(before)).toEqual([partDir('stranger', 'shared-build', 'portable'), partDir('stranger', 'shared-build', 'rooted')]);
  });

  it('refuses an archive whose checksum was changed with it, as the signature no longer covers it', async () => {
    await publish('forged', ['builder', 'taker']);
    expect((await runSoftware('builder')).exitCode).toBe(0);
    await rememberHash('builder', 'forged');
    const portableA = partDir('builder', 'forged', 'portable');
    // Another archive, consistent with its own sha256 and size: only the signature can tell.
    const fake = writeTree({ what: 'forged by someone else\n', stamp: 'fake\n', '.pledger-part.json': JSON.stringify({ hash: path.basename(portableA) }) });
    const chunks: Buffer[] = [];
    for await (const chunk of create({ gzip: true, cwd: fake, portable: true }, ['.'])) chunks.push(chunk as Buffer);
    const forged = Buffer.concat(chunks);
    await storage.query('update binary_cache set content = ?, sha256 = ?, size = ? where part_hash = ? and prefix = ?', [forged, sha256(forged), forged.length, path.basename(portableA), '']);

    const before = builds().length;
    const run = await runSoftware('taker');
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.stderr).toContain('signature does not check against the configured binary cache key');
    await rememberHash('taker', 'forged');
    const portableB = partDir('taker', 'forged', 'portable');
    expect(builds().slice(before)).toContain(portableB);
    expect(readFileSync(path.join(portableB, 'what'), 'utf8')).toBe('forged\n');
  });

  it('refuses a signed archive that leads out of the part, or links out of it, and builds the part', async () => {
    const privateKey = (await storage.query<{ private_key: string }>('select private_key from signing_keys'))[0]!.private_key;
    const outside = path.join(agent.home, 'escaped.txt');
    for (const [i, kind] of ['dotdot', 'link'].entries()) {
      const release = `escaping-${kind}`;
      await publish(release, ['builder', 'taker']);
      expect((await runSoftware('builder')).exitCode).toBe(0);
      await rememberHash('builder', release);
      const partHash = path.basename(partDir('builder', release, 'portable'));
      let archive: Buffer;
      if (kind === 'dotdot') {
        archive = tarWithName('../escaped.txt', 'out of the part');
      } else {
        const dir = writeTree({ '.pledger-part.json': JSON.stringify({ hash: partHash }) });
        mkdirSync(path.join(dir, 'sub'));
        symlinkSync('/etc', path.join(dir, 'sub', 'etc'));
        const chunks: Buffer[] = [];
        for await (const chunk of create({ gzip: true, cwd: dir, portable: true }, ['.'])) chunks.push(chunk as Buffer);
        archive = Buffer.concat(chunks);
      }
      // Signed with the master's own key: even an entry the master vouches for may not escape.
      const [row] = await rows(partHash);
      const entry = { partHash, platform: row!.platform, prefix: '', sha256: sha256(archive) };
      const signature = sign(null, binaryEntryMessage(entry), privateKey).toString('base64');
      await storage.query('update binary_cache set content = ?, sha256 = ?, size = ?, signature = ? where part_hash = ? and prefix = ?', [archive, entry.sha256, archive.length, signature, partHash, '']);

      const run = await runSoftware('taker');
      expect(run.exitCode, run.stderr).toBe(0);
      expect(run.stderr).toContain('binary cache entry refused');
      expect(run.stderr).toContain(kind === 'dotdot' ? 'leads out of the part' : 'out of the part');
      await rememberHash('taker', release);
      const portableB = partDir('taker', release, 'portable');
      expect(readFileSync(path.join(portableB, 'what'), 'utf8')).toBe(`${release}\n`);
      expect(existsSync(path.join(portableB, 'sub'))).toBe(false);
      expect(existsSync(outside), `case ${i}`).toBe(false);
    }
  });

  it('is off by default: a node not configured for it neither takes nor files parts', async () => {
    // Filed by node A first: the plain node could take it, and must not.
    await publish('without-cache', ['builder', 'plain']);
    expect((await runSoftware('builder')).exitCode).toBe(0);
    await rememberHash('builder', 'without-cache');
    const before = builds().length;
    const run = await runSoftware('plain');
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.stderr).not.toContain('binary cache');
    await rememberHash('plain', 'without-cache');
    const portable = partDir('plain', 'without-cache', 'portable');
    const rooted = partDir('plain', 'without-cache', 'rooted');
    expect(builds().slice(before)).toEqual([portable, rooted]);
    expect(stamp(portable)).not.toBe(stamp(partDir('builder', 'without-cache', 'portable')));

    // A release only the plain node builds: nothing reaches the cache.
    const count = async () => Number((await storage.query<{ n: number | string }>('select count(*) as n from binary_cache'))[0]!.n);
    const entries = await count();
    await publish('only-plain', ['plain']);
    expect((await runSoftware('plain')).exitCode).toBe(0);
    expect(await count()).toBe(entries);
    expect(await storage.query('select prefix from binary_cache where prefix = ?', [nodes.plain!.root])).toEqual([]);
  });

  describe('uploads, as the master checks them', () => {
    const put = (credential: string, partHash: string, query: Record<string, string>, body: Buffer) =>
      fetch(`${master.url}/api/v1/node/binaries/${partHash}?${new URLSearchParams(query).toString()}`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${credential}`, 'content-type': 'application/gzip' },
        body,
      });
    /**
     * Announces a body over the limit and sends none of it: the master answers from the
     * headers alone. (Sending 64 MiB would race the master closing the connection.)
     */
    const announceTooLarge = (credential: string, part: string, query: Record<string, string>) =>
      new Promise<number>((resolve, reject) => {
        const request = httpRequest(`${master.url}/api/v1/node/binaries/${part}?${new URLSearchParams(query).toString()}`, {
          method: 'PUT',
          headers: { authorization: `Bearer ${credential}`, 'content-type': 'application/gzip', 'content-length': String(64 * 1024 * 1024 + 1) },
        });
        request.on('response', (response) => {
          resolve(response.statusCode ?? 0);
          request.destroy();
        });
        request.on('error', reject);
        request.flushHeaders();
      });
    const partHash = 'a'.repeat(64);
    const archive = tarWithName('file', 'an archive');
    const count = async () => Number((await storage.query<{ n: number | string }>('select count(*) as n from binary_cache'))[0]!.n);

    it('takes them from nodes only, and refuses a wrong checksum, a bad key, a body not gzipped, damaged or too large, storing nothing', async () => {
      const before = await count();
      const good = { platform: 'debian-12/x64', prefix: '', sha256: sha256(archive) };
      expect((await put(master.adminToken, partHash, good, archive)).status).toBe(401);
      const wrongSum = await put(nodes.builder!.credential, partHash, { ...good, sha256: 'b'.repeat(64) }, archive);
      expect(wrongSum.status).toBe(400);
      expect(((await wrongSum.json()) as { error: { message: string } }).error.message).toContain(`has the sha256 ${sha256(archive)}`);
      expect((await put(nodes.builder!.credential, partHash, { ...good, platform: 'Debian 12' }, archive)).status).toBe(400);
      const plain = Buffer.from('not gzipped');
      expect((await put(nodes.builder!.credential, partHash, { ...good, sha256: sha256(plain) }, plain)).status).toBe(422);
      // Gzipped, but not a tar inside: no node could unpack it.
      const notTar = gzipSync(Buffer.from('not a tar archive'));
      const damaged = await put(nodes.builder!.credential, partHash, { ...good, sha256: sha256(notTar) }, notTar);
      expect(damaged.status).toBe(422);
      expect(((await damaged.json()) as { error: { code: string } }).error.code).toBe('ARCHIVE_INVALID');
      expect((await put(nodes.builder!.credential, partHash, { ...good, prefix: 'relative/path' }, archive)).status).toBe(400);
      expect((await put(nodes.builder!.credential, 'not-a-hash', good, archive)).status).toBe(400);
      expect((await put(nodes.builder!.credential, partHash, { ...good, extra: 'x' }, archive)).status).toBe(400);
      expect(await announceTooLarge(nodes.builder!.credential, partHash, good)).toBe(413);
      expect(await count()).toBe(before);
    });

    it('refuses them with 403 from a node the operator did not allow, whatever they hold, storing nothing', async () => {
      const before = await count();
      const query = { platform: 'debian-12/x64', prefix: '', sha256: sha256(archive) };
      for (const name of ['taker', 'unvouched']) {
        expect(await uploadAllowed(name)).toBe(false);
        const refused = await put(nodes[name]!.credential, 'c'.repeat(64), query, archive);
        expect(refused.status).toBe(403);
        const { error } = (await refused.json()) as { error: { message: string; hint?: string } };
        expect(error.message).toBe(`node ${name} may not file parts in the binary cache: nothing was filed`);
        expect(error.hint).toContain(`pledger node set ${name} --binary-cache-upload on`);
      }
      expect(await count()).toBe(before);
      expect(await storage.query('select part_hash from binary_cache where part_hash = ?', ['c'.repeat(64)])).toEqual([]);
    });

    it('keeps the first archive filed under a key, and signs it', async () => {
      expect((await setUpload('taker', 'on')).exitCode).toBe(0);
      const query = { platform: 'debian-12/x64', prefix: '/srv/pledger', sha256: sha256(archive) };
      const first = await put(nodes.builder!.credential, partHash, query, archive);
      expect(first.status).toBe(201);
      const firstEntry = ((await first.json()) as { entry: { sha256: string; signature: string } }).entry;
      expect(firstEntry.sha256).toBe(sha256(archive));
      const other = tarWithName('file', 'another archive');
      const second = await put(nodes.taker!.credential, partHash, { ...query, sha256: sha256(other) }, other);
      expect(second.status).toBe(200);
      expect(await second.json()).toMatchObject({ stored: false, entry: { sha256: sha256(archive), signature: firstEntry.signature } });
      const served = await fetch(`${master.url}/api/v1/node/binaries/${partHash}/archive?${new URLSearchParams({ platform: query.platform, prefix: query.prefix }).toString()}`, {
        headers: { authorization: `Bearer ${nodes.taker!.credential}` },
      });
      expect(Buffer.from(await served.arrayBuffer())).toEqual(archive);
      // Another root, and no relocatable entry: nothing for it.
      const elsewhere = await fetch(`${master.url}/api/v1/node/binaries/${partHash}?${new URLSearchParams({ platform: query.platform, prefix: '/opt/other' }).toString()}`, {
        headers: { authorization: `Bearer ${nodes.taker!.credential}` },
      });
      expect(elsewhere.status).toBe(404);
    });
  });
});
