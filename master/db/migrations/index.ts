/**
 * The migrations, listed statically so that they run the same from the TypeScript
 * sources and from the compiled output. Append new ones; never edit a released one.
 * Each is given the engine, for the few column types that differ.
 */
import type { Migration, MigrationProvider } from 'kysely';
import type { Engine } from '../database.js';
import { ledger } from './0001-ledger.js';
import { nodeReports } from './0002-node-reports.js';
import { billing } from './0003-billing.js';
import { softwareCache } from './0004-software-cache.js';
import { allocation } from './0005-allocation.js';
import { instanceTrees } from './0006-instance-trees.js';
import { binaryCache } from './0007-binary-cache.js';
import { usageByHour } from './0008-usage-by-hour.js';
import { resources } from './0009-resources.js';
import { sharedClaims } from './0010-shared-claims.js';
import { binaryCacheUploaders } from './0011-binary-cache-uploaders.js';
import { creditNotes } from './0012-credit-notes.js';
import { concurrency } from './0013-concurrency.js';
import { nodeSetAside } from './0014-node-set-aside.js';

export function migrationProvider(engine: Engine): MigrationProvider {
  const migrations: Record<string, Migration> = {
    '0001-ledger': ledger(engine),
    '0002-node-reports': nodeReports(engine),
    '0003-billing': billing(engine),
    '0004-software-cache': softwareCache(engine),
    '0005-allocation': allocation(engine),
    '0006-instance-trees': instanceTrees(engine),
    '0007-binary-cache': binaryCache(engine),
    '0008-usage-by-hour': usageByHour(engine),
    '0009-resources': resources(engine),
    '0010-shared-claims': sharedClaims(engine),
    '0011-binary-cache-uploaders': binaryCacheUploaders(engine),
    '0012-credit-notes': creditNotes(engine),
    '0013-concurrency': concurrency(engine),
    '0014-node-set-aside': nodeSetAside(engine),
  };
  return { getMigrations: () => Promise.resolve(migrations) };
}
