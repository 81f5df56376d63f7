// A vitest reporter that keeps, in the file $PLEDGER_TEST_COUNTS, the counts of the
// closing line: every test by its result, every test file that failed outside its
// tests (an import error, a failing beforeAll), and every error vitest saw outside
// any test (an unhandled rejection, an error after a test ended). vitest's JSON report
// has no field for that last kind, which is how a run could end `0 failed` with exit 1.
import { writeFileSync } from 'node:fs';

export default class SummaryReporter {
  onTestRunEnd(testModules, unhandledErrors, reason) {
    const counts = { passed: 0, failed: 0, skipped: 0, brokenFiles: 0, unhandledErrors: unhandledErrors.length, reason };
    for (const module of testModules) {
      let failedTests = 0;
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') counts.passed += 1;
        else if (state === 'failed') failedTests += 1;
        else counts.skipped += 1;
      }
      counts.failed += failedTests;
      if (failedTests === 0 && (module.state() === 'failed' || module.errors().length > 0)) counts.brokenFiles += 1;
    }
    const file = process.env.PLEDGER_TEST_COUNTS;
    if (file) writeFileSync(file, `${JSON.stringify(counts)}\n`);
  }
}
