/**
 * Parts as the node agent builds them, against a real master in this process: source
 * archives fetched over http and file URLs and built with make, parts that come after
 * parts, shared parts built once per node, and every way a build can fail: each
 * reported to the master with the end of its log while the other releases go on, and
 * tried again only after a backoff.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readlinkSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { create } from 'tar';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NodeView } from '../protocol/api.js';
import { MasterClient } from '../protocol/client.js';
import { backoffDelay, readAttempts } from '../slave/build-retry.js';
import { resolveNodeConfig, type NodeConfig } from '../slave/config.js';
import { silentLogger } from '../slave/log.js';
import { pruneNode } from '../slave/parts/prune.js';
import { installSoftware } from '../slave/software.js';
import { startInProcessMaster, type InProcessMaster } from './helpers/master-in-process.js';
import { portBase } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** A source tree in the usual shape: one top folder, a Makefile with an install target. */
async function sourceArchive(): Promise<Buffer> {
  const dir = writeTree({
    'greet-1.0/greet.c': '#include <stdio.h>\nint main(void) { puts("greetings from a source archive"); return 0; }\n',
    'greet-1.0/Makefile': 'greet: greet.c\n\tcc -O2 -o greet greet.c\ninstall: greet\n\tmkdir -p $(PREFIX)/bin\n\tcp greet $(PREFIX)/bin/greet\n',
  });
  const chunks: Buffer[] = [];
  for await (const chunk of create({ gzip: true, cwd: dir, portable: true }, ['greet-1.0'])) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** A tar archive with one entry named as given, written by hand: no tar tool writes `../` names. */
function rawTar(name: string, content: string): Buffer {
  const header = Buffer.alloc(512);
  header.write(name, 0, 100);
  header.write('0000644\0', 100);
  header.write('0000000\0', 108);
  header.write('0000000\0', 116);
  header.write(`${Buffer.byteLength(content).toString(8).padStart(11, '0')}\0`, 124);
  header.write('00000000000\0', 136);
  header.write('        ', 148);
  header.write('0', 156);
  header.write('ustar\0', 257);
  header.write('00', 263);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  const body = Buffer.alloc(Math.ceil(Buffer.byteLength(content) / 512) * 512);
  body.write(content);
  return Buffer.concat([header, body, Buffer.alloc(1024)]);
}

const release = (name: string, parts: string, extra: Record<string, string> = {}) =>
  writeTree({
    'software.yaml': `name: ${name}\nversion: 1.0.0\nparts:\n${parts}\nsoftware-types:\n  default: {}\n`,
    ...extra,
  });

describe('parts of software releases, built by the node agent', () => {
  let master: InProcessMaster;
  let config: NodeConfig;
  let files: string;
  let http: Server;
  let httpBase: string;
  let archive: Buffer;
  let node: string;
  let upstreamServes = true;

  const supply = async (dir: string) => {
    const published = await master.publish(dir);
    await master.operator.call('POST', '/api/v1/supplies', { software: `${published.name}@${published.version}`, node, state: 'available' });
    return published;
  };
  const reported = async (name: string) =>
    (await master.operator.call<NodeView[]>('GET', '/api/v1/nodes')).find((n) => n.name === node)!.software.find((s) => s.name === name)!;
  const install = () => installSoftware(config, silentLogger);
  const resultOf = (run: Awaited<ReturnType<typeof install>>, name: string) => run.results.find((r) => r.item === `${name}@1.0.0`)!;
  const partOf = (hash: string, name: string) => readlinkSync(path.join(config.root, 'software', hash, 'parts', name));

  beforeAll(async () => {
    master = await startInProcessMaster();
    node = 'parts-node';
    const credential = await master.registerNode(node);
    config = resolveNodeConfig({ masterUrl: master.url, credential, root: mkdtempSync(path.join(tmpdir(), 'pledger-parts-')), partitions: 1, ipBase: '127.45.0.1', portBase: portBase() });
    archive = await sourceArchive();
    files = mkdtempSync(path.join(tmpdir(), 'pledger-sources-'));
    writeFileSync(path.join(files, 'greet-1.0.tar.gz'), archive);
    writeFileSync(path.join(files, 'evil.tar'), rawTar('../evil.txt', 'out of the part'));
    writeFileSync(path.join(files, 'absolute.tar'), rawTar('/tmp/pledger-absolute-evil.txt', 'out of the part'));
    // Two links that each read as inside; followed, `s` is the parent of the part.
    const chain = writeTree({ 'p/file.txt': 'x' });
    symlinkSync('..', path.join(chain, 'p', 'q'));
    symlinkSync('p/q/..', path.join(chain, 's'));
    await create({ file: path.join(files, 'chain.tar'), cwd: chain, portable: true }, ['p', 's']);
    http = createServer((request, response) => {
      if (request.url === '/greet-1.0.tar.gz') return response.end(archive);
      if (request.url === '/slow') return setTimeout(() => response.end('late'), 5000);
      if (request.url === '/vanishing-1.0.tar.gz' && upstreamServes) return response.end(archive);
      response.statusCode = 404;
      response.end();
    });
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    httpBase = `http://127.0.0.1:${(http.address() as { port: number }).port}`;
  });

  afterAll(async () => {
    http?.closeAllConnections();
    http?.close();
    await master?.close();
  });

  it('builds a source archive fetched over http with make, and a part after it that uses its path', async () => {
    const dir = release(
      'from-source',
      [
        '  greet:',
        `    source: { url: "${httpBase}/greet-1.0.tar.gz", sha256: ${sha256(archive)}, strip: 1 }`,
        '    build:',
        '      - [make, "PREFIX={{ part.path }}", install]',
        '  wrapper:',
        '    after: [greet]',
        '    build:',
        '      - [/bin/sh, -c, "printf \'#!/bin/sh\\\\nexec %s\\\\n\' \\"$0\\" > run.sh && chmod 755 run.sh", "{{ parts.greet.path }}/bin/greet"]',
      ].join('\n'),
    );
    const published = await supply(dir);
    const run = await install();
    expect(resultOf(run, 'from-source'), JSON.stringify(run)).toMatchObject({ status: 'done' });
    const greet = path.join(config.root, 'software', published.hash, 'parts', 'greet', 'bin', 'greet');
    expect((await execa(greet)).stdout).toBe('greetings from a source archive');
    const wrapper = path.join(config.root, 'software', published.hash, 'parts', 'wrapper', 'run.sh');
    expect((await execa(wrapper)).stdout).toBe('greetings from a source archive');
    expect(readFileSync(wrapper, 'utf8')).toContain(path.join(config.root, 'parts', path.basename(partOf(published.hash, 'greet'))));
    expect((await reported('from-source')).status).toBe('built');
  });

  it('builds a shared part once per node: a second release naming the same definition reuses it', async () => {
    const shared = (name: string, extra = '') =>
      release(name, [`  greet:`, `    source: { url: "${pathToFileURL(path.join(files, 'greet-1.0.tar.gz')).href}", sha256: ${sha256(archive)}, strip: 1 }`, '    shared: true', '    build: [[make, "PREFIX={{ part.path }}", install]]', extra].join('\n'), { 'README.md': name });
    const first = await supply(shared('shared-one'));
    const second = await supply(shared('shared-two'));
    const run = await install();
    expect(resultOf(run, 'shared-one')).toMatchObject({ status: 'done' });
    expect(resultOf(run, 'shared-two')).toMatchObject({ status: 'done' });
    expect(partOf(first.hash, 'greet')).toBe(partOf(second.hash, 'greet'));
    // A part that is not shared belongs to its release, even with the same definition.
    expect(partOf(first.hash, 'greet')).not.toBe(partOf(readdirSync(path.join(config.root, 'software')).find((h) => existsSync(path.join(config.root, 'software', h, 'parts', 'wrapper')))!, 'greet'));
  });

  it("gives a part a directory of its own when a part it comes after changes, though its own definition does not", async () => {
    // Both parts shared, so that nothing but `after` can tell the two `top` parts apart.
    const layered = (name: string, value: string) =>
      release(
        name,
        [
          '  base:',
          '    shared: true',
          `    build: [[/bin/sh, -c, "echo ${value} > value"]]`,
          '  top:',
          '    shared: true',
          '    after: [base]',
          '    build: [[/bin/cp, "{{ parts.base.path }}/value", copied]]',
        ].join('\n'),
        { 'README.md': name },
      );
    const one = await supply(layered('layered-one', 'one'));
    const two = await supply(layered('layered-two', 'two'));
    const again = await supply(layered('layered-again', 'one'));
    const run = await install();
    for (const name of ['layered-one', 'layered-two', 'layered-again']) expect(resultOf(run, name), JSON.stringify(run)).toMatchObject({ status: 'done' });
    expect(partOf(one.hash, 'base')).not.toBe(partOf(two.hash, 'base'));
    expect(partOf(one.hash, 'top')).not.toBe(partOf(two.hash, 'top'));
    expect(readFileSync(path.join(partOf(one.hash, 'top'), 'copied'), 'utf8')).toBe('one\n');
    expect(readFileSync(path.join(partOf(two.hash, 'top'), 'copied'), 'utf8')).toBe('two\n');
    // The same dependency again: the same directory, reused.
    expect(partOf(again.hash, 'base')).toBe(partOf(one.hash, 'base'));
    expect(partOf(again.hash, 'top')).toBe(partOf(one.hash, 'top'));
  });

  it('reports a checksum mismatch, a failing step, a timeout and archives leading out of the part (.. or absolute, or through a chain of links), each with its cause, and builds the others', async () => {
    const wrongSum = '0'.repeat(64);
    const cases = {
      'bad-checksum': [`  src:`, `    source: { url: "${httpBase}/greet-1.0.tar.gz", sha256: "${wrongSum}" }`],
      'bad-step': ['  app:', '    build: [[/bin/sh, -c, "echo compiling; head -c 100000 /dev/zero | tr \'\\\\0\' x; echo; echo cc: error: no such file >&2; exit 3"]]'],
      'bad-timeout': ['  app:', '    timeout: 1', '    build: [[/bin/sleep, "30"]]'],
      'bad-archive': ['  src:', `    source: { url: "${pathToFileURL(path.join(files, 'evil.tar')).href}", sha256: ${sha256(readFileSync(path.join(files, 'evil.tar')))} }`],
      'bad-absolute': ['  src:', `    source: { url: "${pathToFileURL(path.join(files, 'absolute.tar')).href}", sha256: "${sha256(readFileSync(path.join(files, 'absolute.tar')))}" }`],
      'bad-chain': ['  src:', `    source: { url: "${pathToFileURL(path.join(files, 'chain.tar')).href}", sha256: "${sha256(readFileSync(path.join(files, 'chain.tar')))}" }`],
      'good-one': ['  app:', '    build: [[/bin/true]]'],
    };
    for (const [name, lines] of Object.entries(cases)) await supply(release(name, lines.join('\n')));
    const run = await install();
    expect(resultOf(run, 'good-one')).toMatchObject({ status: 'done' });
    expect(resultOf(run, 'bad-checksum').message).toContain(`checksum mismatch for ${httpBase}/greet-1.0.tar.gz: expected sha256 ${wrongSum}, got ${sha256(archive)}`);
    expect(resultOf(run, 'bad-step').message).toMatch(/part app: \/bin\/sh exited with code 3[\s\S]*--- last lines of build\.log ---[\s\S]*cc: error: no such file/);
    // A line of 100 000 characters in the log is cut: the report stays deliverable.
    expect(resultOf(run, 'bad-step').message!.length).toBeLessThan(16384);
    expect(resultOf(run, 'bad-step').message).toMatch(/x{400}…\n/);
    expect(resultOf(run, 'bad-timeout').message).toMatch(/part app: \/bin\/sleep timed out after 1 s/);
    expect(resultOf(run, 'bad-archive').message).toMatch(/refused archive source: \.\.\/evil\.txt leads out of the part/);
    expect(existsSync(path.join(config.root, 'evil.txt')) || existsSync(path.join(config.root, 'parts', 'evil.txt'))).toBe(false);
    expect(resultOf(run, 'bad-absolute').message).toMatch(/refused archive source: \/tmp\/pledger-absolute-evil\.txt leads out of the part/);
    expect(existsSync('/tmp/pledger-absolute-evil.txt')).toBe(false);
    expect(resultOf(run, 'bad-chain').message).toMatch(/refused archive source: s links to p\/q\/\.\., which leads out of the part once the links on its way are followed/);

    for (const name of ['bad-checksum', 'bad-step', 'bad-timeout', 'bad-archive', 'bad-absolute', 'bad-chain']) {
      const seen = await reported(name);
      expect(seen.status).toBe('error');
      expect(seen.message).toBe(resultOf(run, name).message);
    }
    expect((await reported('good-one')).status).toBe('built');
    // Nothing half-built is left behind to be taken for a build.
    expect(readdirSync(path.join(config.root, 'parts')).filter((n) => n.startsWith('.build-'))).toEqual([]);
    expect(readdirSync(path.join(config.root, 'software')).filter((n) => n.startsWith('.build-'))).toEqual([]);
  }, 60_000);

  it('tries a failed build again only after a backoff, without downloading anything meanwhile', async () => {
    const attempts = await readAttempts(config.root);
    const failed = Object.values(attempts);
    expect(failed).toHaveLength(6);
    for (const a of failed) {
      expect(a.failures).toBe(1);
      expect(Date.parse(a.nextAttemptAt) - Date.now()).toBeGreaterThan(backoffDelay(1) - 30_000);
    }
    const before = master.answered.filter((r) => r.startsWith('GET /api/v1/node/software/:hash')).length;
    const run = await install();
    expect(resultOf(run, 'bad-step')).toMatchObject({ status: 'failed', message: expect.stringMatching(/^failed 1 time\(s\), next attempt after \S+: part app: \/bin\/sh exited with code 3/) });
    expect(master.answered.filter((r) => r.startsWith('GET /api/v1/node/software/:hash')).length).toBe(before);
    expect(backoffDelay(2)).toBe(2 * backoffDelay(1));
    expect(backoffDelay(50)).toBe(6 * 3600_000);
  });

  it('refuses to start a build on a nearly full disk, saying how much is free and needed', async () => {
    await supply(release('needs-disk', '  app:\n    build: [[/bin/true]]'));
    process.env.PLEDGER_BUILD_MIN_FREE_MB = String(1024 ** 3);
    try {
      const run = await install();
      expect(resultOf(run, 'needs-disk').message).toMatch(/^not enough free disk space on \S+: \d+ MiB free, a build needs at least 1073741824 MiB/);
      expect((await reported('needs-disk')).status).toBe('error');
    } finally {
      delete process.env.PLEDGER_BUILD_MIN_FREE_MB;
    }
  });

  it('removes a destroyed release and its own parts at once, and shared parts no kept release uses at prune', async () => {
    const softwareDir = path.join(config.root, 'software');
    const one = (await master.operator.call<{ hash: string }>('GET', '/api/v1/software/shared-one@1.0.0')).hash;
    const two = (await master.operator.call<{ hash: string }>('GET', '/api/v1/software/shared-two@1.0.0')).hash;
    const sharedPart = partOf(one, 'greet');
    const destroy = (name: string) => master.operator.call('POST', '/api/v1/supplies', { software: `${name}@1.0.0`, node, state: 'destroyed' });
    await destroy('shared-one');
    await install();
    expect(existsSync(path.join(softwareDir, one))).toBe(false);
    expect(existsSync(sharedPart)).toBe(true); // shared-two still links it

    await destroy('shared-two');
    await install();
    expect(existsSync(path.join(softwareDir, two))).toBe(false);
    // Shared parts outlive their last release until pruned: another release may come back to them.
    expect(existsSync(sharedPart)).toBe(true);

    const dry = await pruneNode(config, silentLogger, { dryRun: true });
    expect(dry.removed).toEqual([expect.objectContaining({ path: sharedPart, kind: 'part' })]);
    expect(dry.removed[0]!.bytes).toBeGreaterThan(0);
    expect(existsSync(sharedPart)).toBe(true);

    const pruned = await pruneNode(config, silentLogger);
    expect(pruned.removed.map((r) => r.path)).toEqual([sharedPart]);
    expect(existsSync(sharedPart)).toBe(false);
    // What the supplied releases link to is kept.
    const fromSource = (await master.operator.call<{ hash: string }>('GET', '/api/v1/software/from-source@1.0.0')).hash;
    expect(existsSync(partOf(fromSource, 'greet'))).toBe(true);
    expect(pruned.kept.parts).toBeGreaterThanOrEqual(2);
    expect((await pruneNode(config, silentLogger)).removed).toEqual([]);
  });

  it('installs npm packages from a lock, checking each against its integrity, and refuses a tarball that does not match', async () => {
    const lock = (integrity: string) =>
      JSON.stringify({
        name: 'tools',
        version: '1.0.0',
        lockfileVersion: 3,
        requires: true,
        packages: {
          '': { name: 'tools', version: '1.0.0', dependencies: { ms: '2.1.3' } },
          'node_modules/ms': { version: '2.1.3', resolved: 'https://registry.npmjs.org/ms/-/ms-2.1.3.tgz', integrity },
        },
      });
    const packageJson = JSON.stringify({ name: 'tools', version: '1.0.0', private: true, dependencies: { ms: '2.1.3' } });
    const good = 'sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==';
    const forged = `sha512-${Buffer.alloc(64, 7).toString('base64')}`;
    const npmRelease = (name: string, integrity: string) =>
      release(name, ['  tools:', '    npm: deps', '    build: [[node, -e, "process.stdout.write(require(\'ms\')(60000))"]]'].join('\n'), {
        'deps/package.json': packageJson,
        'deps/package-lock.json': lock(integrity),
      });
    const published = await supply(npmRelease('npm-good', good));
    await supply(npmRelease('npm-forged', forged));
    const run = await install();
    expect(resultOf(run, 'npm-good'), resultOf(run, 'npm-good').message).toMatchObject({ status: 'done' });
    const installed = path.join(config.root, 'software', published.hash, 'parts', 'tools', 'node_modules', 'ms', 'package.json');
    expect(JSON.parse(readFileSync(installed, 'utf8'))).toMatchObject({ name: 'ms', version: '2.1.3' });
    expect(readFileSync(path.join(config.root, 'software', published.hash, 'build.log'), 'utf8')).toMatch(/^1m$/m);
    expect(resultOf(run, 'npm-forged')).toMatchObject({ status: 'failed', message: expect.stringMatching(/part tools: npm exited with code 1[\s\S]*EINTEGRITY/) });

    // A lock that does not pin an integrity is refused before any node sees it.
    const unpinned = release('npm-unpinned', '  tools:\n    npm: deps', { 'deps/package.json': packageJson, 'deps/package-lock.json': lock('').replace('"integrity":"",', '') });
    await expect(master.publish(unpinned)).rejects.toThrow(/parts\.tools\.npm: deps\/package-lock\.json: node_modules\/ms has no https source with an integrity/);
  }, 120_000);

  it("files every source it downloads in the master's cache, and builds from there once upstream has vanished", async () => {
    const vanishing = `${httpBase}/vanishing-1.0.tar.gz`;
    const dir = release('vanishing', [`  greet:`, `    source: { url: "${vanishing}", sha256: "${sha256(archive)}", strip: 1 }`, '    build: [[make, "PREFIX={{ part.path }}", install]]'].join('\n'));
    await supply(dir);
    expect(resultOf(await install(), 'vanishing')).toMatchObject({ status: 'done' });
    expect(master.answered).toContain('PUT /api/v1/node/sources/:hash 201');

    // Upstream is gone; a second node, which never saw the file, builds the release.
    upstreamServes = false;
    expect((await fetch(vanishing)).status).toBe(404);
    const second = 'parts-node-2';
    const credential = await master.registerNode(second);
    const other = resolveNodeConfig({ masterUrl: master.url, credential, root: mkdtempSync(path.join(tmpdir(), 'pledger-parts-')), partitions: 1, ipBase: '127.45.1.1', portBase: portBase() });
    const published = await master.publish(dir);
    await master.operator.call('POST', '/api/v1/supplies', { software: 'vanishing@1.0.0', node: second, state: 'available' });
    const run = await installSoftware(other, silentLogger);
    expect(run.results, JSON.stringify(run.results)).toEqual([{ item: 'vanishing@1.0.0', status: 'done' }]);
    const built = path.join(other.root, 'software', published.hash);
    expect((await execa(path.join(built, 'parts', 'greet', 'bin', 'greet'))).stdout).toBe('greetings from a source archive');
    expect(readFileSync(path.join(built, 'build.log'), 'utf8')).toContain(`# ${vanishing}: ${vanishing} answered 404 Not Found; fetched from the master's source cache instead`);
  });

  it('refuses with 403 a source that no release supplied to the uploading node names, storing nothing', async () => {
    const nodeClient = new MasterClient({ url: master.url, token: await master.registerNode('parts-node-4') });
    const upload = (content: Buffer) =>
      nodeClient.raw('PUT', `/api/v1/node/sources/${sha256(content)}`, { body: content, headers: { 'content-type': 'application/octet-stream' } });
    const stray = Buffer.from('bytes no release asked for');
    await expect(upload(stray)).rejects.toThrow(
      `no software release supplied to node parts-node-4 names a source with sha256 ${sha256(stray)}: nothing was filed`,
    );
    await expect(upload(stray)).rejects.toMatchObject({ status: 403 });
    await expect(nodeClient.raw('GET', `/api/v1/node/sources/${sha256(stray)}`)).rejects.toThrow(`no source archive with sha256 ${sha256(stray)} in the cache`);

    // Named by a release, but one supplied to another node, or no longer supplied to this one.
    const other = Buffer.from('a source of a release supplied elsewhere');
    const dir = release('elsewhere', ['  piece:', `    source: { url: "${httpBase}/elsewhere.tar.gz", sha256: "${sha256(other)}" }`].join('\n'));
    await master.publish(dir);
    await master.registerNode('parts-node-5');
    await master.operator.call('POST', '/api/v1/supplies', { software: 'elsewhere@1.0.0', node: 'parts-node-5', state: 'available' });
    await expect(upload(other)).rejects.toMatchObject({ status: 403 });
    await master.operator.call('POST', '/api/v1/supplies', { software: 'elsewhere@1.0.0', node: 'parts-node-4', state: 'available' });
    await master.operator.call('POST', '/api/v1/supplies', { software: 'elsewhere@1.0.0', node: 'parts-node-4', state: 'destroyed' });
    await expect(upload(other)).rejects.toMatchObject({ status: 403 });
    await expect(nodeClient.raw('GET', `/api/v1/node/sources/${sha256(other)}`)).rejects.toThrow(/no source archive/);

    // Once supplied, the same upload is filed.
    await master.operator.call('POST', '/api/v1/supplies', { software: 'elsewhere@1.0.0', node: 'parts-node-4', state: 'available' });
    expect((await upload(other)).status).toBe(201);
    expect((await nodeClient.raw('GET', `/api/v1/node/sources/${sha256(other)}`)).body.equals(other)).toBe(true);
  });

  it('keeps only what matches its sha256 in the source cache, and names what it lacks', async () => {
    const nodeClient = new MasterClient({ url: master.url, token: await master.registerNode('parts-node-3') });
    await master.operator.call('POST', '/api/v1/supplies', { software: 'vanishing@1.0.0', node: 'parts-node-3', state: 'available' });
    const fake = Buffer.from('not the archive');
    await expect(
      nodeClient.raw('PUT', `/api/v1/node/sources/${sha256(archive)}`, { body: fake, headers: { 'content-type': 'application/octet-stream' } }),
    ).rejects.toThrow(`refused: the content has the sha256 ${sha256(fake)}, not ${sha256(archive)}`);
    expect((await nodeClient.raw('GET', `/api/v1/node/sources/${sha256(archive)}`)).body.equals(archive)).toBe(true);
    await expect(nodeClient.raw('GET', `/api/v1/node/sources/${'1'.repeat(64)}`)).rejects.toThrow(`no source archive with sha256 ${'1'.repeat(64)} in the cache`);
    // A user token is not a node credential.
    await expect(master.operator.raw('GET', `/api/v1/node/sources/${sha256(archive)}`)).rejects.toThrow(/node credential/);
  });
});
