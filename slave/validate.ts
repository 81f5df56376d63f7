/**
 * Every document the agent reads from the network or from disk is checked against
 * its schema before use: a bad one gets a clear error and changes nothing.
 *
 * The checks are Ajv's, compiled at build time from the TypeBox schemas into
 * validators.generated.ts (scripts/generate-validators.mjs), so that a run of the
 * agent loads neither TypeBox nor Ajv.
 */
import type { ErrorObject } from 'ajv';
import { PledgerError, type ErrorCode } from '../protocol/errors.js';

/** A compiled check: true when `value` matches; `errors` says why not. */
export interface Validator {
  (value: unknown): boolean;
  errors?: ErrorObject[] | null;
}

/** Returns `value` typed as `T` when `validate` accepts it, or throws PledgerError(code). */
export function checkValue<T>(validate: Validator, value: unknown, what: string, code: ErrorCode = 'BAD_REQUEST', hint?: string): T {
  if (validate(value)) return value as T;
  const problems = (validate.errors ?? []).map(describe).join('; ');
  throw new PledgerError(code, `invalid ${what}: ${problems}`, hint === undefined ? {} : { hint });
}

function describe(error: ErrorObject): string {
  const where = error.instancePath.split('/').slice(1).join('.') || '(top)';
  return `${where} ${error.message ?? 'is invalid'}`;
}
