/**
 * The whole `pledger` command line, built with commander: every command, its help and
 * its usage errors.
 */
import { Command } from '@commander-js/extra-typings';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { registerBillingCommands } from './commands/billing.js';
import { registerInstanceCommands } from './commands/instances.js';
import { registerMasterCommands } from './commands/master.js';
import { registerNodeCommands } from './commands/node.js';
import { registerNodePruneCommand } from './commands/node-prune.js';
import { registerOperatorCommands } from './commands/operator.js';
import { registerQuickstartCommand } from './commands/quickstart.js';
import { reportError } from './output.js';

export async function runProgram(): Promise<void> {
  const program = new Command()
    .name('pledger')
    .description('Pledger: a promise-theory service lifecycle engine with an ERP ledger')
    .version(packageVersion(), '--version', 'print the version of pledger')
    .option('--json', 'print machine-readable JSON')
    .option('--master <url>', 'the master URL (default: $PLEDGER_MASTER_URL or `pledger login`)')
    .option('--token <token>', 'your API token (default: $PLEDGER_TOKEN or `pledger login`)')
    .showHelpAfterError()
    // Settings made before the subcommands are added are inherited by them.
    .exitOverride();

  registerQuickstartCommand(program);
  registerInstanceCommands(program);
  registerOperatorCommands(program);
  registerNodeCommands(program);
  registerNodePruneCommand(program);
  registerMasterCommands(program);
  registerBillingCommands(program);

  try {
    await program.parseAsync();
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (typeof code === 'string' && code.startsWith('commander.')) {
      // commander has printed its own message (usage errors, --help, --version).
      process.exitCode = code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help' ? 0 : 2;
    } else {
      process.exitCode = reportError(program.opts(), error);
    }
  }
}

/** The version in package.json, found from the sources (cli/) or the build (dist/cli/). */
function packageVersion(): string {
  for (const up of ['..', path.join('..', '..')]) {
    try {
      return (JSON.parse(readFileSync(path.join(import.meta.dirname, up, 'package.json'), 'utf8')) as { version: string }).version;
    } catch {
      // Not there: the other layout.
    }
  }
  return 'unknown';
}
