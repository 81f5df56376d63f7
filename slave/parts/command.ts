/**
 * Running one build step: an argv list, no shell, a clean environment, a timeout, its
 * output appended to the build log, in a process group of its own so that whatever it
 * left running dies with it.
 */
import { appendFile, open } from 'node:fs/promises';
import { execa } from 'execa';
import { fileDescriptor } from '../processes.js';
import { shellQuote } from '../render.js';

export interface StepOptions {
  cwd: string;
  env: Record<string, string>;
  log: string;
  timeoutS: number;
}

export async function runStep(argv: string[], options: StepOptions): Promise<void> {
  await appendFile(options.log, `$ ${argv.map(shellQuote).join(' ')}\n`);
  const [command = '', ...args] = argv;
  const output = await open(options.log, 'a');
  try {
    const child = execa(command, args, {
      cwd: options.cwd,
      env: options.env,
      extendEnv: false,
      detached: true,
      stdin: 'ignore',
      stdout: fileDescriptor(output.fd),
      stderr: fileDescriptor(output.fd),
      timeout: options.timeoutS * 1000,
      // The group is killed below; execa's own kill would reach the leader only.
      killSignal: 'SIGKILL',
      reject: false,
      buffer: false,
    });
    const result = await child;
    if (child.pid !== undefined) killGroup(child.pid);
    if (!result.failed) return;
    if (result.timedOut) throw new Error(`${command} timed out after ${options.timeoutS} s`);
    if (result.exitCode !== undefined) throw new Error(`${command} exited with code ${result.exitCode}`);
    if (result.signal) throw new Error(`${command} was killed by ${result.signal}`);
    throw new Error(`cannot run ${command}: ${result.originalMessage || result.shortMessage}`);
  } finally {
    await output.close();
  }
}

/** Runs a command and returns its standard output; its errors go to the build log. */
export async function captureStep(argv: string[], options: StepOptions): Promise<string> {
  await appendFile(options.log, `$ ${argv.map(shellQuote).join(' ')}\n`);
  const [command = '', ...args] = argv;
  const result = await execa(command, args, {
    cwd: options.cwd,
    env: options.env,
    extendEnv: false,
    stdin: 'ignore',
    timeout: options.timeoutS * 1000,
    reject: false,
  });
  if (result.stderr) await appendFile(options.log, `${String(result.stderr).trimEnd()}\n`);
  if (result.failed) {
    throw new Error(result.timedOut ? `${command} timed out after ${options.timeoutS} s` : `${command} failed: ${String(result.stderr).trim().split('\n').pop() ?? ''}`);
  }
  return String(result.stdout);
}

function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // Nothing left in the group: the usual case.
  }
}
