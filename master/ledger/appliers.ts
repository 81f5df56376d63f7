/**
 * Every kind of movement and its applier, in one table: what each changes in the
 * projections and which locks it holds while it does (./locks.ts). A kind without an
 * applier here does not type-check.
 */
import { billing } from '../billing/journal.js';
import type { Applier, Appliers } from './applier.js';
import type { MovementKind } from './movements.js';
import { accounts } from './projections/accounts.js';
import { instances } from './projections/instances.js';
import { nodes } from './projections/nodes.js';
import { software } from './projections/software.js';
import { usage } from './projections/usage.js';

/** The projections, dependents first: emptied in this order before a rebuild. */
const PROJECTIONS = [billing, usage, instances, nodes, software, accounts];

export const APPLIERS: Appliers<MovementKind> = {
  ...accounts.appliers,
  ...nodes.appliers,
  ...software.appliers,
  ...instances.appliers,
  ...usage.appliers,
  ...billing.appliers,
};

export const PROJECTION_TABLES: readonly string[] = PROJECTIONS.flatMap((p) => p.tables);

export function applierOf<K extends MovementKind>(kind: K): Applier<K> {
  const applier = APPLIERS[kind] as Applier<K> | undefined;
  // Only a movement written by a newer master, or by hand, has an unknown kind.
  if (!applier) throw new Error(`no applier for movements of kind "${kind}"`);
  return applier;
}
