/**
 * The supervisor process: `node supervisor-main.js ROOT SETTINGS_JSON`. Started
 * detached by the agent's commands (or run in the foreground by `pledger node
 * supervisor`); one per node root, guarded by a lock.
 */
import { SUPERVISOR_DEFAULTS, type SupervisorSettings } from './supervisor-settings.js';
import { createLogger } from './log.js';
import { runSupervisor } from './supervisor-run.js';

const [root, settings] = process.argv.slice(2);
if (!root) {
  process.stderr.write('usage: supervisor-main.js ROOT [SETTINGS_JSON]\n');
  process.exit(2);
}
const parsed = settings ? (JSON.parse(settings) as Partial<SupervisorSettings>) : {};
await runSupervisor(root, { ...SUPERVISOR_DEFAULTS, ...parsed }, createLogger(true));
