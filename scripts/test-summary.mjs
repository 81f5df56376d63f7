// Prints the one closing line CI reads, `tests: N passed, N failed[, N skipped]`, from
// the counts scripts/summary-reporter.mjs kept, and exits with a status that agrees
// with it: failures are every failed test, every test file broken outside its tests
// and every error vitest saw outside any test; a vitest that exited non-zero with
// nothing counted (it crashed, or a global teardown failed) is one failure more, and so is
// each check scripts/test.sh ran before the tests and saw fail ($PLEDGER_CHECKS_FAILED).
//   node scripts/test-summary.mjs COUNTS_FILE VITEST_EXIT_STATUS
import { readFileSync } from 'node:fs';

const [file, statusArg = '0'] = process.argv.slice(2);
const status = Number(statusArg);
let counts;
try {
  counts = JSON.parse(readFileSync(file, 'utf8'));
} catch {
  counts = undefined;
}
if (!counts) {
  console.log(`vitest wrote no counts (exit status ${status})`);
  console.log('tests: 0 passed, 1 failed');
  process.exit(1);
}
const notes = [];
if (counts.brokenFiles > 0) notes.push(`${counts.brokenFiles} test file(s) failed outside their tests`);
if (counts.unhandledErrors > 0) notes.push(`${counts.unhandledErrors} error(s) outside any test`);
// Checks run before the tests (eslint, the type checker) by scripts/test.sh.
const checksFailed = Number(process.env.PLEDGER_CHECKS_FAILED ?? 0) || 0;
if (checksFailed > 0) notes.push(`${checksFailed} check(s) before the tests failed (eslint, type check): see above`);
let failed = counts.failed + counts.brokenFiles + counts.unhandledErrors + checksFailed;
if (status !== 0 && failed === 0) {
  notes.push(`vitest exited with status ${status} after every test passed`);
  failed = 1;
}
for (const note of notes) console.log(`note: ${note}`);
console.log(`tests: ${counts.passed} passed, ${failed} failed${counts.skipped ? `, ${counts.skipped} skipped` : ''}`);
process.exit(failed > 0 ? 1 : 0);
