/**
 * Promises of every kind, checked for real: built-in ones inside the agent, and
 * command promises with Debian's monitoring-plugins (check_tcp, check_http,
 * check_dummy) following their exit-code convention.
 */
import { existsSync, mkdtempSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSoftware } from '../protocol/software-release.js';
import { readProcessStat } from '../slave/processes.js';
import { checkPromise, checkPromiseOnce, checkPromises } from '../slave/promises.js';
import { writeTree } from './helpers/tree.js';

const PLUGINS = '/usr/lib/nagios/plugins';
const havePlugins = existsSync(`${PLUGINS}/check_tcp`);

let scratch: string;
let server: http.Server;
let port: number;
let closedPort: number;

beforeAll(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), 'pledger-promises-'));
  server = http.createServer((request, response) => response.end(request.url === '/health' ? 'all good' : 'hello'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as net.AddressInfo).port;
  // A port that was just free: nothing listens there.
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  closedPort = (probe.address() as net.AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  await rm(scratch, { recursive: true, force: true });
});

describe('built-in promises', () => {
  it('file: holds while the file exists and is younger than max-age', async () => {
    writeFileSync(path.join(scratch, 'heartbeat'), 'x');
    const context = { partitionDir: scratch };
    expect(await checkPromiseOnce('beat', { file: 'heartbeat', 'max-age': 60 }, context)).toMatchObject({ ok: true, status: 'ok' });
    const old = new Date(Date.now() - 120_000);
    utimesSync(path.join(scratch, 'heartbeat'), old, old);
    expect(await checkPromiseOnce('beat', { file: 'heartbeat', 'max-age': 60 }, context)).toEqual({
      name: 'beat',
      ok: false,
      status: 'critical',
      message: expect.stringMatching(/^promise beat: heartbeat was modified 1[12]\d s ago, more than 60 s$/),
    });
    expect(await checkPromiseOnce('beat', { file: 'heartbeat' }, context)).toMatchObject({ ok: true });
    expect(await checkPromiseOnce('gone', { file: 'missing' }, context)).toMatchObject({ ok: false, status: 'critical', message: 'promise gone: missing does not exist' });
  });

  it('process: asks whether the named service runs, and is unknown when nobody can tell', async () => {
    const running = new Set(['web']);
    const context = { serviceRunning: (name: string) => running.has(name) };
    expect(await checkPromiseOnce('up', { process: 'web' }, context)).toMatchObject({ ok: true, message: 'service web is running' });
    expect(await checkPromiseOnce('up', { process: 'db' }, context)).toMatchObject({ ok: false, status: 'critical', message: 'promise up: service db has no running process' });
    expect(await checkPromiseOnce('up', { process: 'web' })).toMatchObject({ ok: false, status: 'unknown' });
  });

  it('checks 1,000 built-in promises at once', async () => {
    const promises = Object.fromEntries(
      Array.from({ length: 1000 }, (_, i) => [`p${i}`, i % 2 ? { tcp: `127.0.0.1:${port}` } : { http: `http://127.0.0.1:${port}/health`, contains: 'good' }]),
    );
    const results = await checkPromises(promises);
    expect(results.filter((r) => r.ok)).toHaveLength(1000);
  });
});

describe.skipIf(!havePlugins)('command promises with Debian monitoring-plugins', () => {
  it('check_tcp: OK with its first output line as the message, CRITICAL on a closed port', async () => {
    const ok = await checkPromiseOnce('tcp', { command: [`${PLUGINS}/check_tcp`, '-H', '127.0.0.1', '-p', String(port)] });
    expect(ok).toMatchObject({ ok: true, status: 'ok', message: expect.stringMatching(/^TCP OK - [\d.]+ second response time on 127\.0\.0\.1 port \d+/) });
    const closed = await checkPromiseOnce('tcp', { command: [`${PLUGINS}/check_tcp`, '-H', '127.0.0.1', '-p', String(closedPort)] });
    expect(closed).toMatchObject({ ok: false, status: 'critical', message: expect.stringMatching(/^promise tcp: .*Connection refused/) });
  });

  it('check_http: OK on the expected body, CRITICAL when the body lacks the text', async () => {
    const base = [`${PLUGINS}/check_http`, '-H', '127.0.0.1', '-p', String(port), '-u', '/health'];
    expect(await checkPromiseOnce('web', { command: [...base, '-s', 'all good'] })).toMatchObject({ ok: true, status: 'ok', message: expect.stringMatching(/^HTTP OK/) });
    expect(await checkPromiseOnce('web', { command: [...base, '-s', 'nope'] })).toMatchObject({ ok: false, status: 'critical', message: expect.stringMatching(/^promise web: HTTP CRITICAL/) });
  });

  it('maps exit codes 1 and 3 to WARNING (which holds) and UNKNOWN', async () => {
    expect(await checkPromiseOnce('w', { command: [`${PLUGINS}/check_dummy`, '1', 'disk filling up'] })).toEqual({ name: 'w', ok: true, status: 'warning', message: 'WARNING: disk filling up' });
    expect(await checkPromiseOnce('u', { command: [`${PLUGINS}/check_dummy`, '3', 'no idea'] })).toEqual({ name: 'u', ok: false, status: 'unknown', message: 'promise u: UNKNOWN: no idea' });
  });
});

