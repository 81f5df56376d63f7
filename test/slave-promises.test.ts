/** Promises checked in-process against real servers on 127.0.0.1. */
import { once } from 'node:events';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkPromise, checkPromises, parseHostPort } from '../slave/promises.js';

let http: Server;
let httpPort: number;

/** A port that was free a moment ago: nothing listens there. */
async function closedPort(): Promise<number> {
  const server = createTcpServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

beforeAll(async () => {
  http = createHttpServer((request, response) => {
    if (request.url === '/health') response.end('all good');
    else {
      response.statusCode = 404;
      response.end('nope');
    }
  }).listen(0, '127.0.0.1');
  await once(http, 'listening');
  httpPort = (http.address() as AddressInfo).port;
});

afterAll(() => {
  http.close();
});

describe('tcp promise', () => {
  it('holds when the port accepts connections', async () => {
    expect(await checkPromise('listening', { tcp: `127.0.0.1:${httpPort}` })).toMatchObject({ name: 'listening', ok: true });
  });

  it('fails after its timeout when nothing listens', async () => {
    const port = await closedPort();
    const started = Date.now();
    const result = await checkPromise('listening', { tcp: `127.0.0.1:${port}`, timeout: 0.6 });
    expect(result.ok).toBe(false);
    expect(result.message).toMatch(/promise listening: cannot connect to 127\.0\.0\.1:\d+: ECONNREFUSED/);
    // It kept trying until its timeout (a lower bound the check itself sets).
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
  });

  it('waits for a service that binds a moment later', async () => {
    const port = await closedPort();
    const late = createTcpServer();
    const timer = setTimeout(() => late.listen(port, '127.0.0.1'), 500);
    try {
      expect((await checkPromise('late', { tcp: `127.0.0.1:${port}`, timeout: 5 })).ok).toBe(true);
    } finally {
      clearTimeout(timer);
      late.close();
    }
  });

  it('parses host:port and refuses anything else', () => {
    expect(parseHostPort('127.42.0.1:8080')).toEqual({ host: '127.42.0.1', port: 8080 });
    expect(parseHostPort('[::1]:443')).toEqual({ host: '::1', port: 443 });
    expect(() => parseHostPort('127.0.0.1')).toThrow();
    expect(() => parseHostPort('host:99999')).toThrow();
  });
});

describe('http promise', () => {
  it('checks the status (200 by default) and the body', async () => {
    const base = `http://127.0.0.1:${httpPort}`;
    const results = await checkPromises({
      health: { http: `${base}/health` },
      text: { http: `${base}/health`, contains: 'good' },
      missing: { http: `${base}/missing`, status: 404, contains: 'nope' },
      wrongStatus: { http: `${base}/missing`, timeout: 0.3 },
      wrongText: { http: `${base}/health`, contains: 'bad', timeout: 0.3 },
    });
    expect(results.map((r) => [r.name, r.ok])).toEqual([
      ['health', true],
      ['text', true],
      ['missing', true],
      ['wrongStatus', false],
      ['wrongText', false],
    ]);
    expect(results[3]!.message).toMatch(/answered 404, expected 200/);
    expect(results[4]!.message).toMatch(/answered without "bad"/);
  });

  it('fails when nothing answers', async () => {
    const result = await checkPromise('down', { http: `http://127.0.0.1:${await closedPort()}/`, timeout: 0.3 });
    expect(result.ok).toBe(false);
    expect(result.message).toMatch(/cannot get/);
  });
});
