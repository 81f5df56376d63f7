/**
 * The shape of an applier: how one kind of movement changes the projections, and which
 * named locks (./locks.ts) it needs held while it does. Appliers are the only code that
 * writes projection tables, so replaying the movements in order rebuilds them exactly.
 */
import type { Kysely, Transaction } from 'kysely';
import type { Tables } from '../db/tables.js';
import type { LockKey } from './locks.js';
import type { Movement, MovementKind } from './movements.js';

export type Db = Kysely<Tables> | Transaction<Tables>;

/** The data of a movement of kind `K` (a member of the union may stand for several kinds). */
export type DataOf<K extends MovementKind> = Movement extends infer M ? (M extends { kind: infer MK; data: infer D } ? (K extends MK ? D : never) : never) : never;

export interface Applier<K extends MovementKind> {
  /** What it reads and writes, as locks: `record` takes them before appending the movement. */
  locks(data: DataOf<K>): LockKey[];
  apply(db: Db, data: DataOf<K>, at: string, kind: K): Promise<void>;
  /** The same for several movements of this kind in a row, in fewer statements (bulk arrivals). */
  applyMany?(db: Db, movements: { data: DataOf<K>; at: string }[]): Promise<void>;
}

/** The appliers of a set of kinds, one each. */
export type Appliers<K extends MovementKind> = { [P in K]: Applier<P> };

/** Tables a projection owns, emptied before a rebuild, in an order that respects their foreign keys. */
export interface Projection<K extends MovementKind> {
  tables: readonly (keyof Tables | string)[];
  appliers: Appliers<K>;
}

/** For kinds that change nothing a lock guards: settings, catalog entries, history-only notes. */
export const NO_LOCKS = (): LockKey[] => [];
