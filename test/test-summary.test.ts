/**
 * The test command's closing line, `tests: N passed, N failed`, as CI reads it: it counts
 * every error vitest saw (failed tests, test files broken outside their tests, errors
 * outside any test, checks run before the tests), and the exit status agrees with it.
 * Each case runs the same script scripts/test.sh ends with on a small suite of its own.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { PROJECT } from './helpers/processes.js';

/** Runs scripts/run-vitest.sh on a suite made of `files` (globals on: the files import nothing). */
async function runSuite(files: Record<string, string>, env: Record<string, string> = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'pledger-summary-'));
  writeFileSync(path.join(dir, 'vitest.config.mjs'), "export default { test: { include: ['*.spec.mjs'], globals: true } };\n");
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  const run = await execa('bash', [path.join(PROJECT, 'scripts', 'run-vitest.sh'), '--root', dir, '--config', path.join(dir, 'vitest.config.mjs')], {
    cwd: PROJECT,
    reject: false,
    env: { ...env, PLEDGER_CHECKS_FAILED: env.PLEDGER_CHECKS_FAILED ?? '0' },
    all: true,
  });
  const lines = String(run.stdout).trim().split('\n');
  return { exitCode: run.exitCode, closing: lines.at(-1), notes: lines.filter((line) => line.startsWith('note: ')) };
}

const PASSING = "it('passes', () => { expect(1).toBe(1); });\n";

describe('the closing line of the test command', () => {
  it('says 0 failed and exits 0 when everything passed', async () => {
    expect(await runSuite({ 'a.spec.mjs': PASSING, 'b.spec.mjs': PASSING })).toEqual({ exitCode: 0, closing: 'tests: 2 passed, 0 failed', notes: [] });
  });

  it('counts an error outside any test, which fails the run although every test passed', async () => {
    const leaky = [
      "it('passes but leaves a rejected promise behind', async () => {",
      "  void Promise.reject(new Error('left behind'));",
      '  await new Promise((resolve) => setTimeout(resolve, 50));',
      '});',
      '',
    ].join('\n');
    expect(await runSuite({ 'a.spec.mjs': leaky, 'b.spec.mjs': PASSING })).toEqual({
      exitCode: 1,
      closing: 'tests: 2 passed, 1 failed',
      notes: ['note: 1 error(s) outside any test'],
    });
  });

  it('counts failed tests, a file broken before its tests, and skipped tests', async () => {
    const result = await runSuite({
      'a.spec.mjs': "it('fails', () => { expect(1).toBe(2); });\nit.skip('is skipped', () => {});\n",
      'b.spec.mjs': "import './no-such-module.mjs';\nit('never runs', () => {});\n",
      'c.spec.mjs': PASSING,
    });
    expect(result).toEqual({ exitCode: 1, closing: 'tests: 1 passed, 2 failed, 1 skipped', notes: ['note: 1 test file(s) failed outside their tests'] });
  });

  it('counts a failed check run before the tests (eslint, type check)', async () => {
    expect(await runSuite({ 'a.spec.mjs': PASSING }, { PLEDGER_CHECKS_FAILED: '1' })).toEqual({
      exitCode: 1,
      closing: 'tests: 1 passed, 1 failed',
      notes: ['note: 1 check(s) before the tests failed (eslint, type check): see above'],
    });
  });
});
