/** Partition ids are `<node id>:<reference>`: an id names its node, and another node's never matches. */
export function partitionId(nodeId: string, reference: string): string {
  return `${nodeId}:${reference}`;
}

export function nodeOf(partitionId: string): string {
  return partitionId.slice(0, partitionId.lastIndexOf(':'));
}
