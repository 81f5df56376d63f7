import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Account, AccountWithToken } from '../protocol/api.js';
import { PledgerError } from '../protocol/errors.js';
import type { AccountsTable, Tables } from './db/tables.js';
import { writeTransaction } from './db/group-commit.js';
import { record } from './ledger/movements.js';
import { hashSecret, newSecret } from './secrets.js';

export type AccountRow = AccountsTable;

/** Creates an account and its first API token; the token is returned once, here. */
export async function createAccount(
  db: Kysely<Tables>,
  input: { name: string; role: 'admin' | 'user' },
  actor: string,
): Promise<AccountWithToken> {
  const token = newSecret('plg_u');
  await writeTransaction(db, async (trx) => {
    const taken = await trx.selectFrom('accounts').select('id').where('name', '=', input.name).executeTakeFirst();
    if (taken) throw new PledgerError('CONFLICT', `an account named "${input.name}" already exists`);
    const accountId = randomUUID();
    await record(trx, { kind: 'account.created', data: { accountId, name: input.name, role: input.role } }, { actor, subject: accountId });
    await record(trx, { kind: 'token.issued', data: { accountId, hash: hashSecret(token) } }, { actor, subject: accountId });
  });
  return { name: input.name, role: input.role, token };
}

export async function accountByToken(db: Kysely<Tables>, token: string): Promise<AccountRow | undefined> {
  return db
    .selectFrom('tokens')
    .innerJoin('accounts', 'accounts.id', 'tokens.account_id')
    .selectAll('accounts')
    .where('tokens.hash', '=', hashSecret(token))
    .executeTakeFirst();
}

export async function listAccounts(db: Kysely<Tables>): Promise<Account[]> {
  const rows = await db.selectFrom('accounts').selectAll().orderBy('name').execute();
  return rows.map((r) => ({ name: r.name, role: r.role, createdAt: r.created_at }));
}

export async function countAccounts(db: Kysely<Tables>): Promise<number> {
  const row = await db.selectFrom('accounts').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow();
  return Number(row.n);
}
