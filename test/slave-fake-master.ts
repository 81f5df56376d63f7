/**
 * A stand-in for the master's node API, enough to drive the node agent in tests:
 * a desired state with an ETag, partitions, events and release archives.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { DesiredState, NodeEvent, PartitionDefinition } from '../protocol/api.js';

export interface FakeMaster {
  url: string;
  state: DesiredState;
  archives: Map<string, Buffer>;
  events: NodeEvent[];
  partitions: PartitionDefinition[];
  /** How many requests each route got, by "METHOD /path" (hash-free). */
  hits: Record<string, number>;
  notModified: number;
  /** When set, POST /events answers this error for any batch holding an event it matches. */
  refuse?: (event: NodeEvent) => boolean;
  close(): Promise<void>;
}

export async function startFakeMaster(credential = 'node-secret', port = 0): Promise<FakeMaster> {
  const master: FakeMaster = {
    url: '',
    state: { node: 'test-node', software: [], partitions: [] },
    archives: new Map(),
    events: [],
    partitions: [],
    hits: {},
    notModified: 0,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
  const server: Server = createServer((request, response) => {
    void handle(request).then(
      ({ status, body, headers = {} }) => {
        response.writeHead(status, headers);
        response.end(body);
      },
      (error: Error) => {
        response.writeHead(500, { 'content-type': 'application/json' });
        response.end(JSON.stringify({ error: { code: 'INTERNAL', message: error.message } }));
      },
    );
  });

  const json = (status: number, value: unknown) => ({ status, body: JSON.stringify(value), headers: { 'content-type': 'application/json' } });

  async function handle(request: IncomingMessage): Promise<{ status: number; body?: string | Buffer; headers?: Record<string, string> }> {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const route = `${request.method} ${(request.url ?? '').replace(/[0-9a-f]{64}/, ':hash')}`;
    master.hits[route] = (master.hits[route] ?? 0) + 1;
    if (request.headers.authorization !== `Bearer ${credential}`) return json(401, { error: { code: 'UNAUTHENTICATED', message: 'bad credential' } });

    if (route === 'GET /api/v1/node/desired-state') {
      const etag = `"${createHash('sha256').update(JSON.stringify(master.state)).digest('hex')}"`;
      if (request.headers['if-none-match'] === etag) {
        master.notModified += 1;
        return { status: 304, headers: { etag } };
      }
      return { ...json(200, master.state), headers: { 'content-type': 'application/json', etag } };
    }
    if (route === 'PUT /api/v1/node/partitions') {
      master.partitions = (JSON.parse(body) as { partitions: PartitionDefinition[] }).partitions;
      return json(200, { partitions: master.partitions.length });
    }
    if (route === 'POST /api/v1/node/events') {
      const events = (JSON.parse(body) as { events: NodeEvent[] }).events;
      if (master.refuse && events.some(master.refuse)) return json(403, { error: { code: 'FORBIDDEN', message: 'not yours' } });
      const known = new Set(master.events.map((event) => event.id));
      const receipt = { applied: [] as string[], duplicates: [] as string[] };
      for (const event of events) {
        if (known.has(event.id)) receipt.duplicates.push(event.id);
        else {
          master.events.push(event);
          receipt.applied.push(event.id);
        }
      }
      return json(200, receipt);
    }
    const hash = /^\/api\/v1\/node\/software\/([0-9a-f]{64})$/.exec(request.url ?? '')?.[1];
    if (request.method === 'GET' && hash) {
      const archive = master.archives.get(hash);
      if (!archive) return json(404, { error: { code: 'SOFTWARE_NOT_FOUND', message: 'no such software' } });
      return { status: 200, body: archive, headers: { 'content-type': 'application/gzip' } };
    }
    return json(404, { error: { code: 'NOT_FOUND', message: `no route ${route}` } });
  }

  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  master.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return master;
}
