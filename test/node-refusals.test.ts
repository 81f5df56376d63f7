/**
 * A real node agent and a real master process, on every engine of testEngines(): an
 * event the master refuses for good never blocks the events after it (it is set aside,
 * kept, logged, and shown by `pledger node list`), an event whose text no database
 * could hold is kept escaped, and a damaged release archive is a clear build error on
 * the node, never a crash.
 */
import { chownSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import Sqlite from 'better-sqlite3';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NodeView } from '../protocol/api.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';
import { pledger, startMaster, startNode, type RunningMaster, type TestNode } from './helpers/processes.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

describe.each(testEngines())('node events the master refuses, and damaged releases, on %s', (engine) => {
  let db: TestDatabase;
  let master: RunningMaster;
  let node: TestNode;
  let asAdmin: Record<string, string>;
  let greeterHash: string;

  const nodeList = async () => {
    const listed = await pledger(['node', 'list', '--json'], { env: asAdmin });
    expect(listed.exitCode, listed.stderr).toBe(0);
    return listed.json<NodeView[]>().find((n) => n.name === node.name)!;
  };
  const nodeDb = () => path.join(node.root, 'state', 'node.db');
  /** Writes events into the node's outbox as the agent queues them, owned by the agent's user. */
  const queue = (events: object[]) => {
    const sqlite = new Sqlite(nodeDb());
    try {
      for (const event of events) {
        sqlite.prepare('INSERT INTO outbox (id, body, queued_at) VALUES (?, ?, ?)').run((event as { id: string }).id, JSON.stringify(event), Date.now());
      }
    } finally {
      sqlite.close();
    }
    for (const suffix of ['', '-wal', '-shm']) if (existsSync(nodeDb() + suffix)) chownSync(nodeDb() + suffix, node.agent.uid, node.agent.gid);
  };
  const setAside = () => {
    const sqlite = new Sqlite(nodeDb(), { readonly: true });
    try {
      return sqlite.prepare('SELECT id, reason, body FROM set_aside ORDER BY seq').all() as { id: string; reason: string; body: string }[];
    } finally {
      sqlite.close();
    }
  };
  /** Runs SQL on the master's database, whichever engine. */
  const masterSql = async (statement: string, parameters: unknown[]) => {
    if (engine === 'sqlite') {
      const sqlite = new Sqlite(db.url.replace(/^sqlite:/, ''));
      try {
        sqlite.prepare(statement.replace(/\$\d+/g, '?')).run(...parameters);
      } finally {
        sqlite.close();
      }
      return;
    }
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      await client.query(statement, parameters);
    } finally {
      await client.end();
    }
  };

  beforeAll(async () => {
    db = await freshDatabase(engine);
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    node = await startNode(master, `refusals-${engine}`, { partitions: 1, ipBase: `127.47.${10 + Math.floor(Math.random() * 200)}.1` });
    // A refused event is sent again at each run here, rather than a minute later.
    const settings = JSON.parse(readFileSync(node.config, 'utf8')) as Record<string, unknown>;
    writeFileSync(node.config, JSON.stringify({ ...settings, outbox: { refusedRetryMs: 0 } }));
    const published = await pledger(['software', 'publish', writeTree(greeterRelease()), '--json'], { env: asAdmin });
    expect(published.exitCode, published.stderr).toBe(0);
    greeterHash = published.json<{ hash: string }>().hash;
    // The node database exists once the agent has opened it; a run with nothing to do opens it.
    expect((await node.run('report')).exitCode).toBe(0);
  }, 240_000);
  afterAll(async () => {
    await master?.stop();
    await db?.drop();
  });

  it('sets aside an event refused for good, after three runs, while the events after it flow', async () => {
    // At the head of the outbox: an event the master refuses whatever the run (a release it
    // never supplied to this node), then one whose log tail holds a NUL (a 500 on PostgreSQL
    // once, which blocked every later event).
    const poison = { id: 'poison-event-0001', at: new Date().toISOString(), type: 'software.error', software: 'e'.repeat(64), message: 'failed' };
    queue([poison]);
    expect((await pledger(['supply', 'greeter', node.name], { env: asAdmin })).exitCode).toBe(0);
    queue([{ id: 'nul-in-log-0001', at: new Date().toISOString(), type: 'software.error', software: greeterHash, message: 'cc: fatal\n\u0000\u0001 binary output' }]);

    // The agent builds the release and reports it: its event comes after both.
    const first = await node.run('software');
    expect(first.exitCode, first.stderr).toBe(0);
    let view = await nodeList();
    expect(view.software).toEqual([expect.objectContaining({ name: 'greeter', status: 'built' })]);
    expect(view.setAside).toBeNull();
    expect(first.stderr).toContain('the master refused an event: kept, and sent alone again later');

    // The escaped log tail reached the master: with the release built since, the history keeps it.
    const second = await node.run('report');
    expect(second.json()).toEqual({ sent: 0, pending: 1, offline: false });
    const third = await node.run('report');
    expect(third.exitCode, third.stderr).toBe(0);
    expect(third.json()).toEqual({ sent: 0, pending: 0, offline: false, setAside: 1 });
    expect(third.stderr).toContain('the master refused an event 3 times: set aside, the next events go on');

    // Kept whole on the node, with the master's reason, and shown to the operator.
    const kept = setAside();
    expect(kept.map((k) => JSON.parse(k.body) as unknown)).toEqual([poison]);
    expect(kept[0]!.reason).toContain('e'.repeat(64));
    view = await nodeList();
    expect(view.setAside).toEqual(expect.objectContaining({ count: 1, lastEvent: poison.id, lastType: 'software.error', lastReason: kept[0]!.reason }));
    const table = await pledger(['node', 'list'], { env: asAdmin });
    expect(table.stdout).toContain(`${node.name}: 1 event(s) set aside, refused by the master for good (last: software.error ${poison.id}`);

    // Later runs have nothing to send, and tell the master nothing new.
    expect((await node.run('report')).json()).toEqual({ sent: 0, pending: 0, offline: false, setAside: 1 });
  }, 240_000);

  it('keeps the NUL of a node event, escaped, in the ledger', async () => {
    const history = await masterHistory();
    expect(history).toContain('cc: fatal\\n\\\\u0000\\u0001 binary output');
  });

  it('refuses a damaged release archive with a 422, and the master process goes on serving', async () => {
    const damaged = gzipSync(Buffer.from('not a tar archive, '.repeat(50)));
    for (let i = 0; i < 3; i++) {
      const answer = await fetch(`${master.url}/api/v1/software`, { method: 'POST', body: damaged, headers: { authorization: `Bearer ${master.adminToken}`, 'content-type': 'application/gzip' } });
      expect(answer.status).toBe(422);
      expect(((await answer.json()) as { error: { code: string } }).error.code).toBe('SOFTWARE_INVALID');
    }
    // An unobserved rejection would have ended the process by now.
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(master.process.exitCode).toBeNull();
    expect((await fetch(`${master.url}/health`)).status).toBe(200);
  });

  it('reports a damaged release archive as a clear build error on the node, and the agent does not crash', async () => {
    const release = await pledger(['software', 'publish', writeTree(greeterRelease('2.0.0')), '--json'], { env: asAdmin });
    const hash = release.json<{ hash: string }>().hash;
    // Gzipped but not a tar inside: tar throws from inside the unpacking.
    await masterSql('UPDATE software_archives SET archive = $1 WHERE hash = $2', [gzipSync(Buffer.from('not a tar archive, '.repeat(50))), hash]);
    expect((await pledger(['supply', 'greeter@2.0.0', node.name], { env: asAdmin })).exitCode).toBe(0);
    const run = await node.run('software');
    expect(run.stderr).not.toMatch(/Unhandled|UnhandledPromiseRejection|at .*\.js:\d+/);
    expect(run.exitCode).toBe(1);
    const failed = (await nodeList()).software.find((s) => s.version === '2.0.0')!;
    expect(failed.status).toBe('error');
    expect(failed.message).toMatch(/bad software archive: .*checksum/i);
    // The next run is as clear, and the node goes on reporting.
    expect((await node.run('report')).exitCode).toBe(0);
  }, 240_000);

  /** The data of every movement of the master's ledger, as stored. */
  async function masterHistory(): Promise<string> {
    if (engine === 'sqlite') {
      const sqlite = new Sqlite(db.url.replace(/^sqlite:/, ''), { readonly: true });
      try {
        return (sqlite.prepare('SELECT data FROM movements ORDER BY seq').all() as { data: string }[]).map((r) => r.data).join('\n');
      } finally {
        sqlite.close();
      }
    }
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      return (await client.query<{ data: string }>('SELECT data FROM movements ORDER BY seq')).rows.map((r) => r.data).join('\n');
    } finally {
      await client.end();
    }
  }
});
