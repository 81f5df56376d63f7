/**
 * The ledger under concurrency, with real master processes on one database: three on
 * PostgreSQL behind a real haproxy, two on one SQLite file (behind haproxy as well, so
 * that both engines meet the same clients). Customers request, change, stop and destroy
 * instances; simulated nodes pull their desired state and report with their own
 * credentials (started with connection parameters, promises, stopped, destroyed, usage
 * for ended hours); an operator pays, credits and reverses on the same invoices at
 * once, and closes a month in the middle of it. Then the masters are stopped and the
 * database must hold what the ledger promises:
 * - every projection equals a rebuild from the movements, row by row;
 * - no invoice is paid past its total, none is paid and credited;
 * - no partition holds two instances, no instance two partitions;
 * - every request that had capacity was accepted (there are more partitions than
 *   titles ever requested, so no refusal can be for want of room);
 * - every request answered as accepted is what the database holds;
 * - the journal balances, per currency and per transaction.
 * The same again with a `kill -9` of one master in the middle of the load: clients send
 * again what failed, through the balancer, as a real client would.
 *
 * Then focused races, each on a fresh database: ten customers at once on a node with
 * exactly ten free partitions; fifty identical requests for one new title; fifty
 * payments of the full amount on one invoice; a payment and a credit note at once; a
 * payment sent twice with one idempotency key.
 *
 * Bounded: a fixed count of operations per client, a deadline for the load, a lifetime
 * for every process (see helpers/master-fleet.ts).
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testEngines, type TestEngine } from './helpers/databases.js';
import { addNode, createCustomer, expectStatus, FleetClient, formatMinor, minorUnits, publishGreeter, type Answer, type Body, type SimulatedNode } from './helpers/fleet-clients.js';
import { backdateInstances, invoiceViolations, journalViolations, partitionViolations, query, snapshotDifferences, snapshotProjections } from './helpers/ledger-checks.js';
import { startMasterFleet, type MasterFleet } from './helpers/master-fleet.js';

const MASTERS: Record<TestEngine, number> = { postgres: 3, sqlite: 2 };
const NODES = 4;
const PARTITIONS_PER_NODE = 12;
const CUSTOMERS = 6;
const SEEDS_PER_CUSTOMER = 2;
const NEW_PER_CUSTOMER = 4;
/** At most; a customer stops earlier when the load's deadline has passed. */
const OPERATIONS_PER_CUSTOMER = 80;
/** Customers send nothing new after this; what is under way finishes. */
const LOAD_MS = 10_000;
const KILL_AT_MS = LOAD_MS * 0.4;
const FLEET_LIFETIME_MS = 170_000;

// Titles ever requested stay below the partitions: any refusal is not for want of room.
const TITLES = CUSTOMERS * (SEEDS_PER_CUSTOMER + NEW_PER_CUSTOMER);
if (TITLES > NODES * PARTITIONS_PER_NODE) throw new Error('the scenario must have room for every title it requests');

const PRICES = { software: 'greeter', softwareType: 'default', validFrom: '2026-10', prices: { 'instance-hour': '1.00' } };
const hours = (day: string, count: number) => Array.from({ length: count }, (_, h) => `${day}T${String(h).padStart(2, '0')}:00:00.000Z`);
const OCTOBER_HOURS = hours('2026-10-05', 5);
/** When the instances billed are taken to have been requested: before the months billed. */
const BEFORE_BILLED_MONTHS = '2026-09-01T00:00:00.000Z';
const NOVEMBER_HOURS = hours('2026-11-10', 24);

