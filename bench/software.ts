/**
 * Figures for building software on a node, against a real master in this process:
 *
 * 1. a no-op `pledger node software` with 10 releases supplied and built: the run in
 *    this process (and the child processes it starts: there must be none), then the
 *    whole CLI as cron runs it, a new process each time (target: < 300 ms wall, and no
 *    child process started by that process either);
 * 2. building a release whose parts are all shared with a release already built.
 *
 * Run with `npm run bench:software`. Prints one line per figure and exits 1 when a
 * target is missed.
 */
import childProcess from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { create } from 'tar';
import { initMaster, serveMaster } from '../master/server.js';
import { MasterClient } from '../protocol/client.js';
import { packSoftware } from '../protocol/software-archive.js';
import { resolveNodeConfig, writeNodeConfig } from '../slave/config.js';
import { silentLogger } from '../slave/log.js';
import { installSoftware } from '../slave/software.js';

const RELEASES = 10;
const RUNS = 20;
const CLI_RUNS = 10;
const TARGET_NOOP_MS = 300;
const TARGET_SHARED_MS = 1000;
const CLI = path.join(import.meta.dirname, '..', 'cli', 'main.js');
const PROJECT = path.resolve(import.meta.dirname, '..', '..');

process.env.PLEDGER_LOG_LEVEL = 'error';
const work = mkdtempSync(path.join(tmpdir(), 'pledger-bench-'));

// Every process the node agent starts goes through child_process.spawn (execa uses it).
let spawned = 0;
const spawn = childProcess.spawn;
childProcess.spawn = ((...args: Parameters<typeof spawn>) => {
  spawned++;
  return spawn(...args);
}) as typeof spawn;
syncBuiltinESMExports();

function writeTree(dir: string, files: Record<string, string>): string {
  for (const [name, content] of Object.entries(files)) {
    childProcess.execFileSync('mkdir', ['-p', path.dirname(path.join(dir, name))]);
    writeFileSync(path.join(dir, name), content);
  }
  return dir;
}

