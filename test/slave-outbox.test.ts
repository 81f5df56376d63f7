/** Events survive a missing master, are delivered once acknowledged, and a refused one never blocks the rest. */
import { mkdtemp, rm } from 'node:fs/promises';
import Sqlite from 'better-sqlite3';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MasterClient } from '../protocol/client.js';
import { silentLogger } from '../slave/log.js';
import { OUTBOX_DEFAULTS } from '../slave/config.js';
import { newEvent, Outbox } from '../slave/outbox.js';
import { usageEventId } from '../slave/usage.js';
import type { NodeEvent } from '../protocol/api.js';
import { startInProcessMaster, type InProcessMaster } from './helpers/master-in-process.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

let scratch: string;
let master: InProcessMaster;
let credential: string;
/** Two releases supplied to the node: reports about them are the node's to send. */
const supplied: string[] = [];

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'pledger-outbox-'));
  master = await startInProcessMaster();
  credential = await master.registerNode('outbox-node');
  for (const version of ['1.0.0', '2.0.0']) {
    const release = await master.publish(writeTree(greeterRelease(version)));
    await master.operator.supplies.set({ software: `greeter@${version}`, node: 'outbox-node' });
    supplied.push(release.hash);
  }
});

afterAll(async () => {
  await master.close();
  await rm(scratch, { recursive: true, force: true });
});

const built = (hash: string) => newEvent({ type: 'software.built', software: hash });
const statuses = async () =>
  (await master.operator.nodes.list())[0]!.software.map((s) => `${s.version}:${s.status}`);

const event = (partition: string, type: 'instance.started' | 'instance.error' = 'instance.started') =>
  newEvent({ type, partition, instance: 'i-1', serial: 1 });

