/**
 * Events are delivered at least once. Each one is appended to the outbox file before
 * it is sent, and leaves the file only when the master has acknowledged its id
 * (applied now or before). The master applies each id once, so a resend after a lost
 * answer is harmless, and a node without its master loses nothing.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { API_PREFIX, EventsReceipt, type InstanceEvent, type NodeEvent, type SoftwareEvent } from '../protocol/api.js';
import type { MasterClient } from '../protocol/client.js';
import { PledgerError } from '../protocol/errors.js';
import { errorMessage, randomToken, writeFileAtomic } from './files.js';
import type { Logger } from './log.js';
import { checkSchema } from './validate.js';

/** The master refuses bigger batches. */
const BATCH_SIZE = 500;
const MAX_MESSAGE_CHARS = 16000;

type Distribute<T> = T extends unknown ? Omit<T, 'id' | 'at'> : never;
export type EventFields = Distribute<InstanceEvent> | Distribute<SoftwareEvent>;

/** Gives an event its own id and time. Long messages are cut from the front: the end of a log says why. */
export function newEvent(fields: EventFields): NodeEvent {
  const event = { id: randomToken(16), at: new Date().toISOString(), ...fields } as NodeEvent;
  if ('message' in event && event.message && event.message.length > MAX_MESSAGE_CHARS) event.message = `...${event.message.slice(-MAX_MESSAGE_CHARS)}`;
  return event;
}

export interface FlushResult {
  sent: number;
  pending: number;
  /** True when the master could not be reached: the events wait for the next run. */
  offline: boolean;
}

export class Outbox {
  constructor(private readonly file: string) {}

  async add(event: NodeEvent): Promise<void> {
    await mkdir(path.dirname(this.file), { recursive: true });
    await appendFile(this.file, `${JSON.stringify(event)}\n`, { mode: 0o600 });
  }

  async pending(): Promise<NodeEvent[]> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const events: NodeEvent[] = [];
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        events.push(JSON.parse(line) as NodeEvent);
      } catch {
        // A line torn by a crash in the middle of an append: nothing to deliver.
      }
    }
    return events;
  }

  /**
   * Sends every pending event in batches and keeps only those the master has not
   * acknowledged. The master refuses a batch whole when one event is wrong (an instance
   * it has freed meanwhile, say); such a batch is resent one event at a time, and an
   * event refused on its own is dropped with an error in the log, so that one bad event
   * never blocks the others forever.
   */
  async flush(master: MasterClient, log: Logger): Promise<FlushResult> {
    const events = await this.pending();
    const delivered = new Set<string>();
    let stopped: unknown;
    for (let start = 0; start < events.length && stopped === undefined; start += BATCH_SIZE) {
      stopped = await deliver(master, events.slice(start, start + BATCH_SIZE), delivered, log);
    }
    const offline = stopped instanceof PledgerError && stopped.code === 'MASTER_UNREACHABLE';
    if (stopped !== undefined) {
      log.error(offline ? 'master unreachable: events kept for the next run' : 'cannot send events: kept for the next run', {
        reason: errorMessage(stopped),
      });
    }
    if (delivered.size > 0) await this.remove(delivered);
    return { sent: delivered.size, pending: events.length - delivered.size, offline };
  }

  /** Re-reads the file just before rewriting it, so that an event appended meanwhile stays. */
  private async remove(ids: Set<string>): Promise<void> {
    const remaining = (await this.pending()).filter((event) => !ids.has(event.id));
    await writeFileAtomic(this.file, remaining.map((event) => `${JSON.stringify(event)}\n`).join(''), 0o600);
  }
}

/**
 * Sends a batch and adds the ids the master acknowledged (or refused alone) to
 * `delivered`. Returns the error that should stop the delivery, if any.
 */
async function deliver(master: MasterClient, batch: NodeEvent[], delivered: Set<string>, log: Logger): Promise<unknown> {
  try {
    const answer = await master.call<unknown>('POST', `${API_PREFIX}/node/events`, { events: batch });
    const receipt = checkSchema<EventsReceipt>(EventsReceipt, answer, 'events receipt', 'INTERNAL');
    for (const id of [...receipt.applied, ...receipt.duplicates]) delivered.add(id);
    return undefined;
  } catch (error) {
    if (!isRefusal(error)) return error;
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

/** The master understood the request and said no: sending it again would not help. */
function isRefusal(error: unknown): boolean {
  return error instanceof PledgerError && error.status >= 400 && error.status < 500 && error.code !== 'UNAUTHENTICATED';
}
