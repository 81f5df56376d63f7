/**
 * What the node agent's commands load when cron starts them: a run with nothing to do
 * loads neither the schema library, nor the validator compiler, nor the template
 * engine, nor anything of the master, and starts no process. Only a run that deploys
 * loads the template engine. The documents from the master are still validated: a bad
 * desired state is refused with a clear error and nothing is saved.
 *
 * Real processes: a master on 127.0.0.1, the built CLI run as the agent's ordinary
 * user, Node's own module loader traced through `--import` hooks.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { desiredStatePath } from '../slave/paths.js';
import { startNodeFixture, type NodeFixture } from './helpers/node-fixture.js';
import { pledger, PROJECT } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

/** Packages that the cron path of the node agent must not load. */
const HEAVY = ['typebox', 'ajv', 'ajv-formats', 'nunjucks', 'yaml', 'fastify', 'kysely', 'execa', 'tar', 'node-cron', 'pg'];

interface TracedRun {
  exitCode: number;
  stderr: string;
  json: () => { results: { item: string; status: string }[] };
  /** Names of the packages the process loaded, and the project modules (dist/...). */
  packages: Set<string>;
  modules: string[];
  children: number;
}

describe('node commands started by cron', () => {
  let fixture: NodeFixture;
  let config: string;

  /**
   * `pledger node COMMAND` as cron runs it (or with `--json` first, which only commander
   * understands), as the agent's user, with its module loads and child processes recorded.
   */
  async function traced(command: string, form: 'plain' | 'global-json' = 'plain'): Promise<TracedRun> {
    const trace = path.join(fixture.agent.home, `trace-${command}-${Math.random().toString(36).slice(2)}`);
    const counted = `${trace}.children`;
    const hooks = ['trace-modules.mjs', 'count-children.mjs'].map((file) => `--import "${path.join(PROJECT, 'scripts', file)}"`).join(' ');
    const args = form === 'plain' ? ['node', command, '--config', config, '--json'] : ['--json', 'node', command, '--config', config];
    const run = await pledger(args, {
      user: fixture.agent,
      env: { NODE_OPTIONS: hooks, PLEDGER_TRACE_MODULES: trace, PLEDGER_COUNT_CHILDREN: counted },
    });
    const urls = readFileSync(trace, 'utf8').split('\n').filter(Boolean);
    const packages = new Set(urls.map((url) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)?.[1]).filter((name): name is string => Boolean(name)));
    const modules = urls.filter((url) => url.includes('/dist/')).map((url) => url.slice(url.indexOf('/dist/') + 1));
    return { exitCode: run.exitCode, stderr: run.stderr, json: run.json as TracedRun['json'], packages, modules, children: Number(readFileSync(counted, 'utf8')) };
  }

  const heavyIn = (run: TracedRun) => HEAVY.filter((name) => run.packages.has(name));

  beforeAll(async () => {
    fixture = await startNodeFixture('startup-node', '127.49.0.1');
    config = path.join(fixture.agent.home, 'node.json');
    const release = writeTree({
      'software.yaml': [
        'name: idle',
        'version: 1.0.0',
        'parts:',
        '  app:',
        '    files: [app.sh]',
        '    build: [[/bin/chmod, "755", app.sh]]',
        'software-types:',
        '  default:',
        '    files:',
        '      etc/title.txt: title.njk',
        '    services:',
        '      idle: [/bin/sleep, "100000"]',
        '    promises:',
        '      running: { process: idle }',
        '',
      ].join('\n'),
      'app.sh': '#!/bin/sh\necho idle\n',
      'title.njk': '{{ instance.title }}\n',
    });
    expect((await pledger(['software', 'publish', release], { env: fixture.asAdmin })).exitCode).toBe(0);
    expect((await pledger(['supply', 'idle', fixture.nodeName], { env: fixture.asAdmin })).exitCode).toBe(0);
    expect((await fixture.node('software')).exitCode).toBe(0);
    expect((await pledger(['request', 'quiet', 'idle'], { env: fixture.asUser })).exitCode).toBe(0);
  });

  afterAll(async () => {
    await fixture?.close();
  });

  it('builds nothing, loads no heavy module and starts no process when the software is built', async () => {
    const run = await traced('software');
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.json().results).toEqual([{ item: 'idle@1.0.0', status: 'unchanged' }]);
    expect(run.children).toBe(0);
    expect(heavyIn(run)).toEqual([]);
    expect(run.modules.filter((module) => module.startsWith('dist/master/'))).toEqual([]);
    // The validators compiled at build time check the desired state.
    expect(run.modules).toContain('dist/slave/validators.generated.js');
    // Nor is the whole command line built for it.
    expect(run.packages.has('@commander-js/extra-typings')).toBe(false);
    expect(run.modules).not.toContain('dist/cli/program.js');
  });

  it('answers the same through the full command line, when the form is not the plain one', async () => {
    const run = await traced('software', 'global-json');
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.json().results).toEqual([{ item: 'idle@1.0.0', status: 'unchanged' }]);
    expect(run.packages.has('@commander-js/extra-typings')).toBe(true);
    expect(run.children).toBe(0);
    expect(heavyIn(run)).toEqual([]);
  });

  it('loads the template engine only for the run that deploys, and nothing heavy for the runs after it', async () => {
    const deploying = await traced('instance');
    expect(deploying.exitCode, deploying.stderr).toBe(0);
    expect(deploying.json().results).toEqual([expect.objectContaining({ status: 'done' })]);
    // The trace sees what the command loads: rendering needs nunjucks.
    expect(deploying.packages.has('nunjucks')).toBe(true);

    const again = await traced('instance');
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.json().results).toEqual([expect.objectContaining({ status: 'unchanged' })]);
    expect(again.children).toBe(0);
    expect(heavyIn(again)).toEqual([]);
  });

  it('checks promises and sends events without loading anything heavy', async () => {
    const promise = await traced('promise');
    expect(promise.exitCode, promise.stderr).toBe(0);
    expect(heavyIn(promise)).toEqual([]);
    expect(promise.children).toBe(0);

    const report = await traced('report');
    expect(report.exitCode, report.stderr).toBe(0);
    expect(heavyIn(report)).toEqual([]);
    expect(report.children).toBe(0);
  });
});

