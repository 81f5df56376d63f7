/**
 * Events are delivered at least once. Each one is written to the outbox (a table of
 * the node's SQLite database) before it is sent, and leaves it only when the master has
 * acknowledged its id (applied now or before). The master applies each id once, so a
 * resend after a lost answer is harmless, and a node without its master loses nothing.
 *
 * While the master is unreachable, a caller that runs often (the daemon) asks for the
 * retry delay to be respected: it doubles at each failure up to a cap, with jitter, so
 * that a fleet coming back does not hit its master in the same second.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import type { BangEvent, EventsReceipt, InstanceEvent, NodeEvent, PromisesEvent, SetAsideReport, SoftwareEvent } from '../protocol/api.js';
import type { MasterClient } from '../protocol/client.js';
import { PledgerError } from '../protocol/errors.js';
import { OUTBOX_DEFAULTS, outboxSettings, type NodeConfig, type OutboxSettings } from './config.js';
import { errorMessage, randomToken } from './files.js';
import type { Logger } from './log.js';
import { openNodeDatabase, readMeta, writeMeta, type NodeDatabase } from './node-db.js';
import { legacyOutboxPath, nodeDatabasePath } from './paths.js';
import { checkValue } from './validate.js';
import * as validators from './validators.generated.js';

/** The master refuses bigger batches. */
const BATCH_SIZE = 500;
const MAX_MESSAGE_CHARS = 16000;

type Distribute<T> = T extends unknown ? Omit<T, 'id' | 'at'> : never;
export type EventFields = Distribute<InstanceEvent> | Distribute<SoftwareEvent> | Distribute<PromisesEvent> | Distribute<BangEvent>;

/** Gives an event its own id and time. Long messages are cut from the front: the end of a log says why. */
export function newEvent(fields: EventFields): NodeEvent {
  const event = { id: randomToken(16), at: new Date().toISOString(), ...fields } as NodeEvent;
  if ('message' in event && event.message && event.message.length > MAX_MESSAGE_CHARS) event.message = `...${event.message.slice(-MAX_MESSAGE_CHARS)}`;
  return event;
}

export interface FlushResult {
  sent: number;
  pending: number;
  /** True when the master could not be reached (or is waited for): the events wait for the next run. */
  offline: boolean;
  /** Events the master refused for good, kept aside (see `Outbox`): present when there are any. */
  setAside?: number;
}

export interface FlushOptions {
  /** Send only when the retry delay after the last unreachable master has passed. */
  respectRetryDelay?: boolean;
}


/** What one delivery attempt learnt about the events of a batch. */
interface Outcome {
  /** Acknowledged by the master: applied now or before. */
  delivered: Set<string>;
  /** Refused on its own for a lasting reason, with the master's reason. */
  refused: Map<string, { event: NodeEvent; reason: string }>;
  /**
   * Events the master failed on (500) when sent alone: counted as refused only when
   * others were delivered in the same run, which shows the failure is the event's.
   */
  failedAlone: Map<string, { event: NodeEvent; reason: string }>;
  /** Events failed alone since the last delivery: two in a row, and the master itself is failing. */
  failuresInARow: number;
}

const RETRY_FAILURES = 'outbox.failures';
const RETRY_NEXT_AT = 'outbox.nextAttemptAt';
/** How many set-aside events the master last acknowledged hearing of. */
const SET_ASIDE_REPORTED = 'outbox.setAsideReported';

/** The node's outbox, in its database under the node root. */
export function openOutbox(config: NodeConfig): Outbox {
  return new Outbox(nodeDatabasePath(config.root), outboxSettings(config), legacyOutboxPath(config.root));
}

export class Outbox {
  private db: NodeDatabase | undefined;

  /**
   * `file` is the node database; an outbox file of the first versions (JSON lines,
   * `legacyFile`) is imported into it once and removed.
   */
  constructor(
    private readonly file: string,
    private readonly settings: OutboxSettings = OUTBOX_DEFAULTS,
    private readonly legacyFile?: string,
  ) {}

  /** The database, opened at first use and kept open for the life of the outbox. */
  get database(): NodeDatabase {
    if (!this.db) {
      this.db = openNodeDatabase(this.file);
      if (this.legacyFile) this.importLegacy(this.legacyFile);
    }
    return this.db;
  }

  close(): void {
    this.db?.close();
    this.db = undefined;
  }

  async add(event: NodeEvent): Promise<void> {
    this.addNow(event);
    return Promise.resolve();
  }

  /** Synchronous, so that callers can queue an event inside their own transaction. Adding an id again is a no-op. */
  addNow(event: NodeEvent): void {
    this.database.prepare('INSERT INTO outbox (id, body, queued_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING').run(event.id, JSON.stringify(event), Date.now());
  }

