/**
 * Dunning over an instance tree, on every engine: holding a customer stops the root
 * and the sub-instance its deployment requested, nothing of the tree starts while the
 * invoice is unpaid, and the payment starts the whole tree again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DesiredState } from '../protocol/api.js';
import { packSoftware } from '../protocol/software-archive.js';
import { billingFixture, type BillingFixture } from './helpers/billing-fixture.js';
import { testEngines } from './helpers/databases.js';
import { writeTree } from './helpers/tree.js';

const releases = [
  { 'software.yaml': ['name: shop', 'version: 1.0.0', 'software-types:', '  default:', '    requests:', '      db:', '        software: store', ''].join('\n') },
  { 'software.yaml': ['name: store', 'version: 1.0.0', 'software-types:', '  default: {}', ''].join('\n') },
];

describe.each(testEngines())('dunning an instance tree on %s', (engine) => {
  let f: BillingFixture;
  let alice: string;

  beforeAll(async () => {
    f = await billingFixture(engine, 4);
    for (const files of releases) {
      const published = await f.app.inject({
        method: 'POST',
        url: '/api/v1/software',
        payload: await packSoftware(writeTree(files)),
        headers: { authorization: `Bearer ${f.admin}`, 'content-type': 'application/gzip' },
      });
      expect(published.statusCode, published.body).toBe(201);
      await f.call(f.admin, 'POST', '/api/v1/supplies', { software: files['software.yaml'].split('\n')[0]!.slice('name: '.length), node: 'node-a' });
    }
    await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'shop', softwareType: 'default', validFrom: '2026-01', prices: { 'instance-hour': '1.00' } });
    alice = await f.customer('alice');
  });
  afterAll(async () => {
    await f?.close();
  });

  const state = async (title: string) => (await f.call(alice, 'GET', `/api/v1/instances/${encodeURIComponent(title)}`)).body.state as string;

  it('stops a root and its sub-instance for an overdue invoice, refuses to start either, and starts both on payment', async () => {
    expect((await f.call(alice, 'PUT', '/api/v1/instances/shop', { software: 'shop' })).status).toBe(200);
    const desired = (await f.call(f.node, 'GET', '/api/v1/node/desired-state')).body as DesiredState;
    const root = desired.partitions.find((p) => p.instance?.title === 'shop')!;
    const children = await f.call(f.node, 'POST', `/api/v1/node/partitions/${root.reference}/requests`, {
      instance: root.instance!.id,
      serial: root.instance!.serial,
      requests: [{ name: 'db', software: 'store', parameters: {} }],
    });
    expect(children.status, children.text).toBe(200);
    expect(await state('shop/db')).toBe('started');
    await f.backdate(root.instance!.id);
    await f.report({ id: root.instance!.id, partition: root.reference }, '2026-10-01T00:00:00.000Z');
    const closed = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-10' });
    const invoice = closed.body.invoices[0] as { id: string; dueAt: string; total: string };

    const dunning = await f.call(f.admin, 'POST', '/api/v1/billing/dunning', { asOf: new Date(Date.parse(invoice.dueAt) + 8 * 86_400_000).toISOString() });
    expect(dunning.body.held).toEqual(['alice']);
    expect([await state('shop'), await state('shop/db')]).toEqual(['stopped', 'stopped']);

    const before = await f.movements();
    const again = await f.call(alice, 'PUT', '/api/v1/instances/shop', { software: 'shop', state: 'started' });
    expect(again.status).toBe(402);
    expect(again.body.error.hint).toMatch(`pay invoice ${invoice.id}`);
    // The child follows its parent: its owner cannot start it on its own either.
    expect((await f.call(alice, 'PUT', '/api/v1/instances/shop%2Fdb', { software: 'store', state: 'started' })).status).toBe(409);
    expect(await f.movements()).toBe(before);
    expect([await state('shop'), await state('shop/db')]).toEqual(['stopped', 'stopped']);

    const paid = await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: invoice.id, amount: invoice.total });
    expect(paid.body.restarted).toEqual(['shop', 'shop/db']);
    expect([await state('shop'), await state('shop/db')]).toEqual(['started', 'started']);
  });
});
