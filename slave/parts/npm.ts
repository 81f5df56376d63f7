/**
 * npm packages as a part: the release carries a package.json and its package-lock.json,
 * and `npm ci` installs exactly the locked tree into the part, checking every tarball
 * against the lock's integrity. Install scripts are not run: a package that needs a
 * build step gets it as a build command of the part, where it is seen.
 */
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { runStep, type StepOptions } from './command.js';

const CLEAN_PATH = '/usr/local/bin:/usr/bin:/bin';

export async function installNpmPackages(folder: string, partDir: string, workDir: string, options: Omit<StepOptions, 'cwd' | 'env'>): Promise<void> {
  await mkdir(path.join(workDir, 'home'), { recursive: true });
  for (const name of ['package.json', 'package-lock.json']) await copyFile(path.join(folder, name), path.join(partDir, name));
  const env = {
    PATH: CLEAN_PATH,
    HOME: path.join(workDir, 'home'),
    LANG: 'C.UTF-8',
    // The node's own registry settings (a mirror, a proxy) stay out: the lock names every URL.
    npm_config_cache: path.join(workDir, 'cache'),
    npm_config_update_notifier: 'false',
    // npm retries a tarball that fails its integrity check for minutes; the agent's own
    // backoff between builds is the retry, and a mismatch is reported at once.
    npm_config_fetch_retries: '0',
  };
  await runStep(['npm', 'ci', '--ignore-scripts', '--omit=dev', '--no-audit', '--no-fund', '--loglevel=warn'], { ...options, cwd: partDir, env });
}
