/** `pledger node report`: sending the events that wait in the outbox. */
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
    try {
      return await outbox.flush(connectMaster(config), log, { respectRetryDelay });
    } finally {
      outbox.close();
    }
  });
}
