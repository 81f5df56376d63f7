/**
 * The client as the master sees it: each route named in the table becomes one request
 * with its path parameters encoded, its query, its headers and its body, and its answer
 * comes back parsed, as bytes, or as a stream. A plain HTTP server on 127.0.0.1 records
 * what arrives.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { text } from 'node:stream/consumers';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { MasterClient } from '../protocol/client.js';

interface Received {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

describe('the client of the route table', () => {
  let server: Server;
  let client: MasterClient;
  let received: Received[];
  /** What the server answers next: status, headers, body. */
  let answers: [number, Record<string, string>, string | Buffer][];

  beforeAll(async () => {
    server = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        received.push({ method: request.method!, url: request.url!, headers: request.headers, body: Buffer.concat(chunks) });
        const [status, headers, body] = answers.shift() ?? [200, { 'content-type': 'application/json' }, '{}'];
        response.writeHead(status, headers).end(body);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    client = new MasterClient({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, token: 'plg_u_test', unavailableRetriesMs: [1, 1] });
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
  beforeEach(() => {
    received = [];
    answers = [];
  });

  it('encodes each path parameter and sends the body as JSON, with the token', async () => {
    answers.push([200, { 'content-type': 'application/json' }, '{"title":"a/b c"}']);
    const view = await client.instances.request('a/b c', { software: 'hello' });
    expect(view).toEqual({ title: 'a/b c' });
    expect(received[0]).toMatchObject({ method: 'PUT', url: '/api/v1/instances/a%2Fb%20c', headers: { authorization: 'Bearer plg_u_test', 'content-type': 'application/json' } });
    expect(JSON.parse(received[0]!.body.toString())).toEqual({ software: 'hello' });
  });

  it('sends the query without the values left out, and the headers a route declares', async () => {
    await client.billing.invoices({ query: { period: '2026-11', account: undefined } });
    await client.instances.list();
    await client.billing.pay({ invoice: 'INV-2026-11-00001', amount: '1.00' }, { headers: { 'idempotency-key': 'key-1' } });
    expect(received.map((r) => `${r.method} ${r.url}`)).toEqual(['GET /api/v1/billing/invoices?period=2026-11', 'GET /api/v1/instances', 'POST /api/v1/billing/payments']);
    expect(received[2]!.headers['idempotency-key']).toBe('key-1');
  });

  it('sends archives as their bytes and answers archives as bytes', async () => {
    answers.push([201, { 'content-type': 'application/json' }, '{"name":"hello"}'], [200, { 'content-type': 'application/gzip' }, Buffer.from([1, 2, 3])]);
    const published = await client.answer.software.publish(Buffer.from('archive'));
    const archive = await client.node.software('ab'.repeat(32));
    expect(published).toMatchObject({ status: 201, body: { name: 'hello' } });
    expect(received[0]).toMatchObject({ method: 'POST', url: '/api/v1/software', headers: { 'content-type': 'application/gzip' } });
    expect(received[0]!.body.toString()).toBe('archive');
    expect(received[1]!.headers.accept).toBe('application/gzip');
    expect([...archive]).toEqual([1, 2, 3]);
  });

  it('answers 304 to a conditional poll, with no body', async () => {
    answers.push([304, { etag: '"7"' }, '']);
    const answer = await client.answer.node.desiredState({ headers: { 'if-none-match': '"7"' } });
    expect(answer).toMatchObject({ status: 304, body: undefined });
    expect(received[0]).toMatchObject({ url: '/api/v1/node/desired-state', headers: { 'if-none-match': '"7"' } });
  });

  it('streams an answer as it arrives, and throws a refusal as the master worded it', async () => {
    answers.push([200, { 'content-type': 'text/csv' }, 'a,b\n1,2\n']);
    expect(await text(await client.billing.export({ query: { period: '2026-11', format: 'csv' } }))).toBe('a,b\n1,2\n');
    expect(received[0]!.url).toBe('/api/v1/billing/export?period=2026-11&format=csv');
    answers.push([403, { 'content-type': 'application/json' }, '{"error":{"code":"FORBIDDEN","message":"only an operator (admin account) may do this"}}']);
    await expect(client.billing.export({ query: { period: '2026-11', format: 'csv' } })).rejects.toMatchObject({ code: 'FORBIDDEN', message: 'only an operator (admin account) may do this' });
  });

  it('tries again what the master answered 503, streams included', async () => {
    const unavailable: [number, Record<string, string>, string] = [503, { 'content-type': 'application/json' }, '{"error":{"code":"SERVICE_UNAVAILABLE","message":"try again"}}'];
    answers.push(unavailable, [200, { 'content-type': 'application/json' }, '{"name":"alice","role":"user","createdAt":"2026-11-01T00:00:00.000Z"}']);
    expect(await client.accounts.whoami()).toMatchObject({ name: 'alice' });
    answers.push(unavailable, [200, { 'content-type': 'text/plain' }, 'journal']);
    expect(await text(await client.billing.export({ query: { period: '2026-11', format: 'hledger' } }))).toBe('journal');
    expect(received).toHaveLength(4);
  });
});