describe('command promises', () => {
  it('run without a shell: an argument that looks like shell code is a plain argument', async () => {
    const marker = path.join(scratch, 'injected');
    const result = await checkPromiseOnce('echo', { command: ['/bin/echo', `$(touch ${marker})`, ';', 'touch', marker] }, { partitionDir: scratch });
    expect(result).toMatchObject({ ok: true, message: `$(touch ${marker}) ; touch ${marker}` });
    expect(existsSync(marker)).toBe(false);
  });

  it('run in the partition with the clean environment of services', async () => {
    const result = await checkPromiseOnce('env', { command: ['/bin/sh', '-c', 'echo "$PWD $HOME $PATH $SECRET_FROM_AGENT"'] }, { partitionDir: scratch });
    expect(result.message).toBe(`${scratch} ${scratch} /usr/local/bin:/usr/bin:/bin`);
  });

  it('are UNKNOWN and killed with their children at the timeout', async () => {
    const pidFile = path.join(scratch, 'child.pid');
    const result = await checkPromiseOnce('slow', { command: ['/bin/sh', '-c', `sleep 30 & echo $! > ${pidFile}; wait`], timeout: 0.3 }, { partitionDir: scratch });
    expect(result).toMatchObject({ ok: false, status: 'unknown', message: 'promise slow: /bin/sh timed out after 0.3 s' });
    const child = Number(readFileSync(pidFile, 'utf8'));
    // Gone, or a zombie waiting for init to reap it: either way it no longer runs. The kill
    // was sent before the answer; its delivery is awaited, however loaded the machine.
    while (![undefined, 'Z'].includes((await readProcessStat(child))?.state)) await new Promise((resolve) => setTimeout(resolve, 20));
    expect([undefined, 'Z']).toContain((await readProcessStat(child))?.state);
  });

  it('are UNKNOWN when the program cannot run, or exits with a code outside the convention', async () => {
    expect(await checkPromiseOnce('none', { command: ['/nonexistent/check'] })).toMatchObject({ ok: false, status: 'unknown', message: 'promise none: cannot run /nonexistent/check: ENOENT' });
    expect(await checkPromiseOnce('odd', { command: ['/bin/sh', '-c', 'echo weird; exit 7'] })).toMatchObject({ status: 'unknown', message: 'promise odd: weird (exit code 7)' });
  });

  it('are retried after a deployment until they hold or time out', async () => {
    const flag = path.join(scratch, 'ready-later');
    setTimeout(() => writeFileSync(flag, ''), 300);
    expect(await checkPromise('later', { command: ['/usr/bin/test', '-e', flag], timeout: 3 })).toMatchObject({ ok: true });
  });
});

describe('the promise format', () => {
  it('accepts every kind with interval and bang-after, and refuses unknown keys', async () => {
    const yaml = (promises: string) => `name: p\nversion: 1.0.0\nsoftware-types:\n  default:\n    services:\n      web: [/bin/true]\n    promises:\n${promises}`;
    const good = writeTree({
      'software.yaml': yaml(
        [
          '      a: { tcp: "{{ partition.ip }}:1", interval: 30 }',
          '      b: { http: "http://x/", bang-after: 3 }',
          '      c: { file: var/beat, max-age: 60 }',
          '      d: { process: web }',
          '      e: { command: [/usr/lib/nagios/plugins/check_tcp, -H, "{{ partition.ip }}", -p, "80"], timeout: 5, interval: 300 }',
          '',
        ].join('\n'),
      ),
    });
    const loaded = await loadSoftware(good);
    expect(Object.keys(loaded.definition['software-types'].default!.promises!)).toEqual(['a', 'b', 'c', 'd', 'e']);
    const bad = writeTree({ 'software.yaml': yaml('      a: { file: x, maxAge: 60 }\n') });
    await expect(loadSoftware(bad)).rejects.toThrow(/promises/);
    const badTemplate = writeTree({ 'software.yaml': yaml('      a: { command: [/bin/echo, "{{ oops"] }\n') });
    await expect(loadSoftware(badTemplate)).rejects.toThrow(/template syntax/);
  });
});
