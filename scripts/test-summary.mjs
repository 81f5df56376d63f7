// Prints the one closing line CI reads, from vitest's JSON report.
import { readFileSync } from 'node:fs';

const report = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const failed = report.numFailedTests + (report.numFailedTestSuites ?? 0) - countSuitesFailedByTests(report);
const skipped = report.numPendingTests + (report.numTodoTests ?? 0);
console.log(`tests: ${report.numPassedTests} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);

// A file that fails to load counts as one failure; one whose tests failed is already counted.
function countSuitesFailedByTests(r) {
  return (r.testResults ?? []).filter((f) => f.status === 'failed' && f.assertionResults.some((a) => a.status === 'failed')).length;
}
