/**
 * The software release format: a folder with a `software.yaml`, JSON Schemas of the
 * parameters and nunjucks templates. See docs/software-releases.md.
 *
 * The master loads a release when it is published (to check it and to validate
 * parameters against its schemas); the node agent loads it to build and instantiate it.
 * Both name it by the same content hash.
 */
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Ajv } from 'ajv';
import addFormatsImport from 'ajv-formats';
import { Type, type Static } from 'typebox';
import nunjucks from 'nunjucks';
import { parseDocument } from 'yaml';
import { Resources, SoftwareName, SoftwareRef, SoftwareType, SoftwareVersion, StrictRecord } from './api.js';
import { PledgerError } from './errors.js';
import { describeSchemaError } from './schema-problems.js';

// ajv-formats is CommonJS: its default export arrives wrapped under ESM.
const addFormats = ((addFormatsImport as unknown as { default?: unknown }).default ?? addFormatsImport) as (ajv: Ajv) => Ajv;

export const SOFTWARE_FILE = 'software.yaml';
/** What the node agent adds to a release folder when it builds it: a release may not ship these. */
export const RESERVED_NAMES = ['parts', 'build.log', '.pledger-built'] as const;

const RelativePath = Type.String({ minLength: 1, maxLength: 255, pattern: '^(?!/)(?!.*(^|/)\\.\\.(/|$))[A-Za-z0-9._/+-]+$' });
const Command = Type.Array(Type.String({ minLength: 1 }), { minItems: 1 });
const Identifier = Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,62}$' });
/** The name of a top-level parameter, as a schema's `properties` may spell it. */
const ParameterName = Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_-]{0,127}$' });

/** A Debian package name, optionally pinned to a version: `redis-server` or `redis-server=5:7.0.15-1~deb12u10`. */
const DebianPackage = Type.String({ pattern: '^[a-z0-9][a-z0-9+.-]{1,99}(=[A-Za-z0-9.+~:-]{1,100})?$' });

/** A source archive: downloaded, checked against its sha256, then unpacked into the part's directory. */
const SourceArchive = Type.Object(
  {
    url: Type.String({ maxLength: 2048, pattern: '^(https?|file)://[^\\s]+$' }),
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    /** Leading path components dropped from every entry (1 for the usual `name-1.0/` top folder). */
    strip: Type.Optional(Type.Integer({ minimum: 0, maximum: 10 })),
  },
  { additionalProperties: false },
);

const Part = Type.Object(
  {
    /** Debian binary packages, with the dependencies the host lacks, extracted into the part's directory. */
    deb: Type.Optional(Type.Array(DebianPackage, { minItems: 1, maxItems: 200 })),
    /** A source archive unpacked into the part's directory before the build. */
    source: Type.Optional(SourceArchive),
    /** A folder of the release with a package.json and a package-lock.json: `npm ci` in the part, every package checked against the lock's integrity. */
    npm: Type.Optional(RelativePath),
    /** Files copied from the release folder into the part's directory before it is built. */
    files: Type.Optional(Type.Array(RelativePath)),
    /** Commands run in order in the part's directory, as argv lists: no shell. */
    build: Type.Optional(Type.Array(Command)),
    /** Seconds a build command may take. */
    timeout: Type.Optional(Type.Integer({ minimum: 1, maximum: 86400 })),
    /** Parts, written earlier in the release, that this one uses: built first, their paths in `parts.NAME.path`. */
    after: Type.Optional(Type.Array(Identifier, { maxItems: 64 })),
    /** Built once per node and reused by every release naming the same definition. */
    shared: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

/**
 * Keys every promise may carry: `timeout` (seconds one check may take), `interval`
 * (seconds between two periodic checks) and `bang-after` (consecutive failed periodic
 * checks after which the node asks for the instance's tree to be redeployed; absent:
 * never).
 */
const promiseTiming = {
  timeout: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 600 })),
  interval: Type.Optional(Type.Integer({ minimum: 1, maximum: 86400 })),
  'bang-after': Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
};

const Promise_ = Type.Union([
  Type.Object({ tcp: Type.String({ minLength: 1 }), ...promiseTiming }, { additionalProperties: false }),
  Type.Object(
    {
      http: Type.String({ minLength: 1 }),
      status: Type.Optional(Type.Integer({ minimum: 100, maximum: 599 })),
      contains: Type.Optional(Type.String()),
      ...promiseTiming,
    },
    { additionalProperties: false },
  ),
  /** A file exists (a path relative to the partition, or absolute) and, with `max-age`, was modified less than that many seconds ago. */
  Type.Object(
    { file: Type.String({ minLength: 1 }), 'max-age': Type.Optional(Type.Integer({ minimum: 1, maximum: 31_536_000 })), ...promiseTiming },
    { additionalProperties: false },
  ),
  /** A service of the software type has a running process. */
  Type.Object({ process: Identifier, ...promiseTiming }, { additionalProperties: false }),
  /** A program following the monitoring-plugins convention: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. */
  Type.Object({ command: Command, ...promiseTiming }, { additionalProperties: false }),
]);