async function freePartitions(database: string, node?: string): Promise<number> {
  const rows = await query(
    database,
    `select count(*) as n from partitions p join nodes n on n.id = p.node_id where p.instance_id is null${node ? ` and n.name = '${node}'` : ''}`,
  );
  return Number(rows[0]!.n);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Expected {
  owner: string;
  title: string;
  greeting: string;
  state: 'started' | 'stopped' | 'destroyed';
}

/** What one run of the scenario saw from the outside. */
interface Observed {
  /** Instance requests refused (409) or left unallocated while partitions were free. */
  refusedWithCapacity: string[];
  /** Answers of 500 and above that were not a balancer's (those are sent again). */
  serverErrors: string[];
  /** Any other answer the scenario did not expect. */
  unexpected: string[];
  /** The last accepted request of each title. */
  expected: Map<string, Expected>;
  payments: Set<string>;
  /** Payments accepted on the steady invoice, each sent once (and again only when no answer came). */
  steadyPayments: Set<string>;
  reversals: Set<string>;
  credited: Set<string>;
  closes: number[];
  requests: number;
}

interface World {
  fleet: MasterFleet;
  admin: FleetClient;
  customers: { name: string; client: FleetClient }[];
  nodes: SimulatedNode[];
  invoices: { id: string; account: string; total: string }[];
  /** The invoice of a customer outside the load: small payments sent at the moment of the kill land on it. */
  steadyInvoice: string;
  /** The instances taken to have been requested before the months billed (`backdateInstances`). */
  backdated: string[];
}

/** Everything before the load: release, nodes, prices, customers with two instances each, October closed. */
async function prepare(engine: TestEngine): Promise<World> {
  const fleet = await startMasterFleet({ engine, masters: MASTERS[engine], balancer: true, lifetimeMs: FLEET_LIFETIME_MS });
  try {
    const admin = new FleetClient(fleet.url, fleet.adminToken);
    await publishGreeter(admin);
    const nodes: SimulatedNode[] = [];
    for (let n = 0; n < NODES; n++) nodes.push(await addNode(admin, `node-${n}`, PARTITIONS_PER_NODE, 60 + n));
    await expectStatus(admin.call('PUT', '/api/v1/billing/prices', { body: PRICES }), 200, 'prices');
    const customers = [];
    for (let c = 0; c < CUSTOMERS; c++) customers.push({ name: `customer-${c}`, client: await createCustomer(admin, `customer-${c}`) });
    const steady = await createCustomer(admin, 'steady');
    await expectStatus(steady.call('PUT', '/api/v1/instances/books', { body: { software: 'greeter', parameters: { greeting: 'books' } } }), 200, 'steady books');
    for (const { name, client } of customers) {
      for (let s = 0; s < SEEDS_PER_CUSTOMER; s++) {
        const view = await expectStatus(client.call('PUT', `/api/v1/instances/seed-${s}`, { body: { software: 'greeter', parameters: { greeting: 'seed' } } }), 200, `${name} seed-${s}`);
        if (!view.body.partition) throw new Error(`${name} seed-${s} was not allocated: ${view.text}`);
      }
    }
    // The nodes deploy the seeds and report five hours of October for each: the seeds are
    // taken to have been requested before October.
    const backdated = await backdateInstances(fleet.database, BEFORE_BILLED_MONTHS);
    for (const node of nodes) node.useHours(OCTOBER_HOURS, backdated);
    for (let round = 0; round < OCTOBER_HOURS.length; round++) for (const node of nodes) await node.cycle(true);
    const closed = await expectStatus(admin.call('POST', '/api/v1/billing/close', { body: { period: '2026-10' } }), 200, 'close October');
    const all = (closed.body.invoices as Body[]).map((i) => ({ id: String(i.id), account: String(i.account), total: String(i.total) }));
    if (all.length !== CUSTOMERS + 1) throw new Error(`expected ${CUSTOMERS + 1} invoices for October, got ${closed.text}`);
    for (const node of nodes) node.useHours(NOVEMBER_HOURS, backdated);
    // Room for every title the load will request, even if no destroyed partition is ever freed.
    const free = await freePartitions(fleet.database);
    if (free < CUSTOMERS * NEW_PER_CUSTOMER) throw new Error(`only ${free} free partitions for ${CUSTOMERS * NEW_PER_CUSTOMER} new titles`);
    return { fleet, admin, customers, nodes, backdated, invoices: all.filter((i) => i.account !== 'steady'), steadyInvoice: all.find((i) => i.account === 'steady')!.id };
  } catch (error) {
    await fleet.close();
    throw error;
  }
}

async function runLoad(world: World, options: { kill: boolean }): Promise<Observed> {
  const { fleet, admin, customers, nodes, invoices } = world;
  const observed: Observed = {
    refusedWithCapacity: [],
    serverErrors: [],
    unexpected: [],
    expected: new Map(),
    payments: new Set(),
    steadyPayments: new Set(),
    reversals: new Set(),
    credited: new Set(),
    closes: [],
    requests: 0,
  };
  const started = Date.now();
  const loadOver = () => Date.now() - started > LOAD_MS;
  const note = (what: string, answer: Answer) => {
    observed.requests++;
    if (answer.status >= 500) observed.serverErrors.push(`${what}: ${answer.status} ${answer.text.slice(0, 300)}`);
  };

  // Customers: each sequential on its own titles, all at once with the others.
  const customer = async (c: number) => {
    const { name, client } = customers[c]!;
    const titles: { title: string; state: 'started' | 'stopped' | 'destroyed'; seed: boolean }[] = Array.from({ length: SEEDS_PER_CUSTOMER }, (_, s) => ({
      title: `seed-${s}`,
      state: 'started' as const,
      seed: true,
    }));
    for (const t of titles) observed.expected.set(`${name}/${t.title}`, { owner: name, title: t.title, greeting: 'seed', state: 'started' });
    let created = 0;
    for (let op = 0; op < OPERATIONS_PER_CUSTOMER && !loadOver(); op++) {
      const live = titles.filter((t) => t.state !== 'destroyed');
      const pick = live[(op * 7 + c) % live.length]!;
      const kind = (c + op) % 6;
      let title = pick.title;
      let state: 'started' | 'stopped' | 'destroyed' = pick.state;
      if ((kind === 0 || kind === 3) && created < NEW_PER_CUSTOMER) {
        title = `n${created++}`;
        state = 'started';
        // Tracked once it exists: a refused creation leaves nothing to change or destroy.
        titles.push({ title, state: 'destroyed', seed: false });
      } else if (kind === 2) state = 'stopped';
      else if (kind === 4) state = 'started';
      else if (kind === 5 && !pick.seed) state = 'destroyed';
      const entry = titles.find((t) => t.title === title)!;
      const greeting = `${title}-${op}`;
      const path = `/api/v1/instances/${title}`;
      const answer =
        state === 'destroyed'
          ? await client.call('DELETE', path)
          : await client.call('PUT', path, { body: { software: 'greeter', parameters: { greeting }, state } });
      note(`${name} ${state} ${title}`, answer);
      if (answer.status === 200) {
        entry.state = state;
        const previous = observed.expected.get(`${name}/${title}`);
        // A destroy keeps the parameters the instance had.
        observed.expected.set(`${name}/${title}`, { owner: name, title, greeting: state === 'destroyed' ? previous!.greeting : greeting, state });
        if (state !== 'destroyed' && (answer.body.status === 'unallocated' || !answer.body.partition)) {
          observed.refusedWithCapacity.push(`${name} ${title}: ${answer.body.status} "${answer.body.message}"`);
        }
      } else if (answer.status === 409) {
        observed.refusedWithCapacity.push(`${name} ${state} ${title}: 409 ${answer.body.error?.message}`);
      } else if (answer.status < 500) {
        observed.unexpected.push(`${name} ${state} ${title}: ${answer.status} ${answer.text.slice(0, 300)}`);
      }
      // Paced so that the load lasts until its deadline; around the kill, back to back, so
      // that the killed master has requests of every customer in flight.
      const sinceKill = Date.now() - (started + KILL_AT_MS);
      if (!options.kill || sinceKill < -300 || sinceKill > 700) await sleep(60 + ((c * 13 + op * 7) % 60));
    }
  };

  // Nodes: poll and report until the customers are done.
  let customersDone = false;
  const node = async (n: SimulatedNode) => {
    while (!customersDone) {
      try {
        await n.cycle(true);
      } catch (error) {
        observed.serverErrors.push(`${n.name}: ${(error as Error).message}`);
      }
      await sleep(30 + Math.random() * 50);
    }
  };

  // The operator: payments (each with its own idempotency key), credit notes and
  // reversals racing on the same invoices, in three waves.
  const pay = async (invoice: string, amount: string) => {
    const answer = await admin.call('POST', '/api/v1/billing/payments', { body: { invoice, amount }, headers: { 'idempotency-key': randomUUID() } });
    note(`pay ${amount} on ${invoice}`, answer);
    if (answer.status === 201) observed.payments.add(String(answer.body.id));
    else if (answer.status !== 409 && answer.status < 500) observed.unexpected.push(`pay ${amount} on ${invoice}: ${answer.status} ${answer.text.slice(0, 300)}`);
    return answer;
  };
  const credit = async (invoice: string) => {
    const answer = await admin.call('POST', `/api/v1/billing/invoices/${invoice}/credit`, { body: { reason: 'service outage' } });
    note(`credit ${invoice}`, answer);
    if (answer.status === 201) observed.credited.add(invoice);
    else if (answer.status !== 200 && answer.status !== 409 && answer.status < 500) observed.unexpected.push(`credit ${invoice}: ${answer.status} ${answer.text.slice(0, 300)}`);
    return answer;
  };
  const reverse = async (payment: string) => {
    const answer = await admin.call('POST', `/api/v1/billing/payments/${payment}/reverse`, { body: { reason: 'sent twice' } });
    note(`reverse ${payment}`, answer);
    if (answer.status === 201) observed.reversals.add(String(answer.body.id));
    else if (answer.status !== 409 && answer.status !== 404 && answer.status < 500) observed.unexpected.push(`reverse ${payment}: ${answer.status} ${answer.text.slice(0, 300)}`);
    return answer;
  };
  const billing = async () => {
    await sleep(500);
    const wave1: Promise<Answer>[] = [];
    const partial: Record<string, Promise<Answer>[]> = {};
    invoices.forEach((invoice, i) => {
      const total = minorUnits(invoice.total);
      if (i % 3 === 0) wave1.push(pay(invoice.id, invoice.total), pay(invoice.id, invoice.total), pay(invoice.id, invoice.total), credit(invoice.id));
      else if (i % 3 === 1) partial[invoice.id] = Array.from({ length: 4 }, () => pay(invoice.id, formatMinor((total * 4n) / 10n)));
      else wave1.push(credit(invoice.id), pay(invoice.id, invoice.total), pay(invoice.id, invoice.total));
    });
    await Promise.all([...wave1, ...Object.values(partial).flat()]);
    await sleep(LOAD_MS / 3);
    // Reverse the partial payments while paying what is left, and reverse each twice at once.
    const wave2: Promise<Answer>[] = [];
    for (const [invoice, answers] of Object.entries(partial)) {
      const accepted = (await Promise.all(answers)).filter((a) => a.status === 201);
      const left = invoices.find((i) => i.id === invoice)!;
      for (const a of accepted) wave2.push(reverse(String(a.body.id)), reverse(String(a.body.id)));
      wave2.push(pay(invoice, formatMinor(minorUnits(left.total) / 5n)));
    }
    await Promise.all(wave2);
    await sleep(LOAD_MS / 3);
    // Whatever each invoice owes now, paid twice at once, and a credit note racing them.
    const wave3: Promise<Answer>[] = [];
    for (const [i, invoice] of invoices.entries()) {
      const view = await admin.call('GET', `/api/v1/billing/invoices/${invoice.id}`);
      if (view.status !== 200) continue;
      if (minorUnits(String(view.body.outstanding)) > 0n) wave3.push(pay(invoice.id, String(view.body.outstanding)), pay(invoice.id, String(view.body.outstanding)));
      if (i % 3 === 1) wave3.push(credit(invoice.id));
    }
    await Promise.all(wave3);
  };

  // November closed in the middle of the load, twice at once, while its usage still arrives.
  const close = async () => {
    await sleep(LOAD_MS / 2);
    const answers = await Promise.all([0, 1].map(() => admin.call('POST', '/api/v1/billing/close', { body: { period: '2026-11' } })));
    for (const a of answers) {
      note('close November', a);
      observed.closes.push(a.status);
      if (a.status !== 200 && a.status !== 409 && a.status < 500) observed.unexpected.push(`close November: ${a.status} ${a.text.slice(0, 300)}`);
    }
  };

  // At the kill (or at the same moment without one): small payments on the steady
  // invoice, each with its own idempotency key, in flight on every master. A POST a master
  // died under is a 502 that the client sends again with the same key: each must be
  // recorded once, whether or not its first try had committed.
  const kill = async () => {
    await sleep(KILL_AT_MS);
    const payments = Array.from({ length: 12 }, async () => {
      const answer = await admin.call('POST', '/api/v1/billing/payments', { body: { invoice: world.steadyInvoice, amount: '0.01' }, headers: { 'idempotency-key': randomUUID() } });
      note('pay 0.01 on the steady invoice', answer);
      if (answer.status === 201) observed.steadyPayments.add(String(answer.body.id));
      else if (answer.status < 500) observed.unexpected.push(`pay 0.01 on the steady invoice: ${answer.status} ${answer.text.slice(0, 300)}`);
    });
    if (options.kill) {
      await sleep(3);
      await fleet.masters[1]!.stop('SIGKILL');
    }
    await Promise.all(payments);
  };

  const nodeLoops = nodes.map(node);
  await Promise.all([...customers.map((_, c) => customer(c)), billing(), close(), kill()]);
  customersDone = true;
  await Promise.all(nodeLoops);
  // The nodes converge: everything they were last asked for is reported (no more usage).
  for (let round = 0; round < 3; round++) for (const n of nodes) await n.cycle(false);
  return observed;
}

/** Reads the database once the masters are stopped, and lists what breaks the ledger's promises. */
async function inspect(world: World, observed: Observed) {
  const { fleet } = world;
  const database = fleet.database;
  const live = await snapshotProjections(database);
  const rebuild = fleet.cli(['master', 'rebuild', '--database', database, '--json']);
  if (rebuild.exitCode !== 0) throw new Error(`master rebuild failed: ${rebuild.stderr}`);
  await backdateInstances(database, BEFORE_BILLED_MONTHS, world.backdated);
  const rebuilt = await snapshotProjections(database);

  const instances = await query(database, 'select a.name as owner, i.title, i.parameters, i.state, i.partition_id from instances i join accounts a on a.id = i.owner_id');
  const notReflected: string[] = [];
  for (const [key, want] of observed.expected) {
    const row = instances.find((i) => i.owner === want.owner && i.title === want.title);
    if (!row) {
      notReflected.push(`${key}: accepted, but no such instance`);
      continue;
    }
    const greeting = (JSON.parse(String(row.parameters)) as { greeting?: string }).greeting;
    if (row.state !== want.state || greeting !== want.greeting) notReflected.push(`${key}: accepted ${want.state} "${want.greeting}", holds ${String(row.state)} "${greeting}"`);
  }
  const unallocated = instances.filter((i) => i.state !== 'destroyed' && i.partition_id === null).map((i) => `${String(i.owner)}/${String(i.title)} has no partition`);
  const paymentIds = new Set((await query(database, 'select id from payments')).map((p) => String(p.id)));
  for (const id of [...observed.payments, ...observed.reversals]) if (!paymentIds.has(id)) notReflected.push(`payment ${id}: accepted, not recorded`);
  const creditIds = new Set((await query(database, 'select invoice_id from credit_notes')).map((c) => String(c.invoice_id)));
  for (const id of observed.credited) if (!creditIds.has(id)) notReflected.push(`credit note on ${id}: accepted, not recorded`);
  const steady = await query(database, `select id from payments where invoice_id = '${world.steadyInvoice}'`);
  if (steady.length !== observed.steadyPayments.size) {
    notReflected.push(`steady invoice: ${observed.steadyPayments.size} payments accepted (each sent until answered), ${steady.length} recorded`);
  }
  const periods = await query(database, "select period from billing_periods where period = '2026-11'");

  return {
    projectionsDifferFromRebuild: snapshotDifferences(live, rebuilt),
    invoices: await invoiceViolations(database),
    partitions: await partitionViolations(database),
    journal: await journalViolations(database),
    refusedWithCapacity: [...observed.refusedWithCapacity, ...unallocated],
    notReflected,
    serverErrors: observed.serverErrors,
    unexpectedAnswers: observed.unexpected,
    novemberClosed: periods.length === 1,
  };
}

const clean = {
  projectionsDifferFromRebuild: [],
  invoices: [],
  partitions: [],
  journal: [],
  refusedWithCapacity: [],
  notReflected: [],
  serverErrors: [],
  unexpectedAnswers: [],
  novemberClosed: true,
};

describe.each(testEngines())('the ledger under concurrent load on %s', (engine) => {
  for (const kill of [false, true]) {
    describe(kill ? `${MASTERS[engine]} masters, one killed with SIGKILL mid-load` : `${MASTERS[engine]} masters`, () => {
      let world: World | undefined;
      afterAll(async () => {
        await world?.fleet.close();
      });

      it('holds every promise of the ledger once the masters are stopped', async () => {
        world = await prepare(engine);
        const observed = await runLoad(world, { kill });
        // Each master took its share: the balancer spread the load.
        for (const m of world.fleet.masters) expect(m.answered(), `master ${m.index} answered no request`).toBeGreaterThan(0);
        if (kill) expect(world.fleet.masters[1]!.alive()).toBe(false);
        const problems = world.fleet.masters.flatMap((m) => m.problems().slice(0, 3).map((p) => `master ${m.index}: ${p.slice(0, 400)}`));
        await world.fleet.stopMasters();
        const findings = await inspect(world, observed);
        expect(observed.requests).toBeGreaterThan(100);
        const summary = {
          requests: observed.requests,
          retried: world.admin.stats,
          paymentsAccepted: observed.payments.size,
          reversalsAccepted: observed.reversals.size,
          credited: observed.credited.size,
          closes: observed.closes,
          nodes: world.nodes.map((n) => `${n.name}: ${n.tally.polls} polls (${n.tally.notModified} not modified), ${n.tally.eventsSent} events sent, ${n.tally.refused} refused`),
          answeredPerMaster: world.fleet.masters.map((m) => m.answered()),
        };
        expect(findings, `${JSON.stringify(summary)}\nthe masters logged:\n${problems.join('\n')}`).toEqual(clean);
      }, 120_000);
    });
  }
});

describe.each(testEngines())('focused races on %s', (engine) => {
  let fleet: MasterFleet;
  let admin: FleetClient;
  let invoices: { id: string; account: string; total: string }[];
  let serialsNode: SimulatedNode;
  let backdated: string[] = [];
  const PAYERS = 8;

  beforeAll(async () => {
    fleet = await startMasterFleet({ engine, masters: MASTERS[engine], balancer: true, lifetimeMs: FLEET_LIFETIME_MS });
    admin = new FleetClient(fleet.url, fleet.adminToken);
    await publishGreeter(admin);
    await addNode(admin, 'ten', 10, 70);
    await addNode(admin, 'one', 1, 71);
    serialsNode = await addNode(admin, 'serials', 4, 73);
    const billingNode = await addNode(admin, 'billing', PAYERS, 72);
    await expectStatus(admin.call('PUT', '/api/v1/billing/prices', { body: PRICES }), 200, 'prices');
    for (let p = 0; p < PAYERS; p++) {
      const customer = await createCustomer(admin, `payer-${p}`);
      await expectStatus(customer.call('PUT', '/api/v1/instances/web', { body: { software: 'greeter', sla: { node: 'billing' } } }), 200, `payer-${p} web`);
    }
    billingNode.useHours(OCTOBER_HOURS, (backdated = await backdateInstances(fleet.database, BEFORE_BILLED_MONTHS)));
    for (let round = 0; round < OCTOBER_HOURS.length; round++) await billingNode.cycle(true);
    const closed = await expectStatus(admin.call('POST', '/api/v1/billing/close', { body: { period: '2026-10' } }), 200, 'close October');
    invoices = (closed.body.invoices as Body[]).map((i) => ({ id: String(i.id), account: String(i.account), total: String(i.total) }));
    expect(invoices).toHaveLength(PAYERS);
  }, 120_000);

  afterAll(async () => {
    await fleet?.close();
  });

  const payments = async (invoice: string) => (await query(fleet.database, `select id, amount from payments where invoice_id = '${invoice}'`)).length;

  it('gives each of 10 customers requesting at once a partition of a node with exactly 10 free', async () => {
    const customers = await Promise.all(Array.from({ length: 10 }, (_, c) => createCustomer(admin, `rush-${c}`)));
    expect(await freePartitions(fleet.database, 'ten')).toBe(10);
    const answers = await Promise.all(customers.map((c) => c.call('PUT', '/api/v1/instances/mine', { body: { software: 'greeter', sla: { node: 'ten' } } })));
    expect(answers.map((a) => `${a.status} ${a.body.status ?? a.body.error?.message}`)).toEqual(Array.from({ length: 10 }, () => '200 allocated'));
    expect(new Set(answers.map((a) => a.body.partition)).size).toBe(10);
    expect(await freePartitions(fleet.database, 'ten')).toBe(0);
  });

  it('answers 50 identical requests for one new title alike, naming one instance', async () => {
    const customer = await createCustomer(admin, 'twin');
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => customer.call('PUT', '/api/v1/instances/only', { body: { software: 'greeter', parameters: { greeting: 'same' }, sla: { node: 'one' } } })),
    );
    expect(answers.filter((a) => a.status !== 200).map((a) => `${a.status} ${a.body.error?.message}`)).toEqual([]);
    expect(new Set(answers.map((a) => `${a.body.node}/${a.body.partition}`))).toEqual(new Set(['one/part0']));
    const rows = await query(fleet.database, "select i.id from instances i join accounts a on a.id = i.owner_id where a.name = 'twin'");
    expect(rows).toHaveLength(1);
  });

  it('accepts exactly one of 50 concurrent payments of the full amount on one invoice', async () => {
    const invoice = invoices[0]!;
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => admin.call('POST', '/api/v1/billing/payments', { body: { invoice: invoice.id, amount: invoice.total }, headers: { 'idempotency-key': randomUUID() } })),
    );
    const statuses = answers.map((a) => a.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.filter((s) => s !== 201 && s !== 409)).toEqual([]);
    expect(await payments(invoice.id)).toBe(1);
  });

  it('accepts exactly one of a payment and a credit note sent at once, on each of several invoices', async () => {
    const raced = invoices.slice(1, 6);
    const outcomes = await Promise.all(
      raced.map(async (invoice) => {
        const [payment, credit] = await Promise.all([
          admin.call('POST', '/api/v1/billing/payments', { body: { invoice: invoice.id, amount: invoice.total }, headers: { 'idempotency-key': randomUUID() } }),
          admin.call('POST', `/api/v1/billing/invoices/${invoice.id}/credit`, { body: { reason: 'race' } }),
        ]);
        const accepted = [payment.status === 201 ? 'payment' : null, credit.status === 201 ? 'credit note' : null].filter(Boolean);
        return `${invoice.id}: ${accepted.join(' and ') || 'neither'} accepted (${payment.status}, ${credit.status})`;
      }),
    );
    for (const outcome of outcomes) expect(outcome).toMatch(/: (payment|credit note) accepted/);
    expect(await invoiceViolations(fleet.database)).toEqual([]);
  });

  it('records one payment for a payment sent twice with one idempotency key, and answers the first result twice', async () => {
    const invoice = invoices[6]!;
    const half = formatMinor(minorUnits(invoice.total) / 2n);
    const key = randomUUID();
    const send = () => admin.call('POST', '/api/v1/billing/payments', { body: { invoice: invoice.id, amount: half }, headers: { 'idempotency-key': key } });
    const first = await send();
    const again = await send();
    expect(first.status).toBe(201);
    expect({ status: again.status, body: again.body }).toEqual({ status: first.status, body: first.body });
    expect(await payments(invoice.id)).toBe(1);

    // Sent at once (a client that timed out and retried while the first was under way).
    const other = invoices[7]!;
    const burstKey = randomUUID();
    const burst = await Promise.all(
      Array.from({ length: 5 }, () =>
        admin.call('POST', '/api/v1/billing/payments', { body: { invoice: other.id, amount: formatMinor(minorUnits(other.total) / 4n) }, headers: { 'idempotency-key': burstKey } }),
      ),
    );
    // Those answered while the first was under way may be told to try again; those answered 201 all name the one payment.
    expect(burst.filter((a) => a.status !== 201 && a.status !== 409).map((a) => `${a.status} ${a.text}`)).toEqual([]);
    expect(new Set(burst.filter((a) => a.status === 201).map((a) => a.body.id)).size).toBe(1);
    expect(await payments(other.id)).toBe(1);
  });

  // Last of this group: it stops the masters to rebuild.
  it('never lets a report about an older serial override a newer request: the projections equal a rebuild', async () => {
    const customer = await createCustomer(admin, 'changer');
    const titles = ['a', 'b', 'c', 'd'];
    for (const t of titles) await expectStatus(customer.call('PUT', `/api/v1/instances/${t}`, { body: { software: 'greeter', parameters: { greeting: 'v0' }, sla: { node: 'serials' } } }), 200, t);
    // Each round: the node reports what it pulled while the customer raises every serial.
    for (let round = 1; round <= 25; round++) {
      const puts = titles.map((t) => customer.call('PUT', `/api/v1/instances/${t}`, { body: { software: 'greeter', parameters: { greeting: `v${round}` }, state: round % 2 ? 'stopped' : 'started', sla: { node: 'serials' } } }));
      const [answers] = await Promise.all([Promise.all(puts), serialsNode.cycle(false)]);
      expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200]);
    }
    await serialsNode.cycle(false);
    await fleet.stopMasters();
    const live = await snapshotProjections(fleet.database);
    const rebuild = fleet.cli(['master', 'rebuild', '--database', fleet.database, '--json']);
    expect(rebuild.stderr).toBe('');
    await backdateInstances(fleet.database, BEFORE_BILLED_MONTHS, backdated);
    expect(snapshotDifferences(live, await snapshotProjections(fleet.database))).toEqual([]);
  });
});
