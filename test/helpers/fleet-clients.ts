/**
 * Clients of a master fleet over real HTTP: a JSON client that retries what a load
 * balancer in front of a dying master answers, the setup an operator does (a release,
 * nodes laid out and supplied, prices), and simulated nodes that pull their desired
 * state and report what a node agent would, with their own credentials.
 *
 * Imports nothing from vitest, so the request benchmark can use it too.
 */
import { createHash } from 'node:crypto';
import type { DesiredState, NodeEvent } from '../../protocol/api.js';
import { packSoftware } from '../../protocol/software-archive.js';
import { greeterRelease, writeTree } from './tree.js';

// Answers are checked field by field by the tests: typing each one adds nothing.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Body = Record<string, any>;

export interface Answer {
  status: number;
  body: Body;
  text: string;
  headers: Headers;
  /** How many times it was sent: more than one when a master died under it. */
  attempts: number;
}

export interface CallOptions {
  body?: unknown;
  raw?: Buffer;
  contentType?: string;
  headers?: Record<string, string>;
  /** Send again on a network error or a 502/503/504 (what a balancer answers for a dead master). */
  retry?: boolean;
}

/**
 * What the client counts: a request that needed retries means a master died under it
 * (or the balancer had not noticed yet), which the kill test expects and the others do not.
 */
export interface ClientStats {
  retried: number;
  networkErrors: number;
  gatewayErrors: number;
}

export class FleetClient {
  readonly stats: ClientStats = { retried: 0, networkErrors: 0, gatewayErrors: 0 };

  constructor(
    readonly url: string,
    readonly token: string,
    private readonly maxAttempts = 30,
  ) {}

  as(token: string): FleetClient {
    const other = new FleetClient(this.url, token, this.maxAttempts);
    // One tally for every identity of one scenario.
    (other as { stats: ClientStats }).stats = this.stats;
    return other;
  }

