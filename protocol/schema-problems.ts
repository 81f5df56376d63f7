/**
 * What a JSON Schema refusal says, in one voice everywhere: the request refused by the
 * master, an instance's parameters, a node's configuration, a software release.
 */

/** The part of an Ajv error the message is made from. */
export interface SchemaError {
  instancePath: string;
  keyword: string;
  params: unknown;
  message?: string;
}

export interface Placement {
  /** Put before the path of the value at fault (`body` gives `body.parameters.size`); none by default. */
  root?: string;
  /** What the problem is about when it is the whole value. */
  top: string;
  /** Plain words for patterns whose regular expression says nothing to a reader. */
  patterns?: Readonly<Record<string, string>>;
}

/** `size must be integer`, `body.labels must NOT have additional properties (Bad Key)`. */
export function describeSchemaError(error: SchemaError, placement: Placement): { where: string; message: string } {
  const path = error.instancePath.split('/').slice(1).join('.');
  const where = path === '' ? placement.top : placement.root ? `${placement.root}.${path}` : path;
  const params = error.params as { additionalProperty?: string; pattern?: string };
  const extra = error.keyword === 'additionalProperties' && params.additionalProperty !== undefined ? ` (${params.additionalProperty})` : '';
  const meaning = error.keyword === 'pattern' && params.pattern !== undefined ? placement.patterns?.[params.pattern] : undefined;
  return { where, message: `${meaning ?? error.message ?? 'is invalid'}${extra}` };
}

/**
 * The problems of a refusal, each said once, joined: at most `max` of them, then how many
 * more (a value can break its schema in as many places as it has bytes).
 */
export function describeSchemaErrors(errors: readonly SchemaError[], placement: Placement, max = Infinity): string {
  const distinct = [...new Set(errors.map((e) => {
    const { where, message } = describeSchemaError(e, placement);
    return `${where} ${message}`;
  }))];
  const more = distinct.length > max ? `; and ${distinct.length - max} more` : '';
  return distinct.slice(0, max).join('; ') + more;
}
