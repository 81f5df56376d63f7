/**
 * The node's durable memory of what it must still tell the master: the outbox of
 * events (and the events the master refused for good, set aside), and the usage meter, in one SQLite file so that turning an hour of usage into
 * an event is one transaction. The agent's cycles and the supervisor open it from
 * separate processes: WAL lets them read while one writes, and a busy timeout makes a
 * writer wait for the other instead of failing.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';

export type NodeDatabase = Database.Database;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  body TEXT NOT NULL,
  queued_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_refusals (
  id TEXT PRIMARY KEY,
  refusals INTEGER NOT NULL,
  reason TEXT NOT NULL,
  refused_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS set_aside (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  body TEXT NOT NULL,
  reason TEXT NOT NULL,
  refusals INTEGER NOT NULL,
  queued_at INTEGER NOT NULL,
  set_aside_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_hours (
  instance TEXT NOT NULL,
  hour TEXT NOT NULL,
  partition TEXT NOT NULL,
  cpu_ms REAL NOT NULL DEFAULT 0,
  memory_byte_s REAL NOT NULL DEFAULT 0,
  disk_byte_s REAL NOT NULL DEFAULT 0,
  uptime_s REAL NOT NULL DEFAULT 0,
  sent INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (instance, hour)
);
`;

/** Opens (creating when missing) the node database; the caller closes it. */
export function openNodeDatabase(file: string): NodeDatabase {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // Usage is billed: an acknowledged write must survive a power cut.
  db.pragma('synchronous = FULL');
  db.pragma('busy_timeout = 5000');
  db.exec(SCHEMA);
  return db;
}

export function readMeta(db: NodeDatabase, key: string): string | undefined {
  return (db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
}

export function writeMeta(db: NodeDatabase, key: string, value: string): void {
  db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
}
