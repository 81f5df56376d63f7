/** `pledger node prune`: free the disk of releases and parts no supplied release uses. */
import type { Command } from '@commander-js/extra-typings';
import { defaultNodeConfigPath } from '../../slave/paths.js';
import { print, table } from '../output.js';
import { globals } from './globals.js';

export function registerNodePruneCommand(program: Command): void {
  const node = program.commands.find((c) => c.name() === 'node');
  if (!node) throw new Error('the node command must be registered first');
  node
    .command('prune')
    .description('remove built releases and parts that no supplied release uses any more')
    .option('--dry-run', 'only list what would be removed')
    .option('--config <file>', 'the node configuration file', defaultNodeConfigPath())
    .action(async (options, command) => {
      const g = globals(command);
      const { createLogger, readNodeConfig } = await import('../../slave/index.js');
      const { pruneNode } = await import('../../slave/parts/prune.js');
      const config = await readNodeConfig(options.config);
      const report = await pruneNode(config, createLogger(Boolean(g.json) || !process.stderr.isTTY), { dryRun: Boolean(options.dryRun) });
      print(g, report, (r) => {
        const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
        const freed = r.removed.reduce((sum, item) => sum + item.bytes, 0);
        return [
          r.removed.length === 0 ? 'nothing to prune' : table(['KIND', 'PATH', 'SIZE'], r.removed.map((item) => [item.kind, item.path, mib(item.bytes)])),
          `${options.dryRun ? 'would free' : 'freed'} ${mib(freed)}; kept ${r.kept.software} release(s) and ${r.kept.parts} part(s)`,
          ...(r.offline ? ['the master was unreachable: pruned against the last desired state'] : []),
        ].join('\n');
      });
    });
}