describe('outbox', () => {
  it('gives events an id of 22 url-safe characters and a time', () => {
    const e = event('part0');
    expect(e.id).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(new Date(e.at).toISOString()).toBe(e.at);
    const long = newEvent({ type: 'software.error', software: 'a'.repeat(64), message: 'x'.repeat(20000) });
    expect('message' in long && long.message?.length).toBeLessThanOrEqual(16003);
  });

  it('keeps events while the master is unreachable and delivers them once it is back', async () => {
    await master.stop();
    const client = new MasterClient({ url: master.url, token: credential, timeoutMs: 2000 });
    const outbox = new Outbox(path.join(scratch, 'a', 'node.db'));
    await outbox.add(built(supplied[0]!));
    await outbox.add(built(supplied[1]!));
    expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 0, pending: 2, offline: true });
    expect(await outbox.pending()).toHaveLength(2);

    await master.restart();
    const from = master.answered.length;
    expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 2, pending: 0, offline: false });
    expect(await statuses()).toEqual(['1.0.0:built', '2.0.0:built']);
    expect(await outbox.pending()).toEqual([]);
    await outbox.flush(client, silentLogger);
    expect(master.answered.slice(from).filter((r) => r.startsWith('POST /api/v1/node/events'))).toEqual(['POST /api/v1/node/events 200']);
  });

  it('delivers around the event the master refuses, sets it aside after bounded retries, and keeps everything on a bad credential', async () => {
    // Refused events are tried again at every flush here, rather than a minute later.
    const outbox = new Outbox(path.join(scratch, 'b', 'node.db'), { ...OUTBOX_DEFAULTS, refusedRetryMs: 0 });
    const notSupplied = 'f'.repeat(64);
    const refused = newEvent({ type: 'software.error', software: notSupplied, message: 'failed' });
    await outbox.add(newEvent({ type: 'software.error', software: supplied[0]!, message: 'failed' }));
    await outbox.add(refused);
    await outbox.add(newEvent({ type: 'software.error', software: supplied[1]!, message: 'failed' }));
    const client = new MasterClient({ url: master.url, token: credential });
    expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 2, pending: 1, offline: false });
    expect(await statuses()).toEqual(['1.0.0:error', '2.0.0:error']);
    // Tried again alone in the next runs, then set aside, whole, with the master's reason.
    expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 0, pending: 1, offline: false });
    expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 0, pending: 0, offline: false, setAside: 1 });
    expect(outbox.setAside().map((s) => s.event)).toEqual([refused]);
    expect(outbox.setAside()[0]!.reason).toContain(notSupplied);
    const view = (await master.operator.nodes.list())[0]!;
    expect(view.setAside).toEqual(expect.objectContaining({ count: 1, lastEvent: refused.id, lastType: 'software.error' }));
    expect(view.setAside!.lastReason).toContain(notSupplied);

    await outbox.add(built(supplied[0]!));
    const unauthorized = await outbox.flush(new MasterClient({ url: master.url, token: 'plg_n_wrong' }), silentLogger);
    expect(unauthorized).toEqual({ sent: 0, pending: 1, offline: false, setAside: 1 });
    expect(await outbox.pending()).toHaveLength(1);
  });

  it('finds the refused event of a large batch in a few requests: by halving it, or at once when the schema names it', async () => {
    const outbox = new Outbox(path.join(scratch, 'd', 'node.db'), { ...OUTBOX_DEFAULTS, refusedRetryMs: 0 });
    const posts = () => master.answered.filter((r) => r.startsWith('POST /api/v1/node/events'));
    const good = () => newEvent({ type: 'software.built', software: supplied[0]! });
    // Refused for what it says (a release not supplied to the node): only halving finds it.
    const refused = newEvent({ type: 'software.error', software: 'd'.repeat(64), message: 'failed' });
    const events = [...Array.from({ length: 40 }, good), refused, ...Array.from({ length: 23 }, good)];
    for (const e of events) await outbox.add(e);
    let from = posts().length;
    expect(await outbox.flush(new MasterClient({ url: master.url, token: credential }), silentLogger)).toEqual({ sent: 63, pending: 1, offline: false });
    // 64 events: the batch, then two halves at each of 6 levels, at most.
    expect(posts().length - from).toBeLessThanOrEqual(1 + 2 * 6);
    expect((await outbox.pending()).map((e) => e.id)).toEqual([refused.id]);
    outbox.close();

    // Refused by the schema (a field no event has): the master's details point at it.
    const second = new Outbox(path.join(scratch, 'e', 'node.db'), { ...OUTBOX_DEFAULTS, refusedRetryMs: 0 });
    const malformed = { ...good(), extra: 'field' } as unknown as NodeEvent;
    for (const e of [...Array.from({ length: 30 }, good), malformed, ...Array.from({ length: 30 }, good)]) await second.add(e);
    from = posts().length;
    expect(await second.flush(new MasterClient({ url: master.url, token: credential }), silentLogger)).toEqual({ sent: 60, pending: 1, offline: false });
    expect(posts().slice(from)).toEqual(['POST /api/v1/node/events 400', 'POST /api/v1/node/events 200']);
    second.close();
  });

  it('counts an event the master fails on (500) while it takes the others as refused, and stops when the master fails on everything', async () => {
    // A bug of the master that one event meets: a trigger makes recording it fail.
    const sqlite = new Sqlite(master.databaseUrl.replace(/^sqlite:/, ''));
    sqlite.exec("CREATE TRIGGER poison BEFORE INSERT ON movements WHEN NEW.data LIKE '%poisoned build%' BEGIN SELECT RAISE(ABORT, 'a bug of the master'); END");
    try {
      const outbox = new Outbox(path.join(scratch, 'f', 'node.db'), { ...OUTBOX_DEFAULTS, refusedRetryMs: 0 });
      const client = new MasterClient({ url: master.url, token: credential });
      const poison = newEvent({ type: 'software.error', software: supplied[0]!, message: 'poisoned build' });
      await outbox.add(poison);
      for (let i = 0; i < 5; i++) await outbox.add(built(supplied[1]!));
      expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 5, pending: 1, offline: false });
      await outbox.add(built(supplied[1]!));
      expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 1, pending: 1, offline: false });
      await outbox.add(built(supplied[1]!));
      expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 1, pending: 0, offline: false, setAside: 1 });
      expect(outbox.setAside().map((s) => s.event.id)).toEqual([poison.id]);

      // When the master fails on every event, nothing is counted: the run stops after two.
      sqlite.exec("DROP TRIGGER poison; CREATE TRIGGER broken BEFORE INSERT ON movements BEGIN SELECT RAISE(ABORT, 'broken'); END");
      const from = master.answered.length;
      for (let i = 0; i < 8; i++) await outbox.add(built(supplied[1]!));
      expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 0, pending: 8, offline: false, setAside: 1 });
      // The batch, then halves down to one event, and its neighbour: a handful of requests.
      expect(master.answered.slice(from).filter((r) => r.startsWith('POST /api/v1/node/events')).length).toBeLessThanOrEqual(6);
      expect(outbox.database.prepare('SELECT count(*) AS n FROM outbox_refusals').get()).toEqual({ n: 0 });
      outbox.close();
    } finally {
      sqlite.exec('DROP TRIGGER IF EXISTS poison; DROP TRIGGER IF EXISTS broken');
      sqlite.close();
    }
  });

  it('keeps a usage report the master finds too early, and delivers the rest', async () => {
    const outbox = new Outbox(path.join(scratch, 'c', 'node.db'));
    // The hour under way by any clock within the master's allowance: the node's clock is ahead.
    const hour = new Date(Math.floor((Date.now() + 6 * 60_000) / 3_600_000) * 3_600_000).toISOString();
    const early = (instance: string): NodeEvent => ({
      id: usageEventId(instance, hour),
      at: new Date().toISOString(),
      type: 'instance.usage',
      partition: 'part0',
      instance,
      hour,
      cpuMilliseconds: 1,
      memoryByteSeconds: 0,
      diskByteSeconds: 0,
      uptimeSeconds: 1,
    });
    const kept = [early('i-1'), early('i-2')];
    await outbox.add(kept[0]!);
    await outbox.add(built(supplied[0]!));
    await outbox.add(kept[1]!);
    await outbox.add(built(supplied[1]!));
    expect(await outbox.flush(new MasterClient({ url: master.url, token: credential }), silentLogger)).toEqual({ sent: 2, pending: 2, offline: false });
    expect((await outbox.pending()).map((e) => e.id)).toEqual(kept.map((e) => e.id));
  });
});
