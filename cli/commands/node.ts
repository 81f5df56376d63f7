/** `pledger node ...`: configuring a node and running its agent once. */
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { PledgerError } from '../../protocol/errors.js';
import { defaultNodeConfigPath } from '../../slave/paths.js';
import type { ItemResult } from '../../slave/result.js';
import { print, table } from '../output.js';
import { globals } from './globals.js';
import { registerNodeAdminCommands } from './operator.js';

// The node agent loads when a node command runs, so that other commands start fast.
const agent = () => import('../../slave/index.js');

/** Exit codes of one-shot node runs. */
export const NODE_EXIT = { success: 0, failure: 1, offline: 3 } as const;

function printResults(g: { json?: boolean }, results: ItemResult[], offline: boolean): void {
  print(g, { results, offline }, (v) =>
    [
      v.results.length === 0 ? 'nothing to do' : table(['ITEM', 'STATUS', 'MESSAGE'], v.results.map((r) => [r.item, r.status, r.message ?? ''])),
      ...(v.offline ? ['the master was unreachable: events are kept and will be sent at the next run'] : []),
    ].join('\n'),
  );
  process.exitCode = results.some((r) => r.status === 'failed') ? NODE_EXIT.failure : offline ? NODE_EXIT.offline : NODE_EXIT.success;
}

export function registerNodeCommands(program: Command): void {
  const node = program.command('node').description('node agent commands, and node registration (operators)');
  registerNodeAdminCommands(node);
  const configOption = ['--config <file>', 'the node configuration file', defaultNodeConfigPath()] as const;

  node
    .command('configure')
    .description('write the node configuration: master URL (--master), credential, root and partitions')
    .requiredOption('--credential <credential>', 'the credential printed by `pledger node register`')
    .option('--root <dir>', 'the folder that holds partitions and software', path.join(process.env.HOME ?? '/tmp', 'pledger-node'))
    .option('--partitions <n>', 'how many partitions (default 4)')
    .option('--ip-base <ip>', 'address of the first partition, in 127.0.0.0/8 (default 127.42.0.1)')
    .option('--port-base <port>', 'first port of the first partition (default 30000)')
    .option('--ports-per-partition <n>', 'ports given to each partition (default 10)')
    .option(...configOption)
    .action(async (options, command) => {
      const g = globals(command);
      const masterUrl = g.master ?? process.env.PLEDGER_MASTER_URL;
      if (!masterUrl) throw new PledgerError('BAD_REQUEST', 'no master given', { hint: 'pass --master URL or set PLEDGER_MASTER_URL' });
      const { resolveNodeConfig, writeNodeConfig } = await agent();
      const config = resolveNodeConfig(
        {
          masterUrl,
          credential: options.credential,
          root: path.resolve(options.root),
          partitions: integer(options.partitions, '--partitions'),
          ipBase: options.ipBase,
          portBase: integer(options.portBase, '--port-base'),
          portsPerPartition: integer(options.portsPerPartition, '--ports-per-partition'),
        },
        '--root, --partitions, --ip-base and --port-base',
      );
      await writeNodeConfig(options.config, config);
      print(g, { config: options.config, ...config, credential: '(hidden)' }, (v) => `wrote ${v.config}`);
    });

  node
    .command('format')
    .description('lay out the partitions under the node root and report them to the master')
    .option(...configOption)
    .action(async (options, command) => {
      const g = globals(command);
      const { createLogger, formatNode, readNodeConfig } = await agent();
      const config = await readNodeConfig(options.config);
      const partitions = await formatNode(config, createLogger(Boolean(g.json) || !process.stderr.isTTY));
      print(g, partitions, (list) => table(['PARTITION', 'IP', 'PORTS'], list.map((p) => [p.reference, p.ip, `${p.ports.first}-${p.ports.last}`])));
    });

  node
    .command('software')
    .description('build the software releases supplied to this node (once each)')
    .option(...configOption)
    .action(async (options, command) => {
      const g = globals(command);
      const { createLogger, installSoftware, readNodeConfig } = await agent();
      const config = await readNodeConfig(options.config);
      const run = await installSoftware(config, createLogger(Boolean(g.json) || !process.stderr.isTTY));
      printResults(g, run.results, run.offline);
    });

  node
    .command('instance')
    .description('bring every partition to the state the master asks for')
    .option(...configOption)
    .action(async (options, command) => {
      const g = globals(command);
      const { createLogger, processInstances, readNodeConfig } = await agent();
      const config = await readNodeConfig(options.config);
      const run = await processInstances(config, createLogger(Boolean(g.json) || !process.stderr.isTTY));
      printResults(g, run.results, run.offline);
    });
}

function integer(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n)) throw new PledgerError('BAD_REQUEST', `${flag} ${value} is not a whole number`);
  return n;
}