async function sourceArchive(): Promise<string> {
  const dir = writeTree(path.join(work, 'src'), {
    'tool-1.0/tool.c': '#include <stdio.h>\nint main(void) { puts("tool"); return 0; }\n',
    'tool-1.0/Makefile': 'tool: tool.c\n\tcc -O2 -o tool tool.c\ninstall: tool\n\tmkdir -p $(PREFIX)/bin\n\tcp tool $(PREFIX)/bin/tool\n',
  });
  const file = path.join(work, 'tool-1.0.tar.gz');
  await create({ gzip: true, cwd: dir, portable: true, file }, ['tool-1.0']);
  return file;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const ms = (value: number) => `${value.toFixed(1)} ms`;

async function main(): Promise<number> {
  const database = `sqlite:${path.join(work, 'master.db')}`;
  const { token } = await initMaster(database, 'admin');
  const master = await serveMaster({ database, host: '127.0.0.1', port: 0, softwareDir: null });
  const operator = new MasterClient({ url: master.url, token });
  const { credential } = await operator.nodes.register({ name: 'bench' });
  const config = resolveNodeConfig({ masterUrl: master.url, credential, root: path.join(work, 'node'), partitions: 1 });
  const configFile = path.join(work, 'node.json');
  await writeNodeConfig(configFile, config);
  const publishAndSupply = async (files: Record<string, string>, name: string) => {
    const dir = writeTree(path.join(work, 'releases', name), files);
    await operator.software.publish(await packSoftware(dir));
    await operator.supplies.set({ software: `${name}@1.0.0`, node: 'bench', state: 'available' });
  };
  const small = (name: string) => ({
    'software.yaml': `name: ${name}\nversion: 1.0.0\nparts:\n  app:\n    files: [app.sh]\n    build: [[/bin/chmod, "755", app.sh]]\nsoftware-types:\n  default: {}\n`,
    'app.sh': `#!/bin/sh\necho ${name}\n`,
  });
  for (let i = 0; i < RELEASES; i++) await publishAndSupply(small(`bench-${i}`), `bench-${i}`);
  const first = await installSoftware(config, silentLogger);
  if (first.results.some((r) => r.status !== 'done')) throw new Error(`the first build failed: ${JSON.stringify(first.results)}`);

  let failed = 0;
  const check = (label: string, value: number, target: number) => {
    const ok = value < target;
    if (!ok) failed++;
    console.log(`${label}: ${ms(value)} (target < ${target} ms) ${ok ? 'ok' : 'MISSED'}`);
  };

  // 1. No-op runs, in this process.
  const inProcess: number[] = [];
  spawned = 0;
  for (let i = 0; i < RUNS; i++) {
    const started = performance.now();
    const run = await installSoftware(config, silentLogger);
    inProcess.push(performance.now() - started);
    if (run.results.some((r) => r.status !== 'unchanged')) throw new Error(`a no-op run did something: ${JSON.stringify(run.results)}`);
  }
  check(`no-op node software, ${RELEASES} releases built, in process (median of ${RUNS})`, median(inProcess), TARGET_NOOP_MS);
  console.log(`child processes started by ${RUNS} no-op runs: ${spawned} ${spawned === 0 ? 'ok' : 'MISSED'}`);
  if (spawned !== 0) failed++;

  // 1b. The whole CLI, a new Node process each time, as cron runs it.
  const runCli = (preload: string[] = [], env: Record<string, string> = {}) =>
    // Asynchronously: the master answering it lives in this process.
    new Promise<number | null>((resolve) => {
      const child = spawn(process.execPath, [...preload, CLI, 'node', 'software', '--config', configFile, '--json'], {
        stdio: ['ignore', 'ignore', 'inherit'],
        env: { ...process.env, ...env },
      });
      child.on('exit', resolve);
    });
  const cli: number[] = [];
  for (let i = 0; i < CLI_RUNS; i++) {
    const started = performance.now();
    const code = await runCli();
    cli.push(performance.now() - started);
    if (code !== 0) throw new Error(`pledger node software exited with ${code}`);
  }
  check(`no-op pledger node software as a new process, wall (median of ${CLI_RUNS}, best ${ms(Math.min(...cli))}, worst ${ms(Math.max(...cli))})`, median(cli), TARGET_NOOP_MS);
  // One more run, not timed, that counts the child processes the CLI starts.
  const counted = path.join(work, 'children');
  const code = await runCli(['--import', path.join(PROJECT, 'scripts', 'count-children.mjs')], { PLEDGER_COUNT_CHILDREN: counted });
  if (code !== 0) throw new Error(`pledger node software exited with ${code}`);
  const cliChildren = Number(readFileSync(counted, 'utf8'));
  console.log(`child processes started by a no-op pledger node software process: ${cliChildren} ${cliChildren === 0 ? 'ok' : 'MISSED'}`);
  if (cliChildren !== 0) failed++;
  // Where that time goes: a Node process that only loads the modules the command loads.
  const loading: number[] = [];
  const timeProcess = async (args: string[]) => {
    const started = performance.now();
    await new Promise((resolve) => spawn(process.execPath, args, { stdio: 'ignore' }).on('exit', resolve));
    return performance.now() - started;
  };
  const bare: number[] = [];
  const agentModules = ['config', 'log', 'software'].map((name) => path.join(path.dirname(CLI), '..', 'slave', `${name}.js`));
  for (let i = 0; i < CLI_RUNS; i++) {
    bare.push(await timeProcess(['-e', '0']));
    loading.push(await timeProcess(['--input-type=module', '-e', agentModules.map((file) => `await import(${JSON.stringify(file)});`).join('')]));
  }
  console.log(`  of which: starting Node ${ms(median(bare))}, loading the modules of the node agent it runs ${ms(median(loading) - median(bare))}`);

  // 2. A release whose parts are all shared with one already built.
  const archive = await sourceArchive();
  const { createHash } = await import('node:crypto');
  const sha256 = createHash('sha256').update(readFileSync(archive)).digest('hex');
  const sharedYaml = (name: string) =>
    [
      `name: ${name}`,
      'version: 1.0.0',
      'parts:',
      '  tool:',
      `    source: { url: "file://${archive}", sha256: "${sha256}", strip: 1 }`,
      '    build: [[make, "PREFIX={{ part.path }}", install]]',
      '    shared: true',
      '  config:',
      '    files: [defaults.conf]',
      '    after: [tool]',
      '    shared: true',
      'software-types:',
      '  default: {}',
      '',
    ].join('\n');
  await publishAndSupply({ 'software.yaml': sharedYaml('shared-a'), 'defaults.conf': 'level = 1\n', 'README.md': 'a' }, 'shared-a');
  let started = performance.now();
  await installSoftware(config, silentLogger);
  const firstShared = performance.now() - started;
  console.log(`first release with 2 shared parts (source archive + make, files), built from scratch: ${ms(firstShared)}`);
  await publishAndSupply({ 'software.yaml': sharedYaml('shared-b'), 'defaults.conf': 'level = 1\n', 'README.md': 'b' }, 'shared-b');
  started = performance.now();
  const second = await installSoftware(config, silentLogger);
  const reused = performance.now() - started;
  if (second.results.find((r) => r.item === 'shared-b@1.0.0')?.status !== 'done') throw new Error(`shared-b was not built: ${JSON.stringify(second.results)}`);
  check('second release, all parts shared with the first: whole node software run', reused, TARGET_SHARED_MS);

  await master.close();
  await rm(work, { recursive: true, force: true });
  return failed;
}

process.exitCode = (await main()) === 0 ? 0 : 1;
