/** What one run did to one item (a software release or a partition), for the CLI to print. */
export interface ItemResult {
  item: string;
  /** `waiting`: an instance waits for its sub-instances to publish; not a failure. */
  status: 'unchanged' | 'done' | 'failed' | 'waiting';
  message?: string;
  /** Set on a failure that is a promise not kept (the CLI exits 2 when every failure is one). */
  promiseFailure?: true;
}

/** What one run of the agent did. */
export interface RunReport {
  /** One per software release or partition that has, or had, something to do. */
  results: ItemResult[];
  /**
   * True when the master could not be reached (for the desired state, a download or the
   * events): the run went on from the saved desired state and the events wait in the outbox.
   */
  offline: boolean;
}
