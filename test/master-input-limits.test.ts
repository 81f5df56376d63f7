/**
 * What no database can hold never reaches one, and no single request can hurt the
 * master: on every engine of testEngines(). A user's NUL, lone surrogate or
 * bidirectional override is a 400 that changes nothing; a node's is kept, escaped; deep
 * nesting, amounts out of range, damaged or escaping archives, bad URL encoding and
 * over-long paths are refused in Pledger's error shape, and the master goes on serving.
 */
import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp, type App } from '../master/app.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { migrate } from '../master/db/migrate.js';
import { initMaster } from '../master/server.js';
import type { DesiredState, NodeEvent } from '../protocol/api.js';
import { packSoftware } from '../protocol/software-archive.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

/** A gzipped tar of one entry whose header says what it is told, as no tar tool would write it. */
function tarEntry(name: string, content: string, type = '0', pax?: Record<string, string>, linkpath = ''): Buffer {
  const header = (entryName: string, size: number, entryType: string) => {
    const block = Buffer.alloc(512);
    const field = (offset: number, text: string) => block.write(text, offset, 'latin1');
    field(0, entryName);
    field(100, '0000644\0');
    field(108, '0000000\0');
    field(116, '0000000\0');
    field(124, `${size.toString(8).padStart(11, '0')}\0`);
    field(136, '00000000000\0');
    field(148, '        ');
    field(156, entryType);
    field(157, entryType === 'x' ? '' : linkpath);
    field(257, 'ustar\0');
    field(263, '00');
    field(148, `${block.reduce((sum, byte) => sum + byte, 0).toString(8).padStart(6, '0')}\0 `);
    return block;
  };
  const padded = (text: string) => {
    const body = Buffer.alloc(Math.ceil(Buffer.byteLength(text) / 512) * 512);
    body.write(text);
    return body;
  };
  const blocks: Buffer[] = [];
  if (pax) {
    // Each record is "LENGTH key=value\n", LENGTH counting its own digits.
    const records = Object.entries(pax)
      .map(([key, value]) => {
        const line = ` ${key}=${value}\n`;
        let length = line.length + 1;
        while (String(length).length + line.length !== length) length = String(length).length + line.length;
        return `${length}${line}`;
      })
      .join('');
    blocks.push(header('PaxHeader/entry', Buffer.byteLength(records), 'x'), padded(records));
  }
  blocks.push(header(name, Buffer.byteLength(content), type), padded(content), Buffer.alloc(1024));
  return gzipSync(Buffer.concat(blocks));
}

