/** `pledger node ...`: configuring a node and running its agent once. */
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { PledgerError } from '../../protocol/errors.js';
import { createLogger } from '../../slave/log.js';
import { defaultNodeConfigPath } from '../../slave/paths.js';
import { agentLogger, integer, NODE_EXIT, runCycle, runNodeDaemon } from '../node-runs.js';
import { print, table } from '../output.js';
import { checkMasterUrl } from '../settings.js';
import { globals } from './globals.js';
import { registerNodeAdminCommands } from './operator.js';

// Each command loads the parts of the node agent it runs, and only those.
const nodeConfig = () => import('../../slave/config.js');

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
    .option('--ip-base <ip>', 'address of the first partition, in 127.0.0.0/8 (default 127.A.B.1, A and B derived from the root)')
    .option('--port-base <port>', 'first port of the first partition (default 30000)')
    .option('--ports-per-partition <n>', 'ports given to each partition (default 10)')
    .option('--binary-cache <mode>', "use the master's binary cache of built parts: off (default), download, upload or both")
    .option('--binary-cache-key <key>', 'the binary cache key printed by `pledger node register` (needed unless the cache is off)')
    .option(...configOption)
    .action(async (options, command) => {
      const g = globals(command);
      const masterUrl = g.master ?? process.env.PLEDGER_MASTER_URL;
      if (!masterUrl) throw new PledgerError('BAD_REQUEST', 'no master given', { hint: 'pass --master URL or set PLEDGER_MASTER_URL' });
      checkMasterUrl(masterUrl, g.master !== undefined ? '--master' : 'PLEDGER_MASTER_URL');
      const { ipToNumber, numberToIp, resolveNodeConfig, writeNodeConfig } = await nodeConfig();
      const config = resolveNodeConfig(
        {
          masterUrl,
          credential: options.credential,
          root: path.resolve(options.root),
          partitions: integer(options.partitions, '--partitions'),
          ipBase: options.ipBase,
          portBase: integer(options.portBase, '--port-base'),
          portsPerPartition: integer(options.portsPerPartition, '--ports-per-partition'),
          binaryCache: binaryCacheSettings(options.binaryCache, options.binaryCacheKey),
        },
        '--root, --partitions, --ip-base, --port-base and --ports-per-partition',
      );
      await writeNodeConfig(options.config, config);
      const lastIp = numberToIp(ipToNumber(config.ipBase) + config.partitions - 1);
      const lastPort = config.portBase + config.partitions * config.portsPerPartition - 1;
      print(g, { config: options.config, ...config, credential: '(hidden)' }, (v) =>
        `wrote ${v.config}: ${v.partitions} partitions under ${v.root}, addresses ${v.ipBase}-${lastIp}, ports ${v.portBase}-${lastPort} (${v.portsPerPartition} each)`,
      );
    });

  node
    .command('format')
    .description('lay out the partitions under the node root and report them to the master')
    .option(...configOption)
    .action(async (options, command) => {
      const g = globals(command);
      const [{ readNodeConfig }, { formatNode }] = await Promise.all([nodeConfig(), import('../../slave/format.js')]);
      const config = await readNodeConfig(options.config);
      const partitions = await formatNode(config, agentLogger(g));
      print(g, partitions, (list) => table(['PARTITION', 'IP', 'PORTS'], list.map((p) => [p.reference, p.ip, `${p.ports.first}-${p.ports.last}`])));
    });

  const delayOption = ['--max-random-delay <seconds>', 'wait a random delay up to this first (for cron)'] as const;

  node
    .command('software')
    .description('build the software releases supplied to this node (once each)')
    .option(...configOption)
    .option(...delayOption)
    .action(async (options, command) => {
      await runCycle('software', options, globals(command));
    });

  node
    .command('instance')
    .description('bring every partition to the state the master asks for (services run under the node supervisor)')
    .option(...configOption)
    .option(...delayOption)
    .action(async (options, command) => {
      await runCycle('instance', options, globals(command));
    });

  node
    .command('promise')
    .description('check the promises whose interval has passed, and report their state (exit 2 when one fails)')
    .option(...configOption)
    .option(...delayOption)
    .action(async (options, command) => {
      await runCycle('promise', options, globals(command));
    });

  node
    .command('usage')
    .description('sample what each partition consumes, and queue the usage of every hour that ended')
    .option(...configOption)
    .option(...delayOption)
    .action(async (options, command) => {
      await runCycle('usage', options, globals(command));
    });

  node
    .command('report')
    .description('send the events waiting in the outbox (exit 3 when the master is unreachable)')
    .option(...configOption)
    .option(...delayOption)
    .option('--respect-retry-delay', 'after a failed send, wait until the retry delay has passed (what the daemon does)')
    .action(async (options, command) => {
      await runCycle('report', options, globals(command));
    });

  node
    .command('boot')
    .description('start the node supervisor, which brings back every started instance (for @reboot; needs no master)')
    .option(...configOption)
    .action(async (options, command) => {
      const g = globals(command);
      const [{ readNodeConfig }, { connectSupervisor }] = await Promise.all([nodeConfig(), import('../../slave/supervisor-client.js')]);
      const config = await readNodeConfig(options.config);
      const supervisor = await connectSupervisor(config, agentLogger(g));
      const status = await supervisor.status();
      const rows = Object.entries(status).flatMap(([partition, p]) =>
        Object.entries(p.services).map(([service, s]) => ({ partition, instance: p.instance.title, service, state: s.state, pid: s.pid })),
      );
      print(g, rows, (list) =>
        list.length === 0 ? 'supervisor running; no service to run' : table(['PARTITION', 'INSTANCE', 'SERVICE', 'STATE', 'PID'], list.map((r) => [r.partition, r.instance, r.service, r.state, String(r.pid ?? '')])),
      );
    });

  node
    .command('supervisor')
    .description('run the node supervisor in the foreground (node commands start it detached when it is not running)')
    .option(...configOption)
    .action(async (options) => {
      const [{ readNodeConfig, supervisorSettings }, { runSupervisor }] = await Promise.all([nodeConfig(), import('../../slave/supervisor-run.js')]);
      const config = await readNodeConfig(options.config);
      const ran = await runSupervisor(config.root, supervisorSettings(config), createLogger(true));
      if (!ran) process.exitCode = NODE_EXIT.failure;
    });

  node
    .command('daemon')
    .description('run every cycle (software, instance, promise, usage, report) on its schedule, each in a child process, until stopped')
    .option(...configOption)
    .action(async (options) => {
      await runNodeDaemon(options.config);
    });

  node
    .command('cron')
    .description('print crontab lines for the one-shot commands and @reboot (an alternative to the daemon)')
    .option(...configOption)
    .option('--max-random-delay <seconds>', 'random delay of each run, in seconds', '30')
    .action(async (options) => {
      const [{ readNodeConfig }, { renderCrontab }] = await Promise.all([nodeConfig(), import('../../slave/cron.js')]);
      const config = await readNodeConfig(options.config);
      const entry = process.argv[1] ? path.resolve(process.argv[1]) : '';
      process.stdout.write(
        renderCrontab({
          root: config.root,
          configFile: path.resolve(options.config),
          pledger: [process.execPath, entry],
          jitterSeconds: integer(options.maxRandomDelay, '--max-random-delay') ?? 30,
        }),
      );
    });
}

const BINARY_CACHE_MODES = { download: [true, false], upload: [false, true], both: [true, true] } as const;

function binaryCacheSettings(mode: string | undefined, publicKey: string | undefined) {
  if (mode === undefined || mode === 'off') {
    if (publicKey !== undefined && mode === undefined) throw new PledgerError('BAD_REQUEST', '--binary-cache-key without --binary-cache: say download, upload or both');
    return undefined;
  }
  if (!Object.hasOwn(BINARY_CACHE_MODES, mode)) throw new PledgerError('BAD_REQUEST', `--binary-cache ${mode}: expected off, download, upload or both`);
  if (!publicKey) throw new PledgerError('BAD_REQUEST', `--binary-cache ${mode} needs --binary-cache-key`, { hint: 'it is printed by `pledger node register` and `pledger node binary-cache-key`' });
  const [download, upload] = BINARY_CACHE_MODES[mode as keyof typeof BINARY_CACHE_MODES];
  return { download, upload, publicKey };
}
