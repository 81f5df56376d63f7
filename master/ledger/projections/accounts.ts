/** Accounts and their API tokens (stored as hashes). */
import { NO_LOCKS, type Projection } from '../applier.js';

export const accounts: Projection<'account.created' | 'token.issued'> = {
  tables: ['tokens', 'accounts'],
  appliers: {
    // A new row each, under a unique key: the database refuses a second one of the same name.
    'account.created': {
      locks: NO_LOCKS,
      apply: async (db, { accountId, name, role }, at) => {
        await db.insertInto('accounts').values({ id: accountId, name, role, created_at: at }).execute();
      },
    },
    'token.issued': {
      locks: NO_LOCKS,
      apply: async (db, { accountId, hash }, at) => {
        await db.insertInto('tokens').values({ hash, account_id: accountId, created_at: at }).execute();
      },
    },
  },
};
