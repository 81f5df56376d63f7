/**
 * The databases every database test runs on: SQLite always, PostgreSQL when
 * PLEDGER_TEST_POSTGRES_URL names a server (scripts/test.sh starts one). Narrow the
 * list with PLEDGER_TEST_DATABASES=sqlite or =postgres.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';

export type TestEngine = 'sqlite' | 'postgres';

export function testEngines(): TestEngine[] {
  const wanted = (process.env.PLEDGER_TEST_DATABASES ?? 'sqlite,postgres').split(',');
  return (['sqlite', 'postgres'] as const).filter(
    (e) => wanted.includes(e) && (e === 'sqlite' || Boolean(process.env.PLEDGER_TEST_POSTGRES_URL)),
  );
}

export interface TestDatabase {
  url: string;
  drop(): Promise<void>;
}

/** A fresh, empty database: a SQLite file in a temporary folder, or a new PostgreSQL database. */
export async function freshDatabase(engine: TestEngine): Promise<TestDatabase> {
  if (engine === 'sqlite') {
    const dir = mkdtempSync(path.join(tmpdir(), 'pledger-db-'));
    return { url: `sqlite:${path.join(dir, 'master.db')}`, drop: async () => rmSync(dir, { recursive: true, force: true }) };
  }
  const adminUrl = process.env.PLEDGER_TEST_POSTGRES_URL!;
  const name = `pledger_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      // pg's pool resolves end() before its sockets are closed: a drop that terminated them
      // mid-close would raise an error nobody listens to any more, failing the run. The
      // server says when the last one is gone. (A pool the test never closed is ended by the
      // drop after half a minute.)
      for (let i = 0; i < 600; i++) {
        const { rows } = await client.query<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1', [name]);
        if (Number(rows[0]!.n) === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await client.end();
    },
  };
}
