/**
 * Starting the master: `init` prepares a database and its first operator, `serve`
 * migrates, publishes the bundled software releases and listens.
 */
import { once } from 'node:events';
import { PledgerError } from '../protocol/errors.js';
import { countAccounts, createAccount } from './accounts.js';
import { buildApp, type App } from './app.js';
import { binaryCacheSigningKey } from './cache.js';
import { openDatabase } from './db/database.js';
import { migrate } from './db/migrate.js';
import { startPeriodicWork } from './periodic.js';
import { publishBundled } from './software.js';

export interface MasterSettings {
  /** `sqlite:/path/file.db` or `postgres://user@host/db`. */
  database: string;
  host: string;
  port: number;
  /** A folder of software releases published at start (the bundled ones), or null. */
  softwareDir: string | null;
  /** Between two rounds of the master's own work (master/periodic.ts); 30 s when not given. */
  periodicMs?: number;
}

/** Creates the schema and the operator account; refuses a database already initialized. */
export async function initMaster(database: string, adminName: string): Promise<{ token: string }> {
  const opened = openDatabase(database);
  try {
    await migrate(opened);
    if ((await countAccounts(opened.db)) > 0) {
      throw new PledgerError('CONFLICT', `the master database ${opened.displayUrl} is already initialized`, {
        hint: 'its operator token was printed by the first `pledger master init`; an operator can create more accounts',
      });
    }
    const { token } = await createAccount(opened.db, { name: adminName, role: 'admin' }, 'master');
    // Created now so that every node registered from here on can be given it.
    await binaryCacheSigningKey(opened.db);
    return { token };
  } finally {
    await opened.close();
  }
}

export interface RunningMaster {
  app: App;
  url: string;
  close(): Promise<void>;
}

export async function serveMaster(settings: MasterSettings): Promise<RunningMaster> {
  const database = openDatabase(settings.database);
  await migrate(database);
  // A master initialized before the binary cache existed gets its key at this start.
  await binaryCacheSigningKey(database.db);
  const app = buildApp({ database, logger: { level: process.env.PLEDGER_LOG_LEVEL ?? 'info' } });
  database.onConnectionError((error) => app.log.warn({ err: error }, 'database connection lost: the pool opens a new one when needed'));
  if (settings.softwareDir) {
    for (const result of await publishBundled(database.db, settings.softwareDir)) {
      if (result.status === 'failed') app.log.warn({ software: result.name }, `bundled software not published: ${result.message}`);
      else app.log.info({ software: result.name, status: result.status }, 'bundled software');
    }
  }
  try {
    await app.listen({ host: settings.host, port: settings.port });
  } catch (error) {
    await database.close();
    throw new PledgerError('BAD_REQUEST', `cannot listen on ${settings.host}:${settings.port}: ${(error as Error).message}`, { cause: error });
  }
  const periodic = startPeriodicWork(database.db, {
    intervalMs: settings.periodicMs ?? 30_000,
    onError: (error) => app.log.error({ err: error }, 'periodic work failed'),
  });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : settings.port;
  return {
    app,
    url: `http://${settings.host.includes(':') ? `[${settings.host}]` : settings.host}:${port}`,
    close: async () => {
      await periodic.stop();
      await app.close();
      await database.close();
    },
  };
}

/** Serves until SIGTERM or SIGINT, then closes cleanly. */
export async function serveUntilSignalled(settings: MasterSettings): Promise<void> {
  const master = await serveMaster(settings);
  master.app.log.info({ url: master.url, database: settings.database.replace(/:[^:@/]*@/, ':***@') }, 'master listening');
  await Promise.race([once(process, 'SIGTERM'), once(process, 'SIGINT')]);
  await master.close();
}