  async call(method: string, path: string, options: CallOptions = {}): Promise<Answer> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}`, ...options.headers };
    let payload: string | Buffer | undefined;
    if (options.raw) {
      payload = options.raw;
      headers['content-type'] = options.contentType ?? 'application/octet-stream';
    } else if (options.body !== undefined) {
      payload = JSON.stringify(options.body);
      headers['content-type'] = 'application/json';
    }
    const retry = options.retry ?? true;
    for (let attempt = 1; ; attempt++) {
      let response: Response;
      try {
        response = await fetch(`${this.url}${path}`, { method, headers, body: payload, signal: AbortSignal.timeout(30_000) });
      } catch (error) {
        this.stats.networkErrors++;
        if (!retry || attempt >= this.maxAttempts) throw new Error(`${method} ${path}: ${(error as Error).message} after ${attempt} attempts`, { cause: error });
        this.stats.retried++;
        await pause(attempt);
        continue;
      }
      const text = await response.text();
      if (retry && [502, 503, 504].includes(response.status) && attempt < this.maxAttempts) {
        this.stats.gatewayErrors++;
        this.stats.retried++;
        await pause(attempt);
        continue;
      }
      let body: Body = {};
      try {
        body = text ? (JSON.parse(text) as Body) : {};
      } catch {
        // not JSON
      }
      return { status: response.status, body, text, headers: response.headers, attempts: attempt };
    }
  }
}

function pause(attempt: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.min(1000, 50 * attempt) + Math.random() * 50));
}

export async function expectStatus(answer: Promise<Answer> | Answer, status: number, what: string): Promise<Answer> {
  const a = await answer;
  if (a.status !== status) throw new Error(`${what}: expected ${status}, got ${a.status}: ${a.text.slice(0, 500)}`);
  return a;
}

/** Publishes the small `greeter` test release. */
export async function publishGreeter(admin: FleetClient): Promise<void> {
  const archive = await packSoftware(writeTree(greeterRelease()));
  const published = await admin.call('POST', '/api/v1/software', { raw: archive, contentType: 'application/gzip' });
  if (published.status !== 201 && published.status !== 200) throw new Error(`publish failed: ${published.status} ${published.text}`);
}

export async function createCustomer(admin: FleetClient, name: string): Promise<FleetClient> {
  const created = await expectStatus(admin.call('POST', '/api/v1/accounts', { body: { name } }), 201, `account ${name}`);
  return admin.as(created.body.token as string);
}

/** A node registered, laid out with `partitions` partitions on 127.`block`.x.y, and supplied with greeter. */
export async function addNode(admin: FleetClient, name: string, partitions: number, block: number): Promise<SimulatedNode> {
  const registered = await expectStatus(admin.call('POST', '/api/v1/nodes', { body: { name } }), 201, `node ${name}`);
  const node = new SimulatedNode(name, admin.as(registered.body.credential as string));
  const layout = Array.from({ length: partitions }, (_, i) => ({
    reference: `part${i}`,
    ip: `127.${block}.${Math.floor(i / 250)}.${(i % 250) + 1}`,
    ports: { first: 20000 + i * 10, last: 20009 + i * 10 },
  }));
  await expectStatus(node.client.call('PUT', '/api/v1/node/partitions', { body: { partitions: layout } }), 200, `format ${name}`);
  await expectStatus(admin.call('POST', '/api/v1/supplies', { body: { software: 'greeter', node: name } }), 200, `supply ${name}`);
  return node;
}

export interface NodeTally {
  polls: number;
  notModified: number;
  eventsSent: number;
  /** Events the master refused (4xx): a real node logs and drops them. */
  refused: number;
  refusals: string[];
}

/**
 * A node that behaves as the agent does over the wire: it pulls its desired state with
 * its ETag, and for each partition whose instance or serial changed it reports what
 * a deployment ends with (started with connection parameters and promises, stopped,
 * destroyed), then usage for hours that are over. Each event has an id of its own;
 * a batch is sometimes sent twice (at-least-once delivery) to check the master applies
 * each id once. Events are sent in batches as the outbox does; a refused batch is
 * resent one event at a time and what is still refused is dropped, as the agent does.
 */
export class SimulatedNode {
  readonly tally: NodeTally = { polls: 0, notModified: 0, eventsSent: 0, refused: 0, refusals: [] };
  private etag: string | null = null;
  private state: DesiredState | null = null;
  /** `instance id` → `serial/state` last reported for it. */
  private readonly reported = new Map<string, string>();
  /** `instance id` → the next usage hour to send, as an index into `usageHours`. */
  private readonly usageNext = new Map<string, number>();
  private counter = 0;
  private lastBatch: NodeEvent[] = [];

  constructor(
    readonly name: string,
    readonly client: FleetClient,
    /** Hours (ISO, start of hour, all ended) this node reports usage for, one more per instance and cycle. */
    public usageHours: string[] = [],
  ) {}

  /** Instances usage is reported for; all when null. */
  private usageOf: ReadonlySet<string> | null = null;

  /**
   * Reports usage for these hours from now on, from the first, for every instance or
   * those of `only` (an instance requested after them never ran in them: the master
   * would refuse their usage).
   */
  useHours(hours: string[], only?: Iterable<string>): void {
    this.usageHours = hours;
    this.usageOf = only ? new Set(only) : null;
    this.usageNext.clear();
  }

  /** The instances on this node at its last poll: id, partition, serial, state. */
  hosted(): { id: string; partition: string; serial: number; state: string; title: string }[] {
    return (this.state?.partitions ?? [])
      .filter((p) => p.instance)
      .map((p) => ({ id: p.instance!.id, partition: p.reference, serial: p.instance!.serial, state: p.instance!.state, title: p.instance!.title }));
  }

  async poll(): Promise<boolean> {
    const answer = await this.client.call('GET', '/api/v1/node/desired-state', { headers: this.etag ? { 'if-none-match': this.etag } : {} });
    this.tally.polls++;
    if (answer.status === 304) {
      this.tally.notModified++;
      return false;
    }
    if (answer.status !== 200) throw new Error(`node ${this.name}: desired state answered ${answer.status}: ${answer.text.slice(0, 300)}`);
    this.state = answer.body as DesiredState;
    this.etag = answer.headers.get('etag');
    return true;
  }

  private eventId(): string {
    return `${this.name.replace(/[^A-Za-z0-9_-]/g, '')}-${(this.counter++).toString(36).padStart(6, '0')}`;
  }

  /** The events a converged node would send now, from its last poll. */
  pendingEvents(withUsage: boolean): NodeEvent[] {
    const at = new Date().toISOString();
    const events: NodeEvent[] = [];
    for (const p of this.state?.partitions ?? []) {
      const instance = p.instance;
      if (!instance) continue;
      const key = `${instance.serial}/${instance.state}`;
      if (this.reported.get(instance.id) !== key) {
        const base = { at, partition: p.reference, instance: instance.id, serial: instance.serial };
        if (instance.state === 'started') {
          events.push({ ...base, id: this.eventId(), type: 'instance.started', connection: { url: `http://${p.ip}:${p.ports.first}/`, greeting: String(instance.parameters.greeting ?? '') } });
          events.push({ ...base, id: this.eventId(), type: 'instance.promises', promises: [{ name: 'listening', status: 'ok', message: 'tcp port open', since: at }] });
        } else if (instance.state === 'stopped') {
          events.push({ ...base, id: this.eventId(), type: 'instance.stopped' });
        } else {
          events.push({ ...base, id: this.eventId(), type: 'instance.destroyed' });
        }
        this.reported.set(instance.id, key);
      }
      if (withUsage && instance.state !== 'destroyed' && (this.usageOf === null || this.usageOf.has(instance.id))) {
        const next = this.usageNext.get(instance.id) ?? 0;
        const hour = this.usageHours[next];
        if (hour) {
          this.usageNext.set(instance.id, next + 1);
          events.push({
            // Derived from the instance and the hour, as the agent's are: a resend is recognised.
            id: `u${createHash('sha256').update(`${instance.id}/${hour}`).digest('hex').slice(0, 40)}`,
            at,
            type: 'instance.usage',
            partition: p.reference,
            instance: instance.id,
            hour,
            cpuMilliseconds: 1000 + next,
            memoryByteSeconds: 3600 * 64 * 1024 * 1024,
            diskByteSeconds: 3600 * 10 * 1024 * 1024,
            uptimeSeconds: instance.state === 'started' ? 3600 : 0,
          });
        }
      }
    }
    return events;
  }

  async send(events: NodeEvent[]): Promise<void> {
    for (let i = 0; i < events.length; i += 50) {
      const batch = events.slice(i, i + 50);
      const answer = await this.client.call('POST', '/api/v1/node/events', { body: { events: batch } });
      this.tally.eventsSent += batch.length;
      if (answer.status === 200) continue;
      if (answer.status >= 500) throw new Error(`node ${this.name}: events answered ${answer.status}: ${answer.text.slice(0, 300)}`);
      // One refused event refuses its batch: find it, drop it, deliver the rest.
      for (const event of batch.length > 1 ? batch : []) {
        const one = await this.client.call('POST', '/api/v1/node/events', { body: { events: [event] } });
        if (one.status >= 500) throw new Error(`node ${this.name}: event answered ${one.status}: ${one.text.slice(0, 300)}`);
        if (one.status !== 200) this.refuse(one.text);
      }
      if (batch.length === 1) this.refuse(answer.text);
    }
    this.lastBatch = events;
  }

  private refuse(text: string): void {
    this.tally.refused++;
    if (this.tally.refusals.length < 20) this.tally.refusals.push(text.slice(0, 300));
  }

  /** One cycle: poll, report what changed (and usage), and now and then deliver the last batch again. */
  async cycle(withUsage = true): Promise<void> {
    await this.poll();
    const events = this.pendingEvents(withUsage);
    if (events.length > 0) await this.send(events);
    else if (this.lastBatch.length > 0 && this.counter % 3 === 0) {
      // At-least-once delivery: the same ids again must change nothing.
      await this.send(this.lastBatch);
      this.lastBatch = [];
    }
  }
}

/** Minor units of a decimal amount string: '12.30' → 1230n (2 decimals). */
export function minorUnits(amount: string, decimals = 2): bigint {
  const negative = amount.startsWith('-');
  const [whole, fraction = ''] = amount.replace('-', '').split('.');
  const value = BigInt(whole!) * 10n ** BigInt(decimals) + BigInt((fraction + '0'.repeat(decimals)).slice(0, decimals) || '0');
  return negative ? -value : value;
}

export function formatMinor(value: bigint, decimals = 2): string {
  const negative = value < 0n;
  const abs = negative ? -value : value;
  const unit = 10n ** BigInt(decimals);
  return `${negative ? '-' : ''}${abs / unit}.${(abs % unit).toString().padStart(decimals, '0')}`;
}