describe.each(testEngines())('input the master cannot store or must not trust, on %s', (engine) => {
  let testDb: TestDatabase;
  let database: Database;
  let app: App;
  let admin: string;
  let alice: string;
  let node: string;

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  type Body = Record<string, any>;
  const call = async (token: string | null, method: 'GET' | 'POST' | 'PUT' | 'PATCH', url: string, payload?: unknown, headers: Record<string, string> = {}) => {
    const response = await app.inject({
      method,
      url,
      payload: payload as string | object | Buffer | undefined,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
    });
    return { status: response.statusCode, body: (response.body ? JSON.parse(response.body) : {}) as Body };
  };
  const movements = async () => Number((await database.db.selectFrom('movements').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);
  /** The request is a 400 BAD_REQUEST whose message says `reason`, and the ledger did not move. */
  const expectRefused = async (request: () => Promise<{ status: number; body: Body }>, reason: RegExp, status = 400) => {
    const before = await movements();
    const answer = await request();
    expect(answer.status, JSON.stringify(answer.body)).toBe(status);
    expect(answer.body.error).toEqual(expect.objectContaining({ code: expect.any(String), message: expect.stringMatching(reason), hint: expect.any(String) }));
    expect(await movements()).toBe(before);
    return answer.body.error as { code: string; message: string };
  };
  const event = (fields: Record<string, unknown>): NodeEvent =>
    ({ id: `ev${Math.random().toString(36).slice(2, 12)}`, at: new Date().toISOString(), ...fields }) as NodeEvent;

  beforeAll(async () => {
    testDb = await freshDatabase(engine);
    ({ token: admin } = await initMaster(testDb.url, 'admin'));
    database = openDatabase(testDb.url);
    await migrate(database);
    app = buildApp({ database });
    alice = (await call(admin, 'POST', '/api/v1/accounts', { name: 'alice' })).body.token;
    expect((await call(admin, 'POST', '/api/v1/software', await packSoftware(writeTree(greeterRelease())), { 'content-type': 'application/gzip' })).status).toBe(201);
    node = (await call(admin, 'POST', '/api/v1/nodes', { name: 'node-a' })).body.credential;
    await call(admin, 'POST', '/api/v1/supplies', { software: 'greeter', node: 'node-a' });
    const partitions = [0, 1].map((i) => ({ reference: `part${i}`, ip: `127.42.0.${i + 1}`, ports: { first: 30000 + i * 10, last: 30009 + i * 10 } }));
    expect((await call(node, 'PUT', '/api/v1/node/partitions', { partitions })).status).toBe(200);
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await testDb?.drop();
  });

  it('refuses a NUL or a lone surrogate in a title, a parameter (value or name), an SLA value and a label with a 400, storing nothing', async () => {
    const title = (text: string) => `/api/v1/instances/${encodeURIComponent(text)}`;
    await expectRefused(() => call(alice, 'PUT', title('web a\u0000b'), { software: 'greeter' }), /params\.title must be one line of text/);
    // A lone surrogate has no UTF-8 form: its nearest percent-encoding (CESU-8) is not valid URL encoding.
    await expectRefused(() => call(alice, 'PUT', '/api/v1/instances/web%ED%A0%80', { software: 'greeter' }), /the path .* is not valid URL encoding/);
    for (const bad of ['a\u0000b', 'a\ud800b', 'a\udc00']) {
      await expectRefused(() => call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', parameters: { greeting: bad } }), /body\.parameters\.greeting holds a (NUL|lone)/);
      await expectRefused(() => call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', parameters: { [`g${bad}`]: 'x' } }), /has a name that holds/);
      await expectRefused(() => call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', parameters: { list: [{ deep: [bad] }] } }), /body\.parameters\.list\.0\.deep\.0 holds/);
      await expectRefused(() => call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', sla: { region: bad } }), /body\.sla\.region must be one line of text/);
      await expectRefused(() => call(admin, 'PATCH', '/api/v1/nodes/node-a', { labels: { region: bad } }), /body\.labels\.region must be one line of text/);
    }
    // A pair of surrogates is one character, as welcome as any other.
    expect((await call(alice, 'PUT', title('web 😀'), { software: 'greeter', parameters: { greeting: 'hi 😀' }, sla: { region: 'eu 😀' } })).status).toBe(200);
  });

  it('refuses a NUL or a lone surrogate in a payment reference and in a credit or reversal reason, and an amount out of range', async () => {
    const invoice = 'INV-2026-01-00001';
    for (const bad of ['a\u0000b', 'a\ud800b']) {
      await expectRefused(() => call(admin, 'POST', '/api/v1/billing/payments', { invoice, amount: '1.00', reference: bad }), /body\.reference must be one line of text/);
      await expectRefused(() => call(admin, 'POST', `/api/v1/billing/invoices/${invoice}/credit`, { reason: bad }), /body\.reason must be one line of text/);
      await expectRefused(() => call(admin, 'POST', '/api/v1/billing/payments/00000000-0000-0000-0000-000000000000/reverse', { reason: bad }), /body\.reason must be one line of text/);
    }
    await expectRefused(() => call(admin, 'POST', '/api/v1/billing/payments', { invoice, amount: '999999999999999.99' }), /body\.amount must be a decimal with at most 9 digits/);
  });

  it('refuses control, line separator and bidirectional override characters in a title', async () => {
    for (const bad of ['\u202egnp.exe', 'a\u2028b', 'a\u2029b', 'a\u2066b', 'a\u0085b', 'a\u007fb', 'a\nb']) {
      await expectRefused(() => call(alice, 'PUT', `/api/v1/instances/${encodeURIComponent(bad)}`, { software: 'greeter' }), /params\.title must be one line of text, without control/);
    }
  });

  it('refuses parameters nested thousands of levels deep with a 400, before anything walks them', async () => {
    const deep = `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`;
    const error = await expectRefused(
      () => call(alice, 'PUT', '/api/v1/instances/deep', `{"software":"greeter","parameters":{"greeting":"hi","deep":${deep}}}`, { 'content-type': 'application/json' }),
      /body\.parameters\.deep\.a\.a.* is nested more than 64 levels deep/,
    );
    expect(error.code).toBe('BAD_REQUEST');
    const list = `${'['.repeat(3000)}${']'.repeat(3000)}`;
    await expectRefused(() => call(alice, 'PUT', '/api/v1/instances/deep', `{"software":"greeter","parameters":{"deep":${list}}}`, { 'content-type': 'application/json' }), /nested more than 64/);
    expect((await call(alice, 'GET', '/api/v1/instances/deep')).status).toBe(404);
  });

  it('refuses an out-of-range or over-precise amount with a 400 and stores none as a float', async () => {
    const price = (amount: string) => call(admin, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2026-01', prices: { 'instance-month': amount } });
    for (const amount of ['999999999999999.999999', '1000000000', '0.0000001', '1e3']) {
      await expectRefused(() => price(amount), /body\.prices\.instance-month must be a decimal with at most 9 digits before the point and 6 after it/);
    }
    const largest = await price('999999999.999999');
    expect(largest.status).toBe(200);
    expect(largest.body.prices['instance-month']).toBe('999999999.999999');
    const stored = await database.db.selectFrom('prices').select((eb) => eb.cast<string>('instance_month', 'text').as('micro')).executeTakeFirstOrThrow();
    expect(stored.micro).toBe('999999999999999');
  });

  it('refuses a damaged, escaping or pax-smuggled release archive with a 422, and goes on serving', async () => {
    const publish = (body: Buffer) => call(admin, 'POST', '/api/v1/software', body, { 'content-type': 'application/gzip' });
    const archives: [Buffer, RegExp][] = [
      [gzipSync(Buffer.from('not a tar archive at all, but gzipped'.repeat(20))), /bad software archive: .*checksum/i],
      [gzipSync(Buffer.alloc(4096)).subarray(0, 30), /bad software archive: .*(unexpected end|zlib)/i],
      [Buffer.from('neither gzip nor tar'), /bad software archive/],
      [tarEntry('../escaped', 'x'), /bad software archive: \.\.\/escaped leads out of the release folder/],
      [tarEntry('/tmp/absolute', 'x'), /bad software archive: \/tmp\/absolute leads out of the release folder/],
      [tarEntry('innocent', 'x', '0', { path: '../smuggled' }), /bad software archive: \.\.\/smuggled leads out of the release folder/],
      [tarEntry('link', '', '2', undefined, 'software.yaml'), /bad software archive: link is a SymbolicLink, not a plain file/],
    ];
    for (const [archive, reason] of archives) {
      const error = await expectRefused(() => publish(archive), reason, 422);
      expect(error.code).toBe('SOFTWARE_INVALID');
    }
    expect((await call(admin, 'GET', '/api/v1/software')).status).toBe(200);
  });

  it('refuses a release whose software.yaml holds a NUL with a 422', async () => {
    const release = greeterRelease('3.0.0');
    release['software.yaml'] = release['software.yaml']!.replace('description: a test release', 'description: "a test\\0release"');
    const archive = await packSoftware(writeTree(release));
    const error = await expectRefused(() => call(admin, 'POST', '/api/v1/software', archive, { 'content-type': 'application/gzip' }), /description holds a NUL/, 422);
    expect(error.code).toBe('SOFTWARE_INVALID');
  });

  it('refuses a damaged built part or source archive from a node with a 422 ARCHIVE_INVALID', async () => {
    expect((await call(admin, 'PATCH', '/api/v1/nodes/node-a', { binaryCacheUpload: true })).status).toBe(200);
    const damaged = gzipSync(Buffer.from('not a tar archive'));
    const sha256 = createHash('sha256').update(damaged).digest('hex');
    const query = new URLSearchParams({ platform: 'debian-12/x64', prefix: '', sha256 });
    const error = await expectRefused(
      () => call(node, 'PUT', `/api/v1/node/binaries/${'c'.repeat(64)}?${query}`, damaged, { 'content-type': 'application/gzip' }),
      /the archive cannot be unpacked/,
      422,
    );
    expect(error.code).toBe('ARCHIVE_INVALID');
  });

  it('answers a malformed URL encoding and an over-long path in its own error shape', async () => {
    for (const url of ['/api/v1/instances/%E0%A4%A', '/api/v1/instances/%', `/api/v1/instances/${'a'.repeat(5000)}`]) {
      const answer = await call(alice, 'GET', url);
      expect(answer.status).toBe(400);
      expect(answer.body).toEqual({ error: { code: 'BAD_REQUEST', message: expect.stringMatching(/^invalid request: /), hint: expect.any(String) } });
      expect(answer.body.error.message.length).toBeLessThan(300);
    }
    const unknown = await call(alice, 'GET', `/${'x'.repeat(10000)}`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.message.length).toBeLessThan(300);
  });

  it('answers requests the HTTP parser refuses (headers over 16 KiB, malformed HTTP) in its own error shape', async () => {
    await app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = app.server.address() as { port: number };
    /** Sends raw bytes and reads the whole answer until the master closes the connection. */
    const send = (bytes: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = connect(port, '127.0.0.1', () => socket.end(bytes));
        let answer = '';
        socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
        socket.on('close', () => resolve(answer));
        socket.on('error', reject);
      });
    for (const request of [`GET /api/v1/instances/${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 'NOT HTTP AT ALL\r\n\r\n']) {
      const answer = await send(request);
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as { error: { code: string; message: string; hint: string } };
      expect(body).toEqual({ error: { code: 'BAD_REQUEST', message: expect.stringMatching(/^invalid request: /), hint: expect.any(String) } });
    }
    // And it goes on serving.
    expect((await fetch(`http://127.0.0.1:${port}/health`)).status).toBe(200);
  });

  it('keeps a NUL or a lone surrogate in what a node reports, escaped, in event and promise messages', async () => {
    expect((await call(alice, 'PUT', '/api/v1/instances/evidence', { software: 'greeter' })).status).toBe(200);
    const state = (await call(node, 'GET', '/api/v1/node/desired-state')).body as DesiredState;
    const partition = state.partitions.find((p) => p.instance?.title === 'evidence')!;
    const instance = partition.instance!;
    const at = new Date().toISOString();
    const hash = state.software[0]!.hash;
    const events = [
      event({ type: 'software.error', software: hash, message: 'make: *** [all] Error 2\n--- last lines ---\nbinary\u0000garbage\ud800' }),
      event({ type: 'instance.error', partition: partition.reference, instance: instance.id, serial: instance.serial, message: 'crashed: \u0000\udfff' }),
      event({ type: 'instance.promises', partition: partition.reference, instance: instance.id, serial: instance.serial, promises: [{ name: 'answers', status: 'critical', message: 'got \u0000 from the port', since: at }] }),
    ];
    const answer = await call(node, 'POST', '/api/v1/node/events', { events });
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    expect(answer.body.applied).toEqual(events.map((e) => e.id));
    const view = (await call(alice, 'GET', '/api/v1/instances/evidence')).body;
    expect(view.message).toBe('crashed: \\u0000\\udfff');
    expect(view.promises).toEqual([expect.objectContaining({ name: 'answers', status: 'critical', message: 'got \\u0000 from the port' })]);
    const nodes = (await call(admin, 'GET', '/api/v1/nodes')).body as unknown as { software: { message: string | null }[] }[];
    expect(nodes[0]!.software[0]!.message).toBe('make: *** [all] Error 2\n--- last lines ---\nbinary\\u0000garbage\\ud800');
    // The same ids again are duplicates: escaping keeps an event's identity.
    expect((await call(node, 'POST', '/api/v1/node/events', { events })).body.duplicates).toEqual(events.map((e) => e.id));
  });
});
