/**
 * What the test command promises about a run, checked on small suites of its own.
 *
 * Its closing line, `tests: N passed, N failed`, as CI reads it: it counts
 * every error vitest saw (failed tests, test files broken outside their tests, errors
 * outside any test, checks run before the tests), and the exit status agrees with it.
 * Each case runs the same script scripts/test.sh ends with on a small suite of its own.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { processesMentioning, PROJECT } from './helpers/processes.js';

/** Runs scripts/run-vitest.sh on a suite made of `files` (globals on: the files import nothing). */
async function runSuite(files: Record<string, string>, env: Record<string, string> = {}, globalSetup: string[] = []) {
  const dir = mkdtempSync(path.join(tmpdir(), 'pledger-summary-'));
  const config = { test: { include: ['*.spec.mjs'], globals: true, globalSetup } };
  writeFileSync(path.join(dir, 'vitest.config.mjs'), `export default ${JSON.stringify(config)};\n`);
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

/** Whether a process runs (a zombie, exited and waiting to be reaped, does not). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

describe('the end of a test run', () => {
  it('leaves no process a test started, however it was started, and spares those of other runs', async () => {
    const outsider = execa('/bin/sleep', ['603'], { reject: false, detached: true });
    const pidsFile = path.join(mkdtempSync(path.join(tmpdir(), 'pledger-teardown-')), 'pids.json');
    const spec = [
      "import { spawn } from 'node:child_process';",
      "import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';",
      "import { tmpdir } from 'node:os';",
      "it('starts processes and leaves them running', () => {",
      "  const dir = mkdtempSync(`${tmpdir()}/root-`);",
      '  const start = (argv, options) => {',
      "    const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: 'ignore', ...options });",
      '    child.unref();',
      '    return child.pid;',
      '  };',
      '  const pids = [',
      // With the environment of the tests, in a partition with a clean one, and naming its folder.
      "    start(['/bin/sleep', '600'], {}),",
      "    start(['/bin/sleep', '601'], { cwd: dir, env: { PATH: '/usr/bin:/bin' } }),",
      "    start(['/bin/sh', '-c', `sleep ${process.env.NONCE}; echo ${dir}`], { cwd: '/', env: {} }),",
      '  ];',
      '  writeFileSync(process.env.PIDS_FILE, JSON.stringify(pids));',
      '});',
      '',
    ].join('\n');
    try {
      // The shell's own child, `sleep NONCE`, carries neither the run's mark nor its folder.
      const nonce = `602.${Date.now()}`;
      const result = await runSuite({ 'a.spec.mjs': spec }, { PIDS_FILE: pidsFile, NONCE: nonce }, [path.join(PROJECT, 'test', 'global-teardown.ts')]);
      expect(result).toEqual({ exitCode: 0, closing: 'tests: 1 passed, 0 failed', notes: [] });
      const pids = JSON.parse(readFileSync(pidsFile, 'utf8')) as number[];
      expect(pids).toHaveLength(3);
      expect(pids.filter(running)).toEqual([]);
      expect(processesMentioning(`sleep ${nonce}`).filter((p) => running(p.pid))).toEqual([]);
      expect(running(outsider.pid!)).toBe(true);
    } finally {
      outsider.kill('SIGKILL');
      await outsider;
    }
  });
});
