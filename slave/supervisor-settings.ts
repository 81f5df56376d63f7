/**
 * The supervisor's settings, in a module of their own: the supervisor process loads
 * this and not the configuration module (and its schema validator), to stay small.
 */
export interface SupervisorSettings {
  /** Wait before the second restart; the first is immediate. Doubles at each restart. */
  backoffFirstMs: number;
  backoffMaxMs: number;
  /** A service up this long is healthy again: its next crash restarts it at once. */
  resetAfterMs: number;
  /** This many exits within crashLoopWindowMs is a crash loop: reported, and a bang asked for. */
  crashLoopExits: number;
  crashLoopWindowMs: number;
  /** A service log above this size is rotated (copied to NAME.log.1, then emptied). */
  logMaxBytes: number;
  /** Rotated logs kept: NAME.log.1 to NAME.log.N. */
  logKeep: number;
  logCheckMs: number;
  /** A supervisor with nothing to supervise this long exits: the next command that needs it starts it again. */
  idleExitMs: number;
}

export const SUPERVISOR_DEFAULTS: SupervisorSettings = {
  backoffFirstMs: 1000,
  backoffMaxMs: 5 * 60_000,
  resetAfterMs: 10 * 60_000,
  crashLoopExits: 5,
  crashLoopWindowMs: 2 * 60_000,
  logMaxBytes: 10 * 1024 * 1024,
  logKeep: 3,
  logCheckMs: 10_000,
  idleExitMs: 5 * 60_000,
};
