/** An instance that cannot be deployed until its sub-instances publish: the message says which. */
export class WaitingError extends Error {
  override name = 'WaitingError';
}
