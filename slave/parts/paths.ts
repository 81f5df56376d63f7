/** Where parts live under the node's root; a module of its own so that a no-op run loads no builder. */
import path from 'node:path';

export const partsRoot = (root: string) => path.join(root, 'parts');
export const partPath = (root: string, hash: string) => path.join(root, 'parts', hash);
/** Written in every built part: what it was built from. */
export const PART_MANIFEST = '.pledger-part.json';
