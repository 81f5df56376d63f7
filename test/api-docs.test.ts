/**
 * The route table (protocol/routes.ts), the master and docs/api.md say the same: every
 * route of the table is served and documented with its method, its path and who may call
 * it, and every route documented is in the table.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp, type App } from '../master/app.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { API_PREFIX } from '../protocol/api-prefix.js';
import { allRoutes } from '../protocol/routes.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';

const DOCS = readFileSync(path.resolve(import.meta.dirname, '..', 'docs', 'api.md'), 'utf8');

interface DocumentedRoute {
  route: string;
  /** The "who" column of the user and billing tables; the node table has none. */
  who: string | undefined;
}

/**
 * The rows of the docs' route tables, `METHOD /path` with each parameter as `:` (the
 * docs write `TITLE`, `NAME[@VERSION]`; the table `:title`) and without the query.
 */
function documentedRoutes(): DocumentedRoute[] {
  const rows: DocumentedRoute[] = [];
  for (const line of DOCS.split('\n')) {
    const row = /^\| `([A-Z]+) (\/[^`]*)` \|(?: ([a-z]+) \|)?/.exec(line);
    if (!row) continue;
    const [, method, documentedPath, who] = row;
    const segments = documentedPath!
      .replace(/\[?\?.*$/, '')
      .split('/')
      .map((segment) => (/^[A-Z][A-Z0-9_]*(\[.*\])?$/.test(segment) ? ':' : segment));
    rows.push({ route: `${method} ${segments.join('/')}`, who });
  }
  return rows;
}

const tableRoutes = allRoutes().map(({ group, name, route }) => ({
  name: `${group}.${name}`,
  route,
  documented: `${route.method} ${route.path.slice(API_PREFIX.length).replace(/:[A-Za-z0-9]+/g, ':')}`,
}));

describe('the API documentation', () => {
  it('documents every route of the table with its method, path and caller', () => {
    const documented = new Map(documentedRoutes().map((row) => [row.route, row.who]));
    const missing = tableRoutes.filter((r) => !documented.has(r.documented)).map((r) => `${r.name}: ${r.documented}`);
    expect(missing).toEqual([]);
    const callers = tableRoutes.filter((r) => r.route.caller !== 'node').map((r) => [r.name, documented.get(r.documented) === 'operator' ? 'operator' : 'user']);
    expect(callers).toEqual(tableRoutes.filter((r) => r.route.caller !== 'node').map((r) => [r.name, r.route.caller]));
  });

  it('documents no route the table does not have', () => {
    const known = new Set(tableRoutes.map((r) => r.documented));
    expect(documentedRoutes().filter((row) => !known.has(row.route))).toEqual([]);
  });

  it('names each route once in the table', () => {
    const keys = tableRoutes.map((r) => `${r.route.method} ${r.route.path}`);
    expect(keys.length).toBeGreaterThan(40);
    expect(new Set(keys).size).toBe(keys.length);
  });
});

describe('the master', () => {
  let testDb: TestDatabase;
  let database: Database;
  let app: App;

  beforeAll(async () => {
    testDb = await freshDatabase('sqlite');
    database = openDatabase(testDb.url);
    app = buildApp({ database });
    await app.ready();
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await testDb?.drop();
  });

  it('serves every route of the table', () => {
    const unserved = tableRoutes.filter(({ route }) => !app.hasRoute({ method: route.method, url: route.path })).map((r) => r.name);
    expect(unserved).toEqual([]);
  });
});