const PublishedValues = StrictRecord(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,128}$' }), Type.String());

/**
 * A sub-instance the software type requests when it is deployed. Its string values are
 * templates rendered with the instance's context (parameters, secrets, ports...).
 */
const ChildRequestDefinition = Type.Object(
  {
    software: SoftwareRef,
    'software-type': Type.Optional(SoftwareType),
    /** String values are templates; the master converts them to the types the child's schema declares. */
    parameters: Type.Optional(StrictRecord(Type.String({ minLength: 1, maxLength: 128 }), Type.Unknown())),
    /** Where the child may go; values are templates. `anti-affinity: node` keeps it off the nodes of its tree. */
    sla: Type.Optional(StrictRecord(Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }), Type.String())),
    /** A shared instance on a host of that release, instead of a partition of its own. */
    shared: Type.Optional(Type.Boolean()),
    /** A template: the child is requested unless it renders to "", "false", "no" or "0". */
    when: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

/** A software type that hosts shared instances: the schema of their parameters and what it publishes for each. */
const SharedHosting = Type.Object(
  {
    parameters: Type.Optional(RelativePath),
    /** Rendered once per shared instance, with `shared` ({ reference, parameters }) in the context. */
    publish: Type.Optional(PublishedValues),
    /**
     * The parameters whose values name a shared instance's place on its host (a route's
     * host name): two shared instances of one host never have the same values.
     */
    unique: Type.Optional(Type.Array(ParameterName, { minItems: 1, maxItems: 8 })),
    /**
     * The parameters that tell the host where to connect (a route's backend): each must be
     * an address and port inside a partition of the requester's own instances.
     */
    backends: Type.Optional(Type.Array(ParameterName, { minItems: 1, maxItems: 8 })),
  },
  { additionalProperties: false },
);

const SoftwareTypeDefinition = Type.Object(
  {
    /** Path of the JSON Schema of this type's parameters, in the release folder. */
    parameters: Type.Optional(RelativePath),
    /** Named ports, given in order from the partition's port range. */
    ports: Type.Optional(Type.Array(Identifier, { maxItems: 64 })),
    /** Random secrets generated once per instance, kept in its partition. */
    secrets: Type.Optional(Type.Array(Identifier, { maxItems: 64 })),
    /** Files of the partition (relative path) rendered from templates of the release. */
    files: Type.Optional(StrictRecord(RelativePath, RelativePath)),
    /** Long-running processes: argv lists whose items are templates. */
    services: Type.Optional(StrictRecord(Identifier, Command)),
    promises: Type.Optional(StrictRecord(Identifier, Promise_)),
    /** Connection parameters published to the requester; values are templates, an empty result is left out. */
    publish: Type.Optional(PublishedValues),
    /** Sub-instances, by the name templates use for them: `requests.NAME.connection.KEY`. */
    requests: Type.Optional(StrictRecord(Identifier, ChildRequestDefinition, { maxProperties: 64 })),
    /** This type hosts shared instances (`pledger request --shared`); its templates see `shared_instances`. */
    shared: Type.Optional(SharedHosting),
    /** What one instance needs of the resources nodes declare (`cpu` cores, `memory` MiB, `disk` GiB...). */
    resources: Type.Optional(Resources),
  },
  { additionalProperties: false },
);

export const SoftwareDefinition = Type.Object(
  {
    name: SoftwareName,
    version: SoftwareVersion,
    description: Type.Optional(Type.String({ maxLength: 1000 })),
    parts: Type.Optional(StrictRecord(Identifier, Part)),
    'software-types': StrictRecord(SoftwareType, SoftwareTypeDefinition, { minProperties: 1 }),
  },
  { additionalProperties: false },
);
export type SoftwareDefinition = Static<typeof SoftwareDefinition>;
export type SoftwareTypeDefinition = Static<typeof SoftwareTypeDefinition>;
export type PartDefinition = Static<typeof Part>;
export type PromiseDefinition = Static<typeof Promise_>;
export type ChildRequestDefinition = Static<typeof ChildRequestDefinition>;