  async pending(): Promise<NodeEvent[]> {
    return Promise.resolve(this.pendingNow());
  }

  pendingNow(limit = -1): NodeEvent[] {
    const rows = this.database.prepare('SELECT body FROM outbox ORDER BY seq LIMIT ?').all(limit) as { body: string }[];
    return rows.map((row) => JSON.parse(row.body) as NodeEvent);
  }

  count(): number {
    return (this.database.prepare('SELECT count(*) AS n FROM outbox').get() as { n: number }).n;
  }

  /**
   * Sends every pending event in batches and removes those the master acknowledged.
   *
   * The master refuses a batch whole when one event is wrong (an instance it has freed
   * meanwhile, a field it cannot take). A batch refused for a lasting reason (a 4xx other
   * than a bad credential, a rate limit or TOO_EARLY) is split in halves and each half
   * sent again, down to the event refused on its own: so the others flow, at a cost of a
   * few requests per bad event. That event stays in the outbox and is sent alone again
   * once `refusedRetryMs` has passed (in case the refusal was the master's passing state);
   * at its `setAsideAfter`th refusal it is set aside: moved, whole, to a table of its own, logged,
   * and reported to the master, which shows the count and the last reason in
   * `pledger node list`. Nothing is thrown away.
   *
   * A batch the master fails on (500) is halved the same way: an event that fails alone
   * while others of the run are delivered meets a bug of the master, and is counted like
   * a refusal; two failing alone in a row with nothing delivered between stop the run.
   * Anything else (master unreachable, 503, 401) stops the delivery, keeping every event
   * for the next run.
   */
  async flush(master: MasterClient, log: Logger, options: FlushOptions = {}): Promise<FlushResult> {
    if (options.respectRetryDelay && Date.now() < Number(readMeta(this.database, RETRY_NEXT_AT) ?? 0)) {
      return this.result(0, true);
    }
    let sent = 0;
    let stopped: unknown;
    // Read in order from a moving cursor, so that events added meanwhile are sent too and
    // an event refused in this run is not tried again in it.
    let after = 0;
    for (;;) {
      const rows = this.database
        .prepare(
          'SELECT o.seq, o.body, coalesce(r.refusals, 0) AS refusals, coalesce(r.refused_at, 0) AS refused_at FROM outbox o LEFT JOIN outbox_refusals r ON r.id = o.id WHERE o.seq > ? ORDER BY o.seq LIMIT ?',
        )
        .all(after, BATCH_SIZE) as { seq: number; body: string; refusals: number; refused_at: number }[];
      if (rows.length === 0) break;
      after = rows[rows.length - 1]!.seq;
      const outcome: Outcome = { delivered: new Set(), refused: new Map(), failedAlone: new Map(), failuresInARow: 0 };
      // An event refused before goes alone, so that it does not take a whole batch down
      // again, and only once its wait is over: a refusal that passes (a busy database)
      // passes within it, and the runs between do not all count against the event.
      const due = Date.now() - this.settings.refusedRetryMs;
      const suspects = rows.filter((row) => row.refusals > 0 && row.refused_at <= due).map((row) => [JSON.parse(row.body) as NodeEvent]);
      const rest = rows.filter((row) => row.refusals === 0).map((row) => JSON.parse(row.body) as NodeEvent);
      // The others first: two suspects failing in a row must not stop the run before them.
      for (const batch of [...(rest.length > 0 ? [rest] : []), ...suspects]) {
        stopped = await deliver(master, batch, outcome, log);
        if (stopped !== undefined) break;
      }
      this.remove(outcome.delivered);
      sent += outcome.delivered.size;
      // A master failing on one event while it takes the others has a bug that event
      // meets: it is counted like a refusal, so that it cannot hold back the node forever.
      if (outcome.delivered.size > 0) for (const [id, failure] of outcome.failedAlone) outcome.refused.set(id, failure);
      for (const [id, { event, reason }] of outcome.refused) this.noteRefusal(id, event, reason, log);
      if (stopped !== undefined) break;
    }
    const offline = stopped instanceof PledgerError && stopped.code === 'MASTER_UNREACHABLE';
    if (stopped !== undefined) {
      log.error(offline ? 'master unreachable: events kept for the next run' : 'cannot send events: kept for the next run', {
        reason: errorMessage(stopped),
      });
    } else {
      await this.reportSetAside(master, log);
    }
    this.noteAttempt(stopped === undefined);
    return this.result(sent, offline);
  }

