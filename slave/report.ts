/** `pledger node report`: sending the events that wait in the outbox. */
import { PledgerError } from '../protocol/errors.js';
import type { NodeConfig } from './config.js';
import { withLock } from './lock.js';
import type { Logger } from './log.js';
import { connectMaster } from './master.js';
import { openOutbox, type FlushResult } from './outbox.js';
import { lockPath } from './paths.js';

/** Sends what waits in the outbox; with `respectRetryDelay`, only once the delay after a failure has passed. */
export async function reportEvents(config: NodeConfig, log: Logger, respectRetryDelay = false): Promise<FlushResult> {
  return withLock(lockPath(config.root, 'report'), 'sending events', async () => {
    const outbox = openOutbox(config);
    const master = connectMaster(config);
    let flushed: FlushResult;
    try {
      flushed = await outbox.flush(master, log, { respectRetryDelay });
    } finally {
      outbox.close();
    }
    // With nothing to send, the master was not asked anything: ask it whether it is
    // there, so that the run says the same as one that had events to send.
    if (flushed.sent === 0 && flushed.pending === 0 && !flushed.offline) {
      try {
        await master.raw('GET', '/health');
      } catch (error) {
        if (!(error instanceof PledgerError && error.code === 'MASTER_UNREACHABLE')) throw error;
        log.error('master unreachable', { reason: error.message });
        return { ...flushed, offline: true };
      }
    }
    return flushed;
  });
}
