/**
 * The printable invoice: an HTML page rendered from templates/invoice.html.njk, with
 * autoescaping on, since instance titles are the customer's free text.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import nunjucks from 'nunjucks';
import type { InvoiceView } from '../../protocol/api.js';
import { formatQuotient } from './money.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// master/billing in the sources, dist/master/billing once compiled.
const root = path.resolve(here, path.basename(path.resolve(here, '../..')) === 'dist' ? '../../..' : '../..');
const environment = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(root, 'templates')), {
  autoescape: true,
  throwOnUndefined: true,
});

const RESOURCE_NAMES: Record<string, string> = {
  'instance-month': 'Instance (months)',
  'instance-hour': 'Running time (hours)',
  'cpu-hour': 'CPU (hours)',
  'memory-gib-hour': 'Memory (GiB-hours)',
  'disk-gib-month': 'Disk (GiB-months)',
};

export function renderInvoice(invoice: InvoiceView): string {
  return environment.render('invoice.html.njk', {
    invoice,
    resources: RESOURCE_NAMES,
    taxRate: formatQuotient(BigInt(invoice.taxRateBasisPoints), 100n, 2),
  });
}