  /** The events set aside, oldest first: what the master refused for good, kept whole. */
  setAside(): { event: NodeEvent; reason: string; refusals: number; setAsideAt: string }[] {
    const rows = this.database.prepare('SELECT body, reason, refusals, set_aside_at FROM set_aside ORDER BY seq').all() as {
      body: string;
      reason: string;
      refusals: number;
      set_aside_at: number;
    }[];
    return rows.map((row) => ({ event: JSON.parse(row.body) as NodeEvent, reason: row.reason, refusals: row.refusals, setAsideAt: new Date(row.set_aside_at).toISOString() }));
  }

  private setAsideCount(): number {
    return (this.database.prepare('SELECT count(*) AS n FROM set_aside').get() as { n: number }).n;
  }

  private result(sent: number, offline: boolean): FlushResult {
    const setAside = this.setAsideCount();
    return { sent, pending: this.count(), offline, ...(setAside > 0 ? { setAside } : {}) };
  }

  /** One more run refused `event` on its own: counted, and set aside at the last allowed refusal. */
  private noteRefusal(id: string, event: NodeEvent, reason: string, log: Logger): void {
    const db = this.database;
    const refusals = db.transaction(() => {
      const count = ((db.prepare('SELECT refusals FROM outbox_refusals WHERE id = ?').get(id) as { refusals: number } | undefined)?.refusals ?? 0) + 1;
      if (count < this.settings.setAsideAfter) {
        db.prepare(
          'INSERT INTO outbox_refusals (id, refusals, reason, refused_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET refusals = excluded.refusals, reason = excluded.reason, refused_at = excluded.refused_at',
        ).run(id, count, reason, Date.now());
        return count;
      }
      db.prepare(
        'INSERT INTO set_aside (id, body, reason, refusals, queued_at, set_aside_at) SELECT id, body, ?, ?, queued_at, ? FROM outbox WHERE id = ? ON CONFLICT (id) DO NOTHING',
      ).run(reason, count, Date.now(), id);
      db.prepare('DELETE FROM outbox WHERE id = ?').run(id);
      db.prepare('DELETE FROM outbox_refusals WHERE id = ?').run(id);
      return count;
    })();
    if (refusals < this.settings.setAsideAfter) {
      log.error('the master refused an event: kept, and sent alone again later', { event: id, type: event.type, refusals, reason });
    } else {
      log.error(`the master refused an event ${refusals} times: set aside, the next events go on`, { event: id, type: event.type, reason });
    }
  }

  /**
   * Tells the master how many events are set aside and the last one's reason, once per
   * change: so an operator sees it in `pledger node list` without reading the node's log.
   */
  private async reportSetAside(master: MasterClient, log: Logger): Promise<void> {
    const count = this.setAsideCount();
    if (String(count) === (readMeta(this.database, SET_ASIDE_REPORTED) ?? '0')) return;
    const last = this.database.prepare('SELECT body, reason, set_aside_at FROM set_aside ORDER BY seq DESC LIMIT 1').get() as
      | { body: string; reason: string; set_aside_at: number }
      | undefined;
    const event = last ? (JSON.parse(last.body) as NodeEvent) : undefined;
    const report: SetAsideReport = {
      count,
      ...(last && event ? { last: { event: event.id, type: event.type, reason: last.reason.slice(0, 2048), at: new Date(last.set_aside_at).toISOString() } } : {}),
    };
    try {
      await master.node.setAside(report);
      writeMeta(this.database, SET_ASIDE_REPORTED, String(count));
    } catch (error) {
      log.error('cannot tell the master about the events set aside: told next run', { setAside: count, reason: errorMessage(error) });
    }
  }

  /** After a failure the next attempt waits first·2^(failures-1), capped, times a random 0.5 to 1. */
  private noteAttempt(succeeded: boolean): void {
    const db = this.database;
    if (succeeded) {
      if (readMeta(db, RETRY_FAILURES) !== undefined) db.prepare('DELETE FROM meta WHERE key IN (?, ?)').run(RETRY_FAILURES, RETRY_NEXT_AT);
      return;
    }
    const failures = Number(readMeta(db, RETRY_FAILURES) ?? 0) + 1;
    const delay = Math.min(this.settings.retryFirstMs * 2 ** Math.min(failures - 1, 30), this.settings.retryMaxMs);
    db.transaction(() => {
      writeMeta(db, RETRY_FAILURES, String(failures));
      writeMeta(db, RETRY_NEXT_AT, String(Date.now() + Math.round(delay * (0.5 + Math.random() / 2))));
    })();
  }

  private remove(ids: Set<string>): void {
    if (ids.size === 0) return;
    const statement = this.database.prepare('DELETE FROM outbox WHERE id = ?');
    const refusals = this.database.prepare('DELETE FROM outbox_refusals WHERE id = ?');
    this.database.transaction(() => {
      for (const id of ids) {
        statement.run(id);
        refusals.run(id);
      }
    })();
  }