/** Where the schema of a type's shared instances' parameters is kept beside the types' own: no type name has a colon. */
export const sharedSchemaKey = (softwareType: string) => `shared:${softwareType}`;

/** A release read from a folder and checked. */
export interface LoadedSoftware {
  definition: SoftwareDefinition;
  /** sha256 of the folder's content: names the release everywhere. */
  hash: string;
  /**
   * The JSON Schema of each software type's parameters (an empty object schema when
   * none is given), and under `sharedSchemaKey(type)` that of its shared instances'.
   */
  parameterSchemas: Record<string, object>;
}

export interface SoftwareProblem {
  /** Where: a path in software.yaml (`software-types.default.files`) or a file of the release. */
  where: string;
  message: string;
}

const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
const validateDefinition = ajv.compile<SoftwareDefinition>(SoftwareDefinition);
const syntaxEnvironment = new nunjucks.Environment([], { autoescape: false });

/**
 * Reads and checks a release folder: its software.yaml against the format, the
 * files it names, and its parameter schemas. Every problem is reported at once.
 *
 * `knownHash` skips hashing a folder already checked against its hash: a built
 * release also holds its build's output (links included), which the hash never covers.
 *
 * @example
 *   const sr = await loadSoftware('software-releases/hello');
 *   sr.definition.name; // 'hello'
 */
export async function loadSoftware(dir: string, options: { knownHash?: string } = {}): Promise<LoadedSoftware> {
  const problems: SoftwareProblem[] = [];
  let text: string;
  try {
    text = await readFile(path.join(dir, SOFTWARE_FILE), 'utf8');
  } catch {
    throw new PledgerError('SOFTWARE_INVALID', `${dir} has no ${SOFTWARE_FILE}`);
  }
  // A built release (known hash) holds what the node agent built: only a release on
  // its way in must not ship those names.
  const topLevel = options.knownHash ? [] : await readdir(dir);
  for (const name of RESERVED_NAMES) {
    if (topLevel.includes(name)) problems.push({ where: name, message: `${name} is reserved for what the node agent builds` });
  }
  const document = parseDocument(text, { uniqueKeys: true });
  if (document.errors.length > 0) {
    // What a document with broken syntax holds is a guess: nothing else is checked on it.
    throw invalid([
      ...document.errors.map((e) => {
        const at = e.linePos?.[0];
        return { where: at ? `${SOFTWARE_FILE}:${at.line}:${at.col}` : SOFTWARE_FILE, message: e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '') };
      }),
      ...problems,
    ]);
  }
  const parsed: unknown = document.toJS();
  const valid = validateDefinition(parsed);
  if (!valid) problems.push(...validateDefinition.errors!.map((e) => describeSchemaError(e, { top: '(top)' })));
  // The other checks still run on every piece that has the right shape, so that one
  // mistake does not hide the others; a definition with a schema error is never returned.
  const definition = valid ? parsed : checkablePieces(parsed);

  problems.push(...(await checkTemplateSyntax(dir, definition)));

  const exists = async (relative: string) => (await lstat(path.join(dir, relative)).catch(() => null))?.isFile() ?? false;
  const earlier = new Set<string>();
  for (const [partName, part] of Object.entries(definition.parts ?? {})) {
    for (const file of part.files ?? []) {
      if (!(await exists(file))) problems.push({ where: `parts.${partName}.files`, message: `${file} is not a file of the release` });
    }
    problems.push(...checkPart(partName, part, earlier));
    if (part.npm) problems.push(...(await checkNpmLock(dir, partName, part.npm)));
    earlier.add(partName);
  }
  const parameterSchemas: Record<string, object> = {};
  for (const [typeName, type] of Object.entries(definition['software-types'])) {
    const where = `software-types.${typeName}`;
    for (const template of Object.values(type.files ?? {})) {
      if (!(await exists(template))) problems.push({ where: `${where}.files`, message: `${template} is not a file of the release` });
    }
    const ports = new Set(type.ports ?? []);
    if (ports.size !== (type.ports ?? []).length) problems.push({ where: `${where}.ports`, message: 'a port is named twice' });
    const readSchema = async (file: string | undefined, key: string, place: string) => {
      if (!file) {
        parameterSchemas[key] = { type: 'object', additionalProperties: false };
        return;
      }
      try {
        const schema = JSON.parse(await readFile(path.join(dir, file), 'utf8')) as object;
        ajv.compile(schema);
        parameterSchemas[key] = schema;
      } catch (error) {
        problems.push({ where: place, message: `${file}: ${(error as Error).message}` });
      }
    };
    await readSchema(type.parameters, typeName, `${where}.parameters`);
    if (type.shared) {
      await readSchema(type.shared.parameters, sharedSchemaKey(typeName), `${where}.shared.parameters`);
      const declared = (parameterSchemas[sharedSchemaKey(typeName)] as { properties?: object } | undefined)?.properties ?? {};
      for (const key of ['unique', 'backends'] as const) {
        for (const name of type.shared[key] ?? []) {
          if (!Object.hasOwn(declared, name)) problems.push({ where: `${where}.shared.${key}`, message: `${name} is not a parameter of the shared instances' schema` });
        }
      }
    }
  }
  if (problems.length > 0) throw invalid(problems);
  return { definition, hash: options.knownHash ?? (await hashDirectory(dir)), parameterSchemas };
}

