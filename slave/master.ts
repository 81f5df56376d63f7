/**
 * The node's side of the master API: one client per run, the desired state pulled
 * with an ETag and remembered on disk so that a node without its master keeps
 * converging towards the last state it was given.
 */
import type { DesiredState } from '../protocol/api.js';
import { MasterClient } from '../protocol/client.js';
import { PledgerError } from '../protocol/errors.js';
import type { NodeConfig } from './config.js';
import { readJsonFile, writeFileAtomic } from './files.js';
import type { Logger } from './log.js';
import { desiredStatePath } from './paths.js';
import { checkValue } from './validate.js';
import * as validators from './validators.generated.js';

export function connectMaster(config: NodeConfig): MasterClient {
  return new MasterClient({ url: config.masterUrl, token: config.credential });
}

export interface PulledState {
  state: DesiredState;
  /** True when the master could not be reached and the saved copy was used. */
  offline: boolean;
}

interface SavedState {
  etag: string | null;
  state: DesiredState;
}

/**
 * Pulls the desired state: cheap when nothing changed (304 on the saved ETag), and
 * the saved copy when the master is unreachable. Without a saved copy there is nothing
 * to converge to, and the MASTER_UNREACHABLE error is thrown.
 */
export async function pullDesiredState(config: NodeConfig, master: MasterClient, log: Logger): Promise<PulledState> {
  const file = desiredStatePath(config.root);
  const saved = await readSavedState(file, log);
  let answer;
  try {
    answer = await master.answer.node.desiredState({ headers: saved?.etag ? { 'if-none-match': saved.etag } : {} });
  } catch (error) {
    if (error instanceof PledgerError && error.code === 'MASTER_UNREACHABLE' && saved) {
      log.error('master unreachable: using the last desired state', { reason: error.message });
      return { state: saved.state, offline: true };
    }
    throw error;
  }
  if (answer.status === 304) {
    // Only possible when we sent the ETag of a saved copy.
    if (saved) return { state: saved.state, offline: false };
    throw new PledgerError('INTERNAL', 'the master answered 304 to a request without If-None-Match');
  }
  // Checked, as everything from the network: the node trusts no answer it did not check.
  const state = checkValue<DesiredState>(validators.DesiredState, answer.body, 'desired state from the master', 'INTERNAL');
  const fresh: SavedState = { etag: answer.headers.get('etag'), state };
  await writeFileAtomic(file, `${JSON.stringify(fresh)}\n`, 0o600);
  return { state, offline: false };
}

async function readSavedState(file: string, log: Logger): Promise<SavedState | undefined> {
  try {
    const saved = (await readJsonFile(file)) as Partial<SavedState> | undefined;
    if (!saved?.state) return undefined;
    return { etag: saved.etag ?? null, state: checkValue<DesiredState>(validators.DesiredState, saved.state, 'saved desired state') };
  } catch (error) {
    log.error('ignoring the saved desired state', { file, reason: (error as Error).message });
    return undefined;
  }
}
