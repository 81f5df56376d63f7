/** Running the supervisor in this process until SIGTERM, SIGINT or a shutdown request. */
import { PledgerError } from '../protocol/errors.js';
import type { SupervisorSettings } from './supervisor-settings.js';
import { errorMessage } from './files.js';
import { withLock } from './lock.js';
import type { Logger } from './log.js';
import { lockPath } from './paths.js';
import { Supervisor } from './supervisor.js';

/** Returns false at once when another supervisor already runs for this root. */
export async function runSupervisor(root: string, settings: SupervisorSettings, log: Logger): Promise<boolean> {
  try {
    await withLock(lockPath(root, 'supervisor'), 'supervising this node', async () => {
      const supervisor = new Supervisor(root, settings, log);
      const stop = () => void supervisor.shutdown(false);
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      try {
        await supervisor.start();
        await supervisor.finished;
      } finally {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
      }
    });
    return true;
  } catch (error) {
    if (error instanceof PledgerError && error.code === 'CONFLICT') {
      log.info('a supervisor already runs for this node', { root, reason: errorMessage(error) });
      return false;
    }
    throw error;
  }
}