const fieldValidators = (object: { properties: Record<string, object> }) =>
  Object.entries(object.properties).map(([key, schema]) => [key, ajv.compile(schema)] as const);
const partFields = fieldValidators(Part);
const typeFields = fieldValidators(SoftwareTypeDefinition);
const isObject = (value: unknown): value is Record<string, unknown> => value !== null && typeof value === 'object' && !Array.isArray(value);

/**
 * The parts and software types of a definition that failed its schema, each keeping
 * only the fields that pass their own: what the checks after the schema can look at
 * safely (a path that is not a relative path of the release is never read). A part
 * or type that is not an object keeps its name and nothing else.
 */
function checkablePieces(value: unknown): SoftwareDefinition {
  const keepValid = (piece: unknown, fields: typeof partFields) =>
    Object.fromEntries(isObject(piece) ? fields.flatMap(([key, validate]) => (key in piece && validate(piece[key]) ? [[key, piece[key]]] : [])) : []);
  const pieces = (group: unknown, fields: typeof partFields) =>
    Object.fromEntries(isObject(group) ? Object.entries(group).map(([name, piece]) => [name, keepValid(piece, fields)]) : []);
  const definition = isObject(value) ? value : {};
  return { name: '', version: '', parts: pieces(definition.parts, partFields), 'software-types': pieces(definition['software-types'], typeFields) } as SoftwareDefinition;
}

/**
 * What the schema cannot say about a part: it names only parts written before it (so
 * the order written is an order to build in, and there is no cycle), and a shared
 * part's build does not depend on the release that names it.
 */
function checkPart(name: string, part: PartDefinition, earlier: Set<string>): SoftwareProblem[] {
  const problems: SoftwareProblem[] = [];
  const where = `parts.${name}`;
  for (const dependency of part.after ?? []) {
    if (dependency === name) problems.push({ where: `${where}.after`, message: 'a part cannot come after itself' });
    else if (!earlier.has(dependency)) problems.push({ where: `${where}.after`, message: `${dependency} is not a part written before ${name}` });
  }
  if ([part.deb, part.source, part.npm].filter(Boolean).length > 1) {
    problems.push({ where, message: 'a part takes one of Debian packages (deb), a source archive (source) or npm packages (npm)' });
  }
  if (part.shared) {
    (part.build ?? []).forEach((command, i) => {
      if (command.some((arg) => /\bsoftware\./.test(arg))) {
        problems.push({ where: `${where}.build[${i}]`, message: 'a shared part is reused by other releases: its build cannot use software.*' });
      }
    });
  }
  return problems;
}

/**
 * An npm part's lock must name, for every package, where it comes from and its
 * integrity (a sha512 the registry published): `npm ci` then refuses any tarball
 * that does not match, and the release's hash covers the lock.
 */
async function checkNpmLock(dir: string, partName: string, folder: string): Promise<SoftwareProblem[]> {
  const where = `parts.${partName}.npm`;
  const problems: SoftwareProblem[] = [];
  for (const name of ['package.json', 'package-lock.json']) {
    if (!(await lstat(path.join(dir, folder, name)).catch(() => null))?.isFile()) problems.push({ where, message: `${folder}/${name} is not a file of the release` });
  }
  if (problems.length > 0) return problems;
  let lock: { lockfileVersion?: number; packages?: Record<string, { link?: boolean; resolved?: string; integrity?: string }> };
  try {
    lock = JSON.parse(await readFile(path.join(dir, folder, 'package-lock.json'), 'utf8')) as typeof lock;
  } catch (error) {
    return [{ where, message: `${folder}/package-lock.json: ${(error as Error).message}` }];
  }
  if (!lock.lockfileVersion || lock.lockfileVersion < 2 || !lock.packages) {
    return [{ where, message: `${folder}/package-lock.json must be a lockfile of version 2 or 3 (npm 7 or later)` }];
  }
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (key === '' || entry.link) continue;
    if (!entry.integrity || !/^sha(256|384|512)-[A-Za-z0-9+/=]+$/.test(entry.integrity) || !/^https:\/\//.test(entry.resolved ?? '')) {
      problems.push({ where, message: `${folder}/package-lock.json: ${key} has no https source with an integrity to check it against` });
    }
  }
  return problems;
}

