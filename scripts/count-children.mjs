/**
 * `node --import ./scripts/count-children.mjs ...` writes, when the program exits, how
 * many child processes it started to the file named by $PLEDGER_COUNT_CHILDREN: every
 * asynchronous child (spawn, exec, execFile, fork: one ChildProcess each) and every
 * synchronous one (spawnSync, execSync, execFileSync).
 */
import childProcess from 'node:child_process';
import diagnostics from 'node:diagnostics_channel';
import { writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

const file = process.env.PLEDGER_COUNT_CHILDREN;
if (file) {
  let started = 0;
  diagnostics.subscribe('child_process', () => started++);
  for (const name of ['spawnSync', 'execSync', 'execFileSync']) {
    const original = childProcess[name];
    childProcess[name] = (...args) => {
      started++;
      return original(...args);
    };
  }
  syncBuiltinESMExports();
  process.on('exit', () => writeFileSync(file, String(started)));
}
