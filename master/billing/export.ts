/**
 * Exports of a period's journal: CSV and JSON for spreadsheets and scripts, and plain
 * text journals that hledger and Beancount read as they are.
 *
 * An export is produced as a stream of text chunks, one batch of transactions at a
 * time, read by keyset pagination: memory stays flat however many customers there are.
 * The journal of a period is its invoices and the payments made during that month.
 */
import { stringify } from 'csv-stringify/sync';
import type { Kysely } from 'kysely';
import type { ExportFormat } from '../../protocol/api.js';
import type { Tables } from '../db/tables.js';
import { loadSettings, type BillingSettings } from './journal.js';
import { exact, formatAmount, int } from './money.js';

const BATCH = 2000;

interface ExportedTransaction {
  id: string;
  date: string;
  kind: string;
  reference: string;
  description: string;
  postings: { account: string; currency: string; amount: bigint }[];
}

export const EXPORT_CONTENT_TYPES: Record<ExportFormat, string> = {
  csv: 'text/csv; charset=utf-8',
  json: 'application/json; charset=utf-8',
  hledger: 'text/plain; charset=utf-8',
  beancount: 'text/plain; charset=utf-8',
};

/** The period's journal transactions in order, a batch at a time. */
async function* transactions(db: Kysely<Tables>, period: string): AsyncGenerator<ExportedTransaction[]> {
  let after = '';
  for (;;) {
    const heads = await db
      .selectFrom('journal_transactions')
      .select(['id', 'date', 'kind', 'reference', 'description'])
      .where('period', '=', period)
      .where('id', '>', after)
      .orderBy('id')
      .limit(BATCH)
      .execute();
    if (heads.length === 0) return;
    after = heads[heads.length - 1]!.id;
    const postings = await db
      .selectFrom('journal_postings')
      .select(['transaction_id', 'account', 'currency', exact('amount').as('amount')])
      .where('transaction_id', 'in', heads.map((h) => h.id))
      .orderBy('transaction_id')
      .orderBy('line')
      .execute();
    const byTransaction = new Map<string, ExportedTransaction['postings']>();
    for (const p of postings) {
      const list = byTransaction.get(p.transaction_id) ?? [];
      list.push({ account: p.account, currency: p.currency, amount: int(p.amount) });
      byTransaction.set(p.transaction_id, list);
    }
    yield heads.map((h) => ({ ...h, date: h.date.slice(0, 10), postings: byTransaction.get(h.id) ?? [] }));
  }
}

async function accountsOf(db: Kysely<Tables>, period: string): Promise<string[]> {
  const rows = await db
    .selectFrom('journal_postings as p')
    .innerJoin('journal_transactions as t', 't.id', 'p.transaction_id')
    .select('p.account')
    .distinct()
    .where('t.period', '=', period)
    .orderBy('p.account')
    .execute();
  return rows.map((r) => r.account);
}

/** One line of free text, safe in every format: no control characters, no hledger comment. */
function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]+/g, ' ').replace(/;/g, ',');
}

const quoteBeancount = (text: string) => `"${oneLine(text).replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;

export async function* exportJournal(db: Kysely<Tables>, period: string, format: ExportFormat): AsyncGenerator<string> {
  const settings = await loadSettings(db);
  const money = (v: bigint) => formatAmount(v, settings.decimals);
  switch (format) {
    case 'csv': {
      yield stringify([['date', 'transaction', 'kind', 'reference', 'description', 'account', 'currency', 'amount']]);
      for await (const batch of transactions(db, period)) {
        yield stringify(batch.flatMap((t) => t.postings.map((p) => [t.date, t.id, t.kind, t.reference, t.description, p.account, p.currency, money(p.amount)])));
      }
      return;
    }
    case 'json': {
      yield '[';
      let first = true;
      for await (const batch of transactions(db, period)) {
        const items = batch.map((t) =>
          JSON.stringify({ ...t, period, postings: t.postings.map((p) => ({ account: p.account, currency: p.currency, amount: money(p.amount) })) }),
        );
        yield `${first ? '\n' : ',\n'}${items.join(',\n')}`;
        first = false;
      }
      yield '\n]\n';
      return;
    }
    case 'hledger': {
      yield* hledgerHeader(settings, period, await accountsOf(db, period));
      for await (const batch of transactions(db, period)) {
        yield batch
          .map((t) => {
            const width = Math.max(...t.postings.map((p) => p.account.length)) + 4;
            const postings = t.postings.map((p) => `    ${p.account.padEnd(width)}${money(p.amount)} ${p.currency}`).join('\n');
            return `${t.date} * (${t.reference}) ${oneLine(t.description)}\n    ; pledger-id: ${t.id}\n${postings}\n\n`;
          })
          .join('');
      }
      return;
    }
    case 'beancount': {
      yield `option "title" ${quoteBeancount(`Pledger journal ${period}`)}\noption "operating_currency" "${settings.currency}"\n\n`;
      yield `1970-01-01 commodity ${settings.currency}\n`;
      yield `${(await accountsOf(db, period)).map((a) => `1970-01-01 open ${a} ${settings.currency}`).join('\n')}\n\n`;
      for await (const batch of transactions(db, period)) {
        yield batch
          .map((t) => {
            const width = Math.max(...t.postings.map((p) => p.account.length)) + 4;
            const postings = t.postings.map((p) => `  ${p.account.padEnd(width)}${money(p.amount)} ${p.currency}`).join('\n');
            return `${t.date} * ${quoteBeancount(t.reference)} ${quoteBeancount(t.description)}\n  pledger-id: ${quoteBeancount(t.id)}\n${postings}\n\n`;
          })
          .join('');
      }
      return;
    }
  }
}

function* hledgerHeader(settings: BillingSettings, period: string, accounts: string[]): Generator<string> {
  const sample = formatAmount(100000n * 10n ** BigInt(settings.decimals), settings.decimals);
  yield `; Pledger journal ${period}\n\ncommodity ${sample} ${settings.currency}\n\n`;
  yield `${accounts.map((a) => `account ${a}`).join('\n')}\n\n`;
}