/** The JSON Schema of software.yaml, as published in docs/software.schema.json. */
export function softwareJsonSchema(): object {
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: 'https://pledger.dev/schemas/software.schema.json',
    title: 'Pledger software release (software.yaml)',
    ...(JSON.parse(JSON.stringify(SoftwareDefinition)) as object),
  };
}

/**
 * Compiles (never renders) every template of the release, so that a syntax error is
 * refused when the release is published rather than found by a node deploying it.
 */
async function checkTemplateSyntax(dir: string, definition: SoftwareDefinition): Promise<SoftwareProblem[]> {
  const problems: SoftwareProblem[] = [];
  const check = (where: string, source: string) => {
    try {
      new nunjucks.Template(source, syntaxEnvironment, where, true);
    } catch (error) {
      problems.push({ where, message: `template syntax: ${(error as Error).message.replace(/\s+/g, ' ').trim()}` });
    }
  };
  for (const [partName, part] of Object.entries(definition.parts ?? {})) {
    (part.build ?? []).forEach((command, i) => command.forEach((arg) => check(`parts.${partName}.build[${i}]`, arg)));
  }
  for (const [typeName, type] of Object.entries(definition['software-types'])) {
    const where = `software-types.${typeName}`;
    for (const [name, argv] of Object.entries(type.services ?? {})) argv.forEach((arg) => check(`${where}.services.${name}`, arg));
    for (const [name, promise] of Object.entries(type.promises ?? {})) {
      for (const value of Object.values(promise)) {
        if (typeof value === 'string') check(`${where}.promises.${name}`, value);
        if (Array.isArray(value)) for (const arg of value) check(`${where}.promises.${name}`, String(arg));
      }
    }
    for (const [name, value] of Object.entries(type.publish ?? {})) check(`${where}.publish.${name}`, value);
    for (const [name, value] of Object.entries(type.shared?.publish ?? {})) check(`${where}.shared.publish.${name}`, value);
    for (const [name, child] of Object.entries(type.requests ?? {})) {
      const strings = [child.when ?? '', ...Object.values(child.sla ?? {}), ...templateStrings(child.parameters ?? {})];
      for (const value of strings) check(`${where}.requests.${name}`, value);
    }
    for (const template of Object.values(type.files ?? {})) {
      const source = await readFile(path.join(dir, template), 'utf8').catch(() => null);
      if (source !== null) check(template, source);
    }
  }
  return problems;
}

/** Every string inside a JSON value, at any depth: the templates of a child's parameters. */
export function templateStrings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(templateStrings);
  if (value !== null && typeof value === 'object') return Object.values(value).flatMap(templateStrings);
  return [];
}

function invalid(problems: SoftwareProblem[]): PledgerError {
  const summary = problems.map((p) => `${p.where}: ${p.message}`).join('; ');
  return new PledgerError('SOFTWARE_INVALID', `invalid software release: ${summary}`, { details: problems });
}

/**
 * The content hash of a folder: sha256 over every regular file's relative path,
 * executable bit and content, in sorted order. Symbolic links and special files are
 * refused: a release is plain files.
 */
export async function hashDirectory(dir: string): Promise<string> {
  const entries: string[] = [];
  const walk = async (relative: string): Promise<void> => {
    const names = (await readdir(path.join(dir, relative))).sort();
    for (const name of names) {
      const child = relative ? `${relative}/${name}` : name;
      const stat = await lstat(path.join(dir, child));
      if (stat.isDirectory()) await walk(child);
      else if (stat.isFile()) {
        const digest = createHash('sha256').update(await readFile(path.join(dir, child))).digest('hex');
        entries.push(`${child}\0${stat.mode & 0o111 ? 'x' : '-'}\0${digest}\n`);
      } else {
        throw new PledgerError('SOFTWARE_INVALID', `${child} is not a regular file: a software release holds plain files only`);
      }
    }
  };
  await walk('');
  return createHash('sha256').update(entries.sort().join('')).digest('hex');
}
