/**
 * After the whole run: the node supervisors that tests started for their temporary
 * node roots are ended, so that a test run leaves no process behind. (Each would also
 * go away by itself once idle, or once its root is removed.)
 */
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const SUPERVISOR = path.resolve(import.meta.dirname, '..', 'dist', 'slave', 'supervisor-main.js');

export default function setup(): () => void {
  return () => {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      let argv: string[];
      try {
        argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      } catch {
        continue;
      }
      if (argv[1] === SUPERVISOR && argv[2]?.startsWith(tmpdir())) {
        try {
          process.kill(Number(entry), 'SIGTERM');
        } catch {
          // already gone
        }
      }
    }
  };
}
