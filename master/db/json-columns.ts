/**
 * The JSON columns of the master's tables and the type each holds. Both engines keep
 * JSON as text; this is the one place where a column's text becomes its value again.
 */
import type { ConnectionParameters, Parameters, Resources, Sla } from '../../protocol/api.js';
import type { SoftwareDefinition } from '../../protocol/software-release.js';

interface JsonColumns {
  /** instances.parameters */
  parameters: Parameters;
  /** instances.sla */
  sla: Sla;
  /** instances.resources (asked) and instances.needs (taken) */
  resources: Resources;
  needs: Resources;
  /** instances.connection */
  connection: ConnectionParameters;
  /** software.definition */
  definition: SoftwareDefinition;
  /** software.parameter_schemas: the JSON Schema of each software type's parameters */
  parameter_schemas: Record<string, object>;
  /** billing_holds.instances: the ids of the instances a hold stopped */
  instances: string[];
  /** movements.data and billing_settings.value: checked by whoever reads them */
  data: unknown;
  value: unknown;
}

export type JsonColumn = keyof JsonColumns;

/**
 * Releases' definitions and schemas are read at nearly every request and never change
 * (a version names one content): each text is parsed once. The value is shared, and
 * read only.
 */
const IMMUTABLE: ReadonlySet<JsonColumn> = new Set(['definition', 'parameter_schemas']);
const parsed = new Map<string, unknown>();
const PARSED_KEPT = 256;

/** The value a JSON column holds, typed by the column it comes from. */
export function readJson<C extends JsonColumn>(column: C, text: string): JsonColumns[C] {
  if (!IMMUTABLE.has(column)) return JSON.parse(text) as JsonColumns[C];
  let value = parsed.get(text);
  if (value === undefined) {
    if (parsed.size >= PARSED_KEPT) parsed.clear();
    parsed.set(text, (value = JSON.parse(text)));
  }
  return value as JsonColumns[C];
}
