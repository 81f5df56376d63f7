#!/usr/bin/env node
/**
 * The `pledger` executable: one program for the master, the node agent and the client.
 *
 * The node agent's cycles, which cron starts every minute, and its daemon, which runs for
 * months, start without commander and the modules of the other commands when they are
 * written plainly (see leanNodeCommand); everything else goes through the full command
 * line.
 */
import { leanNodeCommand } from './node-runs.js';

const lean = leanNodeCommand(process.argv.slice(2));
if (lean) await lean();
else await (await import('./program.js')).runProgram();
