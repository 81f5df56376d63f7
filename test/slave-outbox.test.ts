/** Events survive a missing master, are delivered once acknowledged, and a refused one never blocks the rest. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MasterClient } from '../protocol/client.js';
import { silentLogger } from '../slave/log.js';
import { newEvent, Outbox } from '../slave/outbox.js';
import { startFakeMaster, type FakeMaster } from './slave-fake-master.js';

let scratch: string;

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'pledger-outbox-'));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

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
    let master: FakeMaster = await startFakeMaster();
    const port = Number(new URL(master.url).port);
    await master.close();
    const client = new MasterClient({ url: master.url, token: 'node-secret', timeoutMs: 2000 });
    const outbox = new Outbox(path.join(scratch, 'a', 'outbox.jsonl'));
    await outbox.add(event('part0'));
    await outbox.add(event('part1'));
    expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 0, pending: 2, offline: true });
    expect(await outbox.pending()).toHaveLength(2);

    master = await startFakeMaster('node-secret', port);
    try {
      expect(await outbox.flush(client, silentLogger)).toEqual({ sent: 2, pending: 0, offline: false });
      expect(master.events.map((e) => e.type === 'instance.started' && e.partition)).toEqual(['part0', 'part1']);
      expect(await outbox.pending()).toEqual([]);
      await outbox.flush(client, silentLogger);
      expect(master.hits['POST /api/v1/node/events']).toBe(1);
    } finally {
      await master.close();
    }
  });

  it('drops only the event the master refuses, and keeps everything on a bad credential', async () => {
    const master = await startFakeMaster();
    try {
      master.refuse = (e) => 'partition' in e && e.partition === 'gone';
      const outbox = new Outbox(path.join(scratch, 'b', 'outbox.jsonl'));
      for (const partition of ['part0', 'gone', 'part2']) await outbox.add(event(partition));
      const result = await outbox.flush(new MasterClient({ url: master.url, token: 'node-secret' }), silentLogger);
      expect(result).toEqual({ sent: 3, pending: 0, offline: false });
      expect(master.events.map((e) => 'partition' in e && e.partition)).toEqual(['part0', 'part2']);

      await outbox.add(event('part3'));
      const unauthorized = await outbox.flush(new MasterClient({ url: master.url, token: 'wrong' }), silentLogger);
      expect(unauthorized).toEqual({ sent: 0, pending: 1, offline: false });
      expect(await outbox.pending()).toHaveLength(1);
    } finally {
      await master.close();
    }
  });
});
