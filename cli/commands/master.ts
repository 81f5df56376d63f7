/** `pledger master init|serve|rebuild`: the master's own commands. */
import { mkdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { PledgerError } from '../../protocol/errors.js';
import { fields, print } from '../output.js';
import { BUNDLED_SOFTWARE_DIR, DEFAULT_MASTER_PORT } from '../settings.js';
import { globals } from './globals.js';

export function defaultMasterDir(): string {
  return process.env.PLEDGER_MASTER_DIR ?? path.join(homedir(), '.pledger', 'master');
}

/** The database URL: --database, PLEDGER_DATABASE_URL, or a SQLite file in the data folder. */
export async function databaseUrl(options: { database?: string; dataDir: string }): Promise<string> {
  const url = options.database ?? process.env.PLEDGER_DATABASE_URL;
  if (url) return url;
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  return `sqlite:${path.resolve(options.dataDir, 'master.db')}`;
}

export function registerMasterCommands(program: Command): void {
  const master = program.command('master').description('run the master');
  master
    .command('init')
    .description('create the master database and its operator account; prints the operator token once')
    .option('--data-dir <dir>', 'the master folder (the SQLite file lives there)', defaultMasterDir())
    .option('--database <url>', 'sqlite:/path/file.db or postgres://user@host/db')
    .option('--admin <name>', 'the operator account name', 'admin')
    .action(async (options, command) => {
      const g = globals(command);
      const database = await databaseUrl(options);
      const { initMaster } = await import('../../master/server.js');
      const { token } = await initMaster(database, options.admin);
      print(g, { admin: options.admin, token, database: database.replace(/:[^:@/]*@/, ':***@') }, (v) =>
        [fields([['operator', v.admin], ['token', v.token], ['database', v.database]]), '', 'keep the token: it is shown only once'].join('\n'),
      );
    });
  master
    .command('rebuild')
    .description('rebuild every projection (instances, partitions, billing...) by replaying the ledger of movements')
    .option('--data-dir <dir>', 'the master folder', defaultMasterDir())
    .option('--database <url>', 'sqlite:/path/file.db or postgres://user@host/db')
    .action(async (options, command) => {
      const g = globals(command);
      const { openDatabase } = await import('../../master/db/database.js');
      const { migrate } = await import('../../master/db/migrate.js');
      const { rebuildProjections } = await import('../../master/ledger/movements.js');
      const database = openDatabase(await databaseUrl(options));
      try {
        await migrate(database);
        const replayed = await rebuildProjections(database.db);
        print(g, { replayed }, (v) => `rebuilt the projections from ${v.replayed} movements`);
      } finally {
        await database.close();
      }
    });
  master
    .command('serve')
    .description('serve the API (runs until SIGTERM)')
    .option('--data-dir <dir>', 'the master folder', defaultMasterDir())
    .option('--database <url>', 'sqlite:/path/file.db or postgres://user@host/db')
    .option('--host <host>', 'the address to listen on', '127.0.0.1')
    .option('--port <port>', 'the port to listen on', String(DEFAULT_MASTER_PORT))
    .option('--software-dir <dir>', 'publish the software releases of this folder at start', BUNDLED_SOFTWARE_DIR)
    .option('--no-software-dir', 'publish nothing at start')
    .action(async (options) => {
      const port = Number(options.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new PledgerError('BAD_REQUEST', `--port ${options.port} is not a port`);
      const { serveUntilSignalled } = await import('../../master/server.js');
      await serveUntilSignalled({
        database: await databaseUrl(options),
        host: options.host,
        port,
        softwareDir: options.softwareDir === false ? null : options.softwareDir,
      });
    });
}