  private importLegacy(file: string): void {
    if (!existsSync(file)) return;
    const lines = readFileSync(file, 'utf8').split('\n');
    this.database.transaction(() => {
      for (const line of lines) {
        if (!line.trim()) continue;
        try {
          this.addNow(JSON.parse(line) as NodeEvent);
        } catch {
          // A line torn by a crash in the middle of an append: nothing to deliver.
        }
      }
    })();
    rmSync(file, { force: true });
  }
}

/**
 * Sends a batch and notes in `outcome` what the master did with each event. Returns the
 * error that should stop the delivery, if any. A refused batch is halved until the event
 * refused alone is found, unless the master named it (`details.event`).
 */
async function deliver(master: MasterClient, batch: NodeEvent[], outcome: Outcome, log: Logger): Promise<unknown> {
  try {
    const answer = await master.node.events({ events: batch });
    const receipt = checkValue<EventsReceipt>(validators.EventsReceipt, answer, 'events receipt', 'INTERNAL');
    for (const id of [...receipt.applied, ...receipt.duplicates]) outcome.delivered.add(id);
    outcome.failuresInARow = 0;
    return undefined;
  } catch (error) {
    if (isFailure(error)) {
      // The master failed (500) on this batch: it may be one event that meets a bug, or
      // the master failing on everything. Halving tells them apart; two events failing
      // alone in a row with nothing delivered between say the master is at fault, and
      // stop the run, keeping everything.
      if (batch.length > 1) {
        const half = Math.ceil(batch.length / 2);
        const stop = await deliver(master, batch.slice(0, half), outcome, log);
        return stop ?? deliver(master, batch.slice(half), outcome, log);
      }
      outcome.failedAlone.set(batch[0]!.id, { event: batch[0]!, reason: errorMessage(error) });
      return ++outcome.failuresInARow >= 2 ? error : undefined;
    }
    if (!isRefusal(error)) return error;
    const early = tooEarly(error, batch);
    if (early) {
      // The master's clock says that hour is not over: the report keeps until it is, the rest goes on.
      log.error('the master refused an event for now: kept for the next run', { event: early.id, reason: errorMessage(error) });
      const rest = batch.filter((event) => event !== early);
      return rest.length === 0 ? undefined : deliver(master, rest, outcome, log);
    }
    const named = namedEvent(error, batch);
    if (named) {
      outcome.refused.set(named.id, { event: named, reason: errorMessage(error) });
      const rest = batch.filter((event) => event !== named);
      return rest.length === 0 ? undefined : deliver(master, rest, outcome, log);
    }
    const half = Math.ceil(batch.length / 2);
    const stop = await deliver(master, batch.slice(0, half), outcome, log);
    return stop ?? deliver(master, batch.slice(half), outcome, log);
  }
}

/**
 * The event a refusal names: the one of a batch of one, the one the master gave in
 * `details.event`, or the one every schema violation it listed points into
 * (`/events/N/...`).
 */
function namedEvent(error: unknown, batch: NodeEvent[]): NodeEvent | undefined {
  if (batch.length === 1) return batch[0];
  const details = (error as PledgerError).details;
  const id = (details as { event?: unknown } | undefined)?.event;
  if (id !== undefined) return batch.find((event) => event.id === id);
  if (!Array.isArray(details) || details.length === 0) return undefined;
  const indexes = new Set(details.map((problem) => /^\/events\/(\d+)(\/|$)/.exec(String((problem as { instancePath?: unknown }).instancePath ?? ''))?.[1]));
  const [index] = [...indexes];
  return indexes.size === 1 && index !== undefined ? batch[Number(index)] : undefined;
}

/** The event of the batch that the master refused only until its clock catches up, if that was the refusal. */
function tooEarly(error: unknown, batch: NodeEvent[]): NodeEvent | undefined {
  if (!(error instanceof PledgerError) || error.code !== 'TOO_EARLY') return undefined;
  const id = (error.details as { event?: unknown } | undefined)?.event;
  return batch.find((event) => event.id === id) ?? (batch.length === 1 ? batch[0] : undefined);
}

/** The master failed to handle the request (a bug it met), as opposed to being unreachable or refusing it. */
function isFailure(error: unknown): boolean {
  return error instanceof PledgerError && error.code === 'INTERNAL' && error.status === 500;
}

/**
 * The master understood the request and said no: sending it again as it is would not
 * help (unless it was too early). A bad credential is the node's problem, not the
 * event's, and a rate limit passes: both keep every event.
 */
function isRefusal(error: unknown): boolean {
  return error instanceof PledgerError && error.status >= 400 && error.status < 500 && error.status !== 429 && error.code !== 'UNAUTHENTICATED';
}

