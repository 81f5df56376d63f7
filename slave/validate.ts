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
import { describeSchemaErrors } from '../protocol/schema-problems.js';

/** A compiled check: true when `value` matches; `errors` says why not. */
export interface Validator {
  (value: unknown): boolean;
  errors?: ErrorObject[] | null;
}

/** Returns `value` typed as `T` when `validate` accepts it, or throws PledgerError(code). */
export function checkValue<T>(validate: Validator, value: unknown, what: string, code: ErrorCode = 'BAD_REQUEST', hint?: string): T {
  if (validate(value)) return value as T;
  const problems = describeSchemaErrors(validate.errors ?? [], { top: '(top)' });
  throw new PledgerError(code, `invalid ${what}: ${problems}`, hint === undefined ? {} : { hint });
}
