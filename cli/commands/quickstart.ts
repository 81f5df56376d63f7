/**
 * `pledger quickstart`: the embedded default on one machine. A master on a SQLite file
 * (started in the background and left running), a node agent, the bundled `hello`
 * release supplied, one instance requested, deployed and checked. Every step is
 * idempotent: running it again reuses what is there.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import type { InstanceRequest } from '../../protocol/api.js';
import { MasterClient } from '../../protocol/client.js';
import { PledgerError } from '../../protocol/errors.js';
import { fields, print } from '../output.js';
import { DEFAULT_MASTER_PORT, INSTALL_ROOT } from '../settings.js';
import { describeInstance, waitUntilReady } from './instances.js';
import { globals } from './globals.js';

const NODE_NAME = 'local';
const TITLE = 'hello-world';
const DEFAULT_DIR = path.join(homedir(), '.pledger', 'quickstart');

export function registerQuickstartCommand(program: Command): void {
  program
    .command('quickstart')
    .description('run a master and a node on this machine and deploy the hello release')
    .option('--dir <dir>', 'where the master and node keep their files', DEFAULT_DIR)
    .option('--port <port>', 'the master port', String(DEFAULT_MASTER_PORT))
    .option('--greeting <text>', 'what the hello instance answers')
    .option('--down', 'destroy the instance, wipe its partition and stop the master')
    .action(async (options, command) => {
      const g = globals(command);
      const { initMaster } = await import('../../master/server.js');
      const { createLogger, formatNode, installSoftware, processInstances, readNodeConfig, resolveNodeConfig, writeNodeConfig } = await import(
        '../../slave/index.js'
      );
      const say = (line: string) => {
        if (!g.json) process.stderr.write(`${line}\n`);
      };
      const dir = path.resolve(options.dir);
      const masterDir = path.join(dir, 'master');
      const operatorFile = path.join(dir, 'operator.json');
      const nodeConfigFile = path.join(dir, 'node.json');
      await mkdir(masterDir, { recursive: true, mode: 0o700 });
      const url = `http://127.0.0.1:${options.port}`;
      if (options.down) {
        await down({ url, operatorFile, nodeConfigFile, masterDir, say });
        print(g, { down: true }, () => 'the quickstart instance is destroyed and the master stopped');
        return;
      }

      if (!existsSync(operatorFile)) {
        say('creating the master database');
        const { token } = await initMaster(`sqlite:${path.join(masterDir, 'master.db')}`, 'admin');
        await writeFile(operatorFile, `${JSON.stringify({ master: url, token }, null, 2)}\n`, { mode: 0o600 });
      }
      const { token } = JSON.parse(await readFile(operatorFile, 'utf8')) as { token: string };
      const client = new MasterClient({ url, token });

      if (!(await healthy(url))) {
        say(`starting the master on ${url}`);
        const log = openSync(path.join(masterDir, 'master.log'), 'a');
        const child = spawn(process.execPath, [path.join(INSTALL_ROOT, 'dist', 'cli', 'main.js'), 'master', 'serve', '--data-dir', masterDir, '--port', options.port], {
          detached: true,
          stdio: ['ignore', log, log],
        });
        child.unref();
        await writeFile(path.join(masterDir, 'master.pid'), `${child.pid}\n`);
        if (!(await waitFor(() => healthy(url), 20_000))) {
          throw new PledgerError('MASTER_UNREACHABLE', `the master did not start: see ${path.join(masterDir, 'master.log')}`);
        }
      }

      if (!existsSync(nodeConfigFile)) {
        say(`registering node "${NODE_NAME}"`);
        const { credential } = await client.nodes.register({ name: NODE_NAME });
        await writeNodeConfig(nodeConfigFile, resolveNodeConfig({ masterUrl: url, credential, root: path.join(dir, 'node') }));
      }
      const config = await readNodeConfig(nodeConfigFile);
      const log = createLogger(Boolean(g.json) || !process.stderr.isTTY);
      await formatNode(config, log);
      await client.supplies.set({ software: 'hello', node: NODE_NAME });

      say('building the hello release');
      const built = await installSoftware(config, log);
      const failed = built.results.find((r) => r.status === 'failed');
      if (failed) throw new PledgerError('NODE_FAILURE', `building ${failed.item} failed: ${failed.message ?? ''}`);

      const request: InstanceRequest = { software: 'hello', state: 'started' };
      if (options.greeting !== undefined) request.parameters = { greeting: options.greeting };
      await client.instances.request(TITLE, request);
      say(`deploying instance "${TITLE}"`);
      await processInstances(config, log);
      const view = await waitUntilReady(client, TITLE, 60);
      const answer = view.connection.url ? await (await fetch(view.connection.url)).text() : '';

      const sameDir = `${options.dir === DEFAULT_DIR ? '' : ` --dir ${dir}`}${options.port === String(DEFAULT_MASTER_PORT) ? '' : ` --port ${options.port}`}`;
      print(g, { master: url, token, instance: view, answer }, (v) =>
        [
          describeInstance(v.instance),
          '',
          fields([['it answers', v.answer.trim()]]),
          '',
          'Talk to this master with:',
          `  export PLEDGER_MASTER_URL=${v.master} PLEDGER_TOKEN=${v.token}`,
          `  scripts/pledger list`,
          `  scripts/pledger request ${TITLE} hello --parameters greeting='Hi there' && scripts/pledger node instance --config ${nodeConfigFile}`,
          `Undo it all (instance destroyed, master stopped): scripts/pledger quickstart --down${sameDir}`,
        ].join('\n'),
      );
    });
}

/** Undoes the quickstart: destroys the instance (the node wipes it), then stops the master. */
async function down(where: { url: string; operatorFile: string; nodeConfigFile: string; masterDir: string; say: (line: string) => void }): Promise<void> {
  const { processInstances, readNodeConfig, createLogger } = await import('../../slave/index.js');
  if (existsSync(where.operatorFile) && (await healthy(where.url))) {
    const { token } = JSON.parse(await readFile(where.operatorFile, 'utf8')) as { token: string };
    const client = new MasterClient({ url: where.url, token });
    const present = await client.instances.list();
    if (present.some((i) => i.title === TITLE)) {
      where.say(`destroying instance "${TITLE}"`);
      await client.instances.destroy(TITLE);
      await processInstances(await readNodeConfig(where.nodeConfigFile), createLogger(!process.stderr.isTTY));
    }
  }
  const pidFile = path.join(where.masterDir, 'master.pid');
  if (existsSync(pidFile)) {
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    where.say(`stopping the master (pid ${pid})`);
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
    await waitFor(async () => !(await healthy(where.url)), 10_000);
    await rm(pidFile, { force: true });
  }
}

async function healthy(url: string): Promise<boolean> {
  try {
    const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
    return response.ok;
  } catch {
    return false;
  }
}

async function waitFor(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return false;
}