describe('documents from the master, checked by the validators compiled at build time', () => {
  let server: Server;
  let scratch: string;
  let answer: unknown;

  beforeAll(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), 'pledger-startup-'));
    server = createServer((request, response) => {
      if (request.url === '/api/v1/node/desired-state') {
        response.setHeader('content-type', 'application/json');
        response.end(JSON.stringify(answer));
      } else {
        response.statusCode = 404;
        response.end('{}');
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });

  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    rmSync(scratch, { recursive: true, force: true });
  });

  it('refuses a desired state that does not match its schema, says where, and saves nothing', async () => {
    const root = path.join(scratch, 'root');
    const config = path.join(scratch, 'node.json');
    const address = server.address() as { port: number };
    writeFileSync(config, JSON.stringify({ masterUrl: `http://127.0.0.1:${address.port}`, credential: 'secret', root, partitions: 1, ipBase: '127.49.1.1' }), { mode: 0o600 });

    answer = { node: 'n1', software: 'everything', partitions: [] };
    const wrongType = await pledger(['node', 'software', '--config', config]);
    expect(wrongType.exitCode).not.toBe(0);
    expect(wrongType.stderr).toMatch(/invalid desired state from the master: software must be array/);
    expect(existsSync(desiredStatePath(root))).toBe(false);

    answer = { node: 'n1', software: [{ name: 'x', version: '1.0.0', hash: '../../etc', state: 'available' }], partitions: [] };
    const badHash = await pledger(['node', 'instance', '--config', config]);
    expect(badHash.exitCode).not.toBe(0);
    expect(badHash.stderr).toMatch(/invalid desired state from the master: software\.0\.hash must match pattern/);
    expect(existsSync(desiredStatePath(root))).toBe(false);

    // The same master with a valid document: accepted and saved, so the checks above were the schema's.
    answer = { node: 'n1', software: [], partitions: [] };
    const valid = await pledger(['node', 'software', '--config', config, '--json']);
    expect(valid.exitCode, valid.stderr).toBe(0);
    expect(JSON.parse(readFileSync(desiredStatePath(root), 'utf8'))).toMatchObject({ state: answer });
  });
});
