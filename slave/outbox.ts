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
import type { BangEvent, EventsReceipt, InstanceEvent, NodeEvent, PromisesEvent, SoftwareEvent } from '../protocol/api.js';
import { API_PREFIX } from '../protocol/api-prefix.js';
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
}

export interface FlushOptions {
  /** Send only when the retry delay after the last unreachable master has passed. */
  respectRetryDelay?: boolean;
}

const RETRY_FAILURES = 'outbox.failures';
const RETRY_NEXT_AT = 'outbox.nextAttemptAt';

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
   * The master refuses a batch whole when one event is wrong (an instance it has freed
   * meanwhile, say); such a batch is resent one event at a time, and an event refused
   * on its own is dropped with an error in the log, so that one bad event never blocks
   * the others forever.
   */
  async flush(master: MasterClient, log: Logger, options: FlushOptions = {}): Promise<FlushResult> {
    if (options.respectRetryDelay && Date.now() < Number(readMeta(this.database, RETRY_NEXT_AT) ?? 0)) {
      return { sent: 0, pending: this.count(), offline: true };
    }
    let sent = 0;
    let stopped: unknown;
    // Batches are read from the table as they go, so that events added meanwhile are sent too.
    for (;;) {
      const batch = this.pendingNow(BATCH_SIZE);
      if (batch.length === 0) break;
      const delivered = new Set<string>();
      stopped = await deliver(master, batch, delivered, log);
      this.remove(delivered);
      sent += delivered.size;
      if (stopped !== undefined || delivered.size === 0) break;
    }
    const offline = stopped instanceof PledgerError && stopped.code === 'MASTER_UNREACHABLE';
    if (stopped !== undefined) {
      log.error(offline ? 'master unreachable: events kept for the next run' : 'cannot send events: kept for the next run', {
        reason: errorMessage(stopped),
      });
    }
    this.noteAttempt(stopped === undefined);
    return { sent, pending: this.count(), offline };
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
    this.database.transaction(() => {
      for (const id of ids) statement.run(id);
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
 * Sends a batch and adds the ids the master acknowledged (or refused alone) to
 * `delivered`. Returns the error that should stop the delivery, if any.
 */
async function deliver(master: MasterClient, batch: NodeEvent[], delivered: Set<string>, log: Logger): Promise<unknown> {
  try {
    const answer = await master.call<unknown>('POST', `${API_PREFIX}/node/events`, { events: batch });
    const receipt = checkValue<EventsReceipt>(validators.EventsReceipt, answer, 'events receipt', 'INTERNAL');
    for (const id of [...receipt.applied, ...receipt.duplicates]) delivered.add(id);
    return undefined;
  } catch (error) {
    if (!isRefusal(error)) return error;
    const early = tooEarly(error, batch);
    if (early) {
      // The master's clock says that hour is not over: the report keeps until it is, the rest goes on.
      log.error('the master refused an event for now: kept for the next run', { event: early.id, reason: errorMessage(error) });
      const rest = batch.filter((event) => event !== early);
      return rest.length === 0 ? undefined : deliver(master, rest, delivered, log);
    }
    if (batch.length === 1) {
      log.error('the master refused an event: dropped', { event: batch[0], reason: errorMessage(error) });
      delivered.add(batch[0]!.id);
      return undefined;
    }
  }
  for (const event of batch) {
    const stop = await deliver(master, [event], delivered, log);
    if (stop !== undefined) return stop;
  }
  return undefined;
}

/** The event of the batch that the master refused only until its clock catches up, if that was the refusal. */
function tooEarly(error: unknown, batch: NodeEvent[]): NodeEvent | undefined {
  if (!(error instanceof PledgerError) || error.code !== 'TOO_EARLY') return undefined;
  const id = (error.details as { event?: unknown } | undefined)?.event;
  return batch.find((event) => event.id === id) ?? (batch.length === 1 ? batch[0] : undefined);
}

/** The master understood the request and said no: sending it again would not help (unless it was too early). */
function isRefusal(error: unknown): boolean {
  return error instanceof PledgerError && error.status >= 400 && error.status < 500 && error.code !== 'UNAUTHENTICATED';
}

