/**
 * Work the master does on its own, on a timer: trying again the instances that wait for
 * a partition (a node freed one, came back, or was given the release meanwhile without
 * a request to notice). However many master processes share the database, one does it
 * at a time: each tick, the process holding the lease works, the others skip; a lease
 * not renewed (its process died) is taken over once it expires.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import { allocatePending } from './instances/allocation.js';
import type { Tables } from './db/tables.js';

export interface PeriodicWork {
  stop(): Promise<void>;
}

export interface PeriodicOptions {
  /** Between two ticks, give or take a tenth (masters started together drift apart). */
  intervalMs: number;
  onError(error: unknown): void;
}

const LEASE = 'periodic';

/** Starts the timer; `stop` waits for a tick in progress and gives the lease back. */
export function startPeriodicWork(db: Kysely<Tables>, options: PeriodicOptions): PeriodicWork {
  const holder = `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let stopped = false;
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = tick().finally(schedule);
    }, options.intervalMs * (0.9 + Math.random() * 0.2));
    timer.unref();
  };
  const tick = async () => {
    try {
      // Held for three intervals: a process that misses a tick or two keeps its turn.
      if (await takeLease(db, LEASE, holder, options.intervalMs * 3)) await allocatePending(db);
    } catch (error) {
      options.onError(error);
    }
  };
  schedule();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
      await db.deleteFrom('master_leases').where('name', '=', LEASE).where('holder', '=', holder).execute().catch(options.onError);
    },
  };
}

/**
 * Takes the lease `name` for `ms`, or renews it: true when `holder` holds it now. One
 * statement on both engines, so two processes asking at once cannot both get it.
 */
export async function takeLease(db: Kysely<Tables>, name: string, holder: string, ms: number): Promise<boolean> {
  const now = new Date();
  const until = new Date(now.getTime() + ms).toISOString();
  const { rows } = await sql<{ holder: string }>`
    insert into master_leases (name, holder, expires_at) values (${name}, ${holder}, ${until})
    on conflict (name) do update set holder = excluded.holder, expires_at = excluded.expires_at
    where master_leases.holder = excluded.holder or master_leases.expires_at < ${now.toISOString()}
    returning holder`.execute(db);
  return rows.length === 1;
}
