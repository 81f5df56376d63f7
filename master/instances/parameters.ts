/**
 * An instance's parameters, checked against the JSON Schema its release declares for
 * its software type (or, for a shared instance, the schema its host declares).
 */
import { Ajv, type ValidateFunction } from 'ajv';
import type { Parameters } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import { sharedSchemaKey } from '../../protocol/software-release.js';
import type { SoftwareRow } from '../software.js';
import { describeSchemaErrors } from '../../protocol/schema-problems.js';
import { readJson } from '../db/json-columns.js';

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });

/** For sub-instances: their parameters are rendered from templates, strings that the child's schema types. */
const coercingAjv = new Ajv({ allErrors: true, useDefaults: true, strict: false, coerceTypes: true });

const validators = new Map<string, ValidateFunction>();

/**
 * Checks parameters against the software type's schema (a shared instance's against
 * the schema its host type declares for them), filling in its defaults.
 */
export function validateParameters(
  software: SoftwareRow,
  softwareType: string,
  parameters: Parameters,
  options: { shared: boolean; coerce: boolean },
): { parameters: Parameters; hostsShared: boolean } {
  const definition = readJson('definition', software.definition);
  const type = definition['software-types'][softwareType];
  if (!type || !Object.hasOwn(definition['software-types'], softwareType)) {
    const known = Object.keys(definition['software-types']).join(', ');
    throw new PledgerError('BAD_REQUEST', `${software.id} has no software type "${softwareType}" (it has: ${known})`);
  }
  if (options.shared && !type.shared) {
    throw new PledgerError('BAD_REQUEST', `${software.id} ${softwareType} does not host shared instances`, { hint: 'request it without --shared' });
  }
  const schemaKey = options.shared ? sharedSchemaKey(softwareType) : softwareType;
  const validate = validatorFor(software, schemaKey, options.coerce);
  const copy = structuredClone(parameters);
  if (!validate(copy)) {
    const what = options.shared ? `shared ${softwareType}` : softwareType;
    throw new PledgerError('INVALID_PARAMETERS', `invalid parameters for ${software.id} ${what}: ${problemsOf(validate)}`, {
      details: validate.errors,
    });
  }
  return { parameters: copy, hostsShared: type.shared !== undefined };
}

function validatorFor(software: Pick<SoftwareRow, 'hash' | 'parameter_schemas'>, schemaKey: string, coerce: boolean): ValidateFunction {
  const key = `${software.hash}:${schemaKey}:${coerce}`;
  let validate = validators.get(key);
  if (!validate) {
    const schemas = readJson('parameter_schemas', software.parameter_schemas);
    validate = (coerce ? coercingAjv : ajv).compile(schemas[schemaKey] ?? {});
    validators.set(key, validate);
  }
  return validate;
}

function problemsOf(validate: ValidateFunction): string {
  return describeSchemaErrors(validate.errors!, { top: 'parameters' });
}

/**
 * Why a host refuses a shared instance's parameters, or null. The host renders them
 * into its own configuration, so the schema its release declares for shared instances
 * decides, not the one of the version the requester named: an older or another version
 * with a looser schema would otherwise let unchecked values into the host's files. The
 * stored parameters are checked as they are (no coercion, no defaults kept): they are
 * what the host will see.
 */
export function refusedByHost(
  host: { title: string; software: Pick<SoftwareRow, 'id' | 'hash' | 'parameter_schemas'> },
  softwareType: string,
  parameters: Parameters,
): PledgerError | null {
  const key = sharedSchemaKey(softwareType);
  if (!Object.hasOwn(readJson('parameter_schemas', host.software.parameter_schemas), key)) {
    return new PledgerError('BAD_REQUEST', `${host.software.id} ${softwareType} (${host.title}) does not host shared instances`);
  }
  const validate = validatorFor(host.software, key, false);
  if (validate(structuredClone(parameters))) return null;
  return new PledgerError('INVALID_PARAMETERS', `invalid parameters for ${host.software.id} shared ${softwareType} on ${host.title}: ${problemsOf(validate)}`, {
    hint: `${host.title} runs ${host.software.id}, whose schema for shared instances decides: name that version, or give parameters it accepts`,
    details: validate.errors,
  });
}
