/**
 * The sub-instances of an instance being deployed: its requests, rendered from its
 * software type, go to the master, which answers with what each child has published.
 *
 * The answer is kept in the partition, so that a node that restarts the instance
 * without its master (after a reboot, or when the supervisor lost it) renders it the
 * same way, as long as it would request the same children.
 */
import { isDeepStrictEqual } from 'node:util';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { ChildRequest, ChildrenState, ChildState, DesiredInstance } from '../protocol/api.js';
import type { MasterClient } from '../protocol/client.js';
import { PledgerError } from '../protocol/errors.js';
import { readJsonFile, writeFileAtomic } from './files.js';
import type { Logger } from './log.js';
import { PARTITION_PRIVATE_DIR } from './paths.js';
import { checkValue } from './validate.js';
import { ChildrenState as validateChildrenState } from './validators.generated.js';
import { WaitingError } from './waiting.js';

const CHILDREN_FILE = 'children.json';

interface SavedChildren {
  requests: ChildRequest[];
  children: Record<string, ChildState>;
}

/**
 * The state of each requested child, by request name. `fresh` asks the master even
 * when the saved answer would do (a new deployment); otherwise the saved answer is
 * used when the requests did not change. Throws WaitingError while a child is not ready.
 */
export async function resolveChildren(
  master: MasterClient,
  log: Logger,
  target: { partition: string; partitionDir: string; instance: DesiredInstance },
  requests: ChildRequest[],
  fresh: boolean,
): Promise<Record<string, ChildState>> {
  const file = path.join(target.partitionDir, PARTITION_PRIVATE_DIR, CHILDREN_FILE);
  const saved = (await readJsonFile(file).catch(() => undefined)) as SavedChildren | undefined;
  const usable = saved && isDeepStrictEqual(saved.requests, requests) ? saved.children : undefined;
  let children = fresh ? undefined : usable;
  if (!children) {
    try {
      const answer = await master.node.requestChildren(target.partition, {
        instance: target.instance.id,
        serial: target.instance.serial,
        requests,
      });
      children = checkValue<ChildrenState>(validateChildrenState, answer, 'answer to sub-instance requests', 'INTERNAL').children;
      await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      await writeFileAtomic(file, `${JSON.stringify({ requests, children } satisfies SavedChildren)}\n`, 0o600);
    } catch (error) {
      if (!(error instanceof PledgerError && error.code === 'MASTER_UNREACHABLE' && usable)) throw error;
      log.error('master unreachable: using the sub-instances it last described', { partition: target.partition });
      children = usable;
    }
  }
  const pending = Object.entries(children).filter(([, child]) => !child.ready);
  if (pending.length > 0) {
    const which = pending.map(([name, child]) => `${name} (${child.title}: ${child.status}${child.message ? `, ${child.message}` : ''})`);
    throw new WaitingError(`waiting for ${which.join(', ')}`);
  }
  return children;
}
