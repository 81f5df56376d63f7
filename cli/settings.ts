/**
 * Where the CLI finds things: the master's URL and the token (flags, then environment,
 * then the file `pledger login` writes), and the folders of this installation.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MasterClient } from '../protocol/client.js';
import { PledgerError } from '../protocol/errors.js';

export const DEFAULT_MASTER_PORT = 8600;

/** The folder of this installation (the one with package.json and software-releases/). */
const here = path.dirname(fileURLToPath(import.meta.url));
// cli/ in the sources, dist/cli/ once compiled.
export const INSTALL_ROOT = path.resolve(here, path.basename(path.dirname(here)) === 'dist' ? '../..' : '..');
export const BUNDLED_SOFTWARE_DIR = path.join(INSTALL_ROOT, 'software-releases');

export interface ClientSettings {
  master: string;
  token: string;
}

export function clientConfigPath(): string {
  return process.env.PLEDGER_CONFIG ?? path.join(homedir(), '.config', 'pledger', 'client.json');
}

async function readClientConfig(): Promise<Partial<ClientSettings>> {
  try {
    return JSON.parse(await readFile(clientConfigPath(), 'utf8')) as Partial<ClientSettings>;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new PledgerError('BAD_REQUEST', `cannot read ${clientConfigPath()}: ${(error as Error).message}`, {
      hint: 'run `pledger login` again',
    });
  }
}

export async function writeClientConfig(settings: ClientSettings): Promise<string> {
  const file = clientConfigPath();
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  // The file holds a token: readable by its owner only.
  await writeFile(file, `${JSON.stringify(settings, null, 2)}\n`, { mode: 0o600 });
  return file;
}

/**
 * A master URL is http:// or https:// with a host: `127.0.0.1:8600` alone would be
 * taken for a URL of scheme "127.0.0.1" and fail as an unreachable master, which sends
 * the user looking for a network problem instead of a typo.
 */
export function checkMasterUrl(value: string, source: string): string {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.hostname === '') {
    const guess = /^[\w.-]+(:\d+)?(\/.*)?$/.test(value) ? ` (e.g. http://${value})` : '';
    throw new PledgerError('BAD_REQUEST', `${source} ${value} is not an http:// or https:// URL`, { hint: `write the master's URL with its scheme${guess}` });
  }
  return value;
}

/** A client for the user API, from --master/--token, PLEDGER_MASTER_URL/PLEDGER_TOKEN, or the login file. */
export async function userClient(flags: { master?: string; token?: string }): Promise<MasterClient> {
  const saved = await readClientConfig();
  const [master, source] =
    flags.master !== undefined ? [flags.master, '--master'] : process.env.PLEDGER_MASTER_URL ? [process.env.PLEDGER_MASTER_URL, 'PLEDGER_MASTER_URL'] : [saved.master, clientConfigPath()];
  const token = flags.token ?? process.env.PLEDGER_TOKEN ?? saved.token;
  if (!master) throw new PledgerError('BAD_REQUEST', 'no master given', { hint: 'pass --master URL, set PLEDGER_MASTER_URL, or run `pledger login`' });
  checkMasterUrl(master, source);
  if (!token) throw new PledgerError('UNAUTHENTICATED', 'no API token given');
  return new MasterClient({ url: master, token });
}
