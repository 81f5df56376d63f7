/**
 * Every document the agent reads from the network or from disk is checked against
 * its schema before use: a bad one gets a clear error and changes nothing.
 */
import { Ajv, type ErrorObject } from 'ajv';
import { PledgerError, type ErrorCode } from '../protocol/errors.js';

const ajv = new Ajv({ allErrors: true, strict: false });
const compiled = new WeakMap<object, ReturnType<typeof ajv.compile>>();

/** Returns `value` typed as `T` when it matches `schema`, or throws PledgerError(code). */
export function checkSchema<T>(schema: object, value: unknown, what: string, code: ErrorCode = 'BAD_REQUEST', hint?: string): T {
  let validate = compiled.get(schema);
  if (!validate) {
    validate = ajv.compile(schema);
    compiled.set(schema, validate);
  }
  if (validate(value)) return value as T;
  const problems = (validate.errors ?? []).map(describe).join('; ');
  throw new PledgerError(code, `invalid ${what}: ${problems}`, hint === undefined ? {} : { hint });
}

function describe(error: ErrorObject): string {
  const where = error.instancePath.split('/').slice(1).join('.') || '(top)';
  return `${where} ${error.message ?? 'is invalid'}`;
}
