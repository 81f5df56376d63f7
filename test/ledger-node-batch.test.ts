/**
 * A node's batch of events as the node API receives it (POST /node/events), on every
 * engine: a full batch of usage for several instances is applied in one go, each hour
 * once, with a receipt that says which events counted; a batch with one bad event is
 * refused whole and records nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EventsReceipt, NodeEvent } from '../protocol/api.js';
import { billingFixture, type BillingFixture } from './helpers/billing-fixture.js';
import { testEngines } from './helpers/databases.js';

const INSTANCES = 4;

describe.each(testEngines())('node event batches on %s', (engine) => {
  let f: BillingFixture;
  let instances: { id: string; partition: string }[];

  beforeAll(async () => {
    f = await billingFixture(engine, INSTANCES);
    const token = await f.customer('carol');
    instances = [];
    for (let i = 0; i < INSTANCES; i++) instances.push(await f.instance(token, `service-${i}`));
  }, 60_000);
  afterAll(async () => {
    await f?.close();
  });

  const usage = (instance: { id: string; partition: string }, hour: number, id: string, cpuMilliseconds = 1000): NodeEvent => ({
    id,
    at: new Date().toISOString(),
    type: 'instance.usage',
    partition: instance.partition,
    instance: instance.id,
    hour: new Date(Date.UTC(2026, 9, 1) + hour * 3_600_000).toISOString(),
    cpuMilliseconds,
    memoryByteSeconds: 3600 * 2 ** 20,
    diskByteSeconds: 0,
    uptimeSeconds: 3600,
  });
  const send = (events: NodeEvent[]) => f.call(f.node, 'POST', '/api/v1/node/events', { events });
  const usageRows = () => f.database.db.selectFrom('usage_hours').select(['instance_id', 'hour', 'cpu_ms']).orderBy('hour').orderBy('instance_id').execute();

  it('applies a full batch, each hour once, and says which events counted', async () => {
    const events: NodeEvent[] = [];
    for (let n = 0; events.length < 498; n++) events.push(usage(instances[n % INSTANCES]!, Math.floor(n / INSTANCES), `batch-event-${n}`, 1000 + n));
    // The same hour again under another id, in the same batch: the first one counts.
    const repeated = usage(instances[0]!, 0, 'batch-event-repeated', 999_999);
    // An event id sent twice in the batch.
    events.push(repeated, events[7]!);
    const before = await f.movements();

    const answer = await send(events);
    expect(answer.status).toBe(200);
    const receipt = answer.body as EventsReceipt;
    expect(receipt.applied).toEqual(events.slice(0, 498).map((e) => e.id));
    expect(receipt.duplicates).toEqual(['batch-event-repeated', 'batch-event-7']);
    // One movement for the report, holding the hours it brought.
    expect(await f.movements()).toBe(before + 1);
    const received = await f.database.db.selectFrom('movements').select(['kind', 'subject', 'data']).orderBy('seq', 'desc').limit(1).executeTakeFirstOrThrow();
    expect(received.kind).toBe('usage.received');
    expect((JSON.parse(received.data) as { hours: unknown[] }).hours).toHaveLength(498);
    const rows = await usageRows();
    expect(rows).toHaveLength(498);
    const first = rows.find((r) => r.instance_id === instances[0]!.id && r.hour === '2026-10-01T00:00:00.000Z')!;
    expect(Number(first.cpu_ms)).toBe(1000);

    // Sent again whole (the node never saw the receipt): all duplicates, nothing changes.
    const again = (await send(events)).body as EventsReceipt;
    expect(again.applied).toEqual([]);
    expect(again.duplicates).toEqual(events.map((e) => e.id));
    expect(await f.movements()).toBe(before + 1);
    expect(await usageRows()).toEqual(rows);
  });

  it('answers usage reports that arrive together each on its own, a bad one refusing only itself', async () => {
    const before = await f.movements();
    const rows = (await usageRows()).length;
    const a = [usage(instances[0]!, 400, 'together-a-0'), usage(instances[1]!, 400, 'together-a-1')];
    const b = [usage(instances[0]!, 400, 'together-b-0'), usage(instances[2]!, 400, 'together-b-2')];
    const bad = [usage(instances[3]!, 400, 'together-c-3'), { ...usage(instances[3]!, 401, 'together-c-x'), partition: 'part999' } as NodeEvent];
    const c = [usage(instances[3]!, 402, 'together-d-3')];
    const [answerA, answerB, answerBad, answerC] = await Promise.all([send(a), send(b), send(bad), send(c)]);
    expect([answerA.status, answerB.status, answerBad.status, answerC.status]).toEqual([200, 200, 403, 200]);
    const receipts = [answerA.body, answerB.body, answerC.body] as EventsReceipt[];
    // The hour of instance 0 was in two reports: it counted once, in one of them.
    expect(receipts.flatMap((r) => r.applied).sort()).toEqual(
      expect.arrayContaining(['together-a-1', 'together-b-2', 'together-d-3']),
    );
    const zero = receipts.flatMap((r) => [...r.applied, ...r.duplicates]).filter((id) => id.endsWith('-0'));
    expect(zero.sort()).toEqual(['together-a-0', 'together-b-0']);
    expect(receipts.flatMap((r) => r.duplicates)).toHaveLength(1);
    // A movement per report that brought an hour: the refused one recorded nothing.
    expect(await f.movements()).toBe(before + 3);
    expect(await usageRows()).toHaveLength(rows + 4);
  });

  it('refuses a batch whole when one event is not the node’s to send, recording nothing', async () => {
    const before = await f.movements();
    const rows = await usageRows();
    const good = [usage(instances[1]!, 200, 'fresh-event-1'), usage(instances[2]!, 200, 'fresh-event-2')];
    const unknownPartition = { ...usage(instances[3]!, 200, 'fresh-event-3'), partition: 'part999' } as NodeEvent;
    const wrongInstance = { ...usage(instances[3]!, 200, 'fresh-event-4'), instance: 'not-an-instance' } as NodeEvent;
    const otherPartition = { ...usage(instances[3]!, 200, 'fresh-event-5'), partition: instances[0]!.partition } as NodeEvent;
    for (const bad of [unknownPartition, wrongInstance, otherPartition]) {
      const answer = await send([...good, bad]);
      expect(answer.status).toBe(403);
      expect(answer.body.error.message).toMatch(/is not (a partition of|allocated to partition)/);
    }
    const tooMany = await send(Array.from({ length: 501 }, (_, n) => usage(instances[0]!, 300 + n, `many-events-${n}`)));
    expect(tooMany.status).toBe(400);
    expect(await f.movements()).toBe(before);
    expect(await usageRows()).toEqual(rows);
  });

  it('refuses a batch whole when a usage event bills an hour not over by the master\'s clock, or more than an hour can hold', async () => {
    const before = await f.movements();
    const rows = await usageRows();
    const good = [usage(instances[1]!, 600, 'bounded-event-1'), usage(instances[2]!, 600, 'bounded-event-2')];
    const hourStart = (offsetMs: number) => new Date(Math.floor((Date.now() + offsetMs) / 3_600_000) * 3_600_000).toISOString();
    const at = (hour: string, id: string) => ({ ...usage(instances[3]!, 0, id), hour }) as NodeEvent;
    const refusals: [NodeEvent, number, RegExp][] = [
      // The hour under way, even allowing for a node's clock 5 minutes ahead.
      [at(hourStart(6 * 60_000), 'bounded-current'), 400, /the hour .* has not ended yet by the master's clock/],
      [at(hourStart(3_600_000 + 6 * 60_000), 'bounded-next'), 400, /has not ended yet/],
      [at('2027-06-01T00:00:00.000Z', 'bounded-future'), 400, /has not ended yet/],
      [at('2026-02-30T00:00:00.000Z', 'bounded-no-such-day'), 400, /is not the start of a UTC hour/],
      [at('2026-10-01T24:00:00.000Z', 'bounded-no-such-hour'), 400, /is not the start of a UTC hour/],
      [at('2026-10-01T00:30:00.000Z', 'bounded-half-hour'), 400, /hour/],
      [{ ...usage(instances[3]!, 601, 'bounded-uptime'), uptimeSeconds: 3601 } as NodeEvent, 400, /uptimeSeconds/],
      [{ ...usage(instances[3]!, 601, 'bounded-cpu'), cpuMilliseconds: 3600 * 1000 * 8192 + 1 } as NodeEvent, 400, /cpuMilliseconds/],
      [{ ...usage(instances[3]!, 601, 'bounded-negative-cpu'), cpuMilliseconds: -1 } as NodeEvent, 400, /cpuMilliseconds/],
      // More than 1 TiB held all hour, or a number SQLite would keep as a float and a close could not sum.
      [{ ...usage(instances[3]!, 601, 'bounded-memory'), memoryByteSeconds: 3600 * 2 ** 40 + 1 } as NodeEvent, 400, /memoryByteSeconds/],
      [{ ...usage(instances[3]!, 601, 'bounded-huge-disk'), diskByteSeconds: 1e300 } as NodeEvent, 400, /diskByteSeconds/],
      [{ ...usage(instances[3]!, 601, 'bounded-negative-memory'), memoryByteSeconds: -1 } as NodeEvent, 400, /memoryByteSeconds/],
      [{ ...usage(instances[3]!, 601, 'bounded-negative-disk'), diskByteSeconds: -5 } as NodeEvent, 400, /diskByteSeconds/],
      [{ ...usage(instances[3]!, 601, 'bounded-negative-uptime'), uptimeSeconds: -1 } as NodeEvent, 400, /uptimeSeconds/],
    ];
    for (const [bad, status, message] of refusals) {
      const answer = await send([...good, bad]);
      expect(answer.status, bad.id).toBe(status);
      expect(JSON.stringify(answer.body.error), bad.id).toMatch(message);
    }
    // The node is told which event to keep for later.
    expect((await send([...good, refusals[0]![0]])).body.error).toMatchObject({ code: 'TOO_EARLY', details: { event: 'bounded-current' } });
    expect(await f.movements()).toBe(before);
    expect(await usageRows()).toEqual(rows);

    // What may be true passes: the hour that ended last, every CPU Linux can run busy all hour.
    const justEnded = at(hourStart(-3_600_000), 'bounded-just-ended');
    const busiest = { ...usage(instances[3]!, 601, 'bounded-busiest'), cpuMilliseconds: 3600 * 1000 * 8192 } as NodeEvent;
    const answer = await send([...good, justEnded, busiest]);
    expect(answer.status).toBe(200);
    expect((answer.body as EventsReceipt).applied).toEqual(['bounded-event-1', 'bounded-event-2', 'bounded-just-ended', 'bounded-busiest']);
  });
});
