// Prints the one closing line CI reads, from vitest's JSON report.
import { readFileSync } from 'node:fs';

const report = JSON.parse(readFileSync(process.argv[2], 'utf8'));
// A test file that fails before running any test (an import error, a failing
// beforeAll) has no failed test of its own: count it as one failure.
const brokenFiles = (report.testResults ?? []).filter(
  (file) => file.status === 'failed' && !file.assertionResults.some((test) => test.status === 'failed'),
).length;
const failed = report.numFailedTests + brokenFiles;
const skipped = report.numPendingTests + (report.numTodoTests ?? 0);
console.log(`tests: ${report.numPassedTests} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
