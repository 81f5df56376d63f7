/**
 * Everything a deployment needs, computed before anything running is touched: the
 * release and its software type, the partition's secrets and named ports, the
 * template context, and every rendered file, service command, promise and published
 * value. A deployment that cannot be rendered fails here and leaves the partition as it was.
 */
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type nunjucks from 'nunjucks';
import type { ChildRequest, ChildState, ConnectionParameters, DesiredInstance, DesiredState } from '../protocol/api.js';
import { loadSoftware, type PromiseDefinition, type SoftwareTypeDefinition } from '../protocol/software-release.js';
import { randomToken, writeFileAtomic } from './files.js';
import { PARTITION_PRIVATE_DIR, partitionPath, softwarePath } from './paths.js';
import { createTemplateEnvironment, renderFiles, renderString, type RenderedFile } from './render.js';

export type DesiredPartition = DesiredState['partitions'][number];

/** What templates see. Parameters are values here, never template source. */
export interface InstanceContext {
  parameters: Record<string, unknown>;
  partition: { reference: string; ip: string; path: string; ports: { first: number; last: number } };
  ports: Record<string, number>;
  parts: Record<string, { path: string }>;
  software: { name: string; version: string; hash: string; path: string };
  secrets: Record<string, string>;
  instance: { title: string; softwareType: string; serial: number };
  /** The node the instance runs on: `sla: {node: "{{ node.name }}"}` keeps a child beside its parent. */
  node: { name: string };
  /** What each requested sub-instance published, by request name: `requests.db.connection.url`. */
  requests: Record<string, ChildState>;
  /** For a host of shared instances: each one's opaque reference and parameters, by reference. */
  shared_instances: { reference: string; parameters: Record<string, unknown> }[];
}

export interface Deployment {
  releaseDir: string;
  partitionDir: string;
  type: SoftwareTypeDefinition;
  context: InstanceContext;
  env: nunjucks.Environment;
  /** The shared instances a host deploys, with their serials. */
  shared: NonNullable<DesiredInstance['shared']>;
}

export interface RenderedDeployment {
  files: RenderedFile[];
  services: Record<string, string[]>;
  promises: Record<string, PromiseDefinition>;
  publish: Record<string, string>;
  /** A host's published values for each shared instance, with the serial deployed. */
  sharedPublish: Record<string, { serial: number; connection: ConnectionParameters }>;
}

const SECRETS_FILE = 'secrets.json';

/** Gathers the release, secrets, ports and context of an instance whose software is built. */
export async function prepareDeployment(root: string, nodeName: string, partition: DesiredPartition, instance: DesiredInstance): Promise<Deployment> {
  const releaseDir = softwarePath(root, instance.software.hash);
  const partitionDir = partitionPath(root, partition.reference);
  const release = await loadSoftware(releaseDir, { knownHash: instance.software.hash });
  const { definition } = release;
  const type = definition['software-types'][instance.softwareType];
  if (!type) throw new Error(`software ${definition.name}@${definition.version} has no software type ${instance.softwareType}`);
  const context: InstanceContext = {
    parameters: instance.parameters,
    partition: { reference: partition.reference, ip: partition.ip, path: partitionDir, ports: { ...partition.ports } },
    ports: namePorts(type.ports ?? [], partition.ports),
    parts: Object.fromEntries(Object.keys(definition.parts ?? {}).map((name) => [name, { path: path.join(releaseDir, 'parts', name) }])),
    software: { name: definition.name, version: definition.version, hash: instance.software.hash, path: releaseDir },
    secrets: await ensureSecrets(partitionDir, type.secrets ?? []),
    instance: { title: instance.title, softwareType: instance.softwareType, serial: instance.serial },
    node: { name: nodeName },
    requests: {},
    shared_instances: (instance.shared ?? []).map((s) => ({ reference: s.reference, parameters: s.parameters })),
  };
  return { releaseDir, partitionDir, type, context, env: createTemplateEnvironment(releaseDir), shared: type.shared ? (instance.shared ?? []) : [] };
}

/** Renders everything of the software type; the first error stops it with a message naming the culprit. */
export function renderDeployment(deployment: Deployment): RenderedDeployment {
  const { env, context, type, releaseDir } = deployment;
  const render = (source: string, where: string) => renderString(env, source, context, where);
  const services = Object.fromEntries(
    Object.entries(type.services ?? {}).map(([name, argv]) => [name, argv.map((item, i) => render(item, `services.${name}[${i}]`))]),
  );
  const promises = Object.fromEntries(
    Object.entries(type.promises ?? {}).map(([name, promise]): [string, PromiseDefinition] => [name, renderPromise(promise, `promises.${name}`, render)]),
  );
  const publish = renderPublished(type.publish ?? {}, (value, where) => render(value, `publish.${where}`));
  const sharedPublish: RenderedDeployment['sharedPublish'] = {};
  for (const shared of deployment.shared) {
    const sharedContext = { ...context, shared: { reference: shared.reference, parameters: shared.parameters } };
    const connection = renderPublished(type.shared?.publish ?? {}, (value, where) =>
      renderString(env, value, sharedContext, `shared.publish.${where} (shared instance ${shared.reference})`),
    );
    sharedPublish[shared.reference] = { serial: shared.serial, connection };
  }
  return { files: renderFiles(env, releaseDir, type.files ?? {}, context), services, promises, publish, sharedPublish };
}

/** Published values rendered; one that renders to the empty string is left out. */
function renderPublished(values: Record<string, string>, render: (source: string, key: string) => string): Record<string, string> {
  return Object.fromEntries(Object.entries(values).flatMap(([key, value]) => {
    const rendered = render(value, key);
    return rendered === '' ? [] : [[key, rendered]];
  }));
}

/**
 * The sub-instances the software type requests, rendered: string values of their
 * parameters and SLA are templates of the instance's context; `when` leaves a child
 * out when it renders to "", "false", "no" or "0".
 */
export function renderChildRequests(deployment: Deployment): ChildRequest[] {
  const { env, context, type } = deployment;
  const requests: ChildRequest[] = [];
  for (const [name, child] of Object.entries(type.requests ?? {})) {
    const where = `requests.${name}`;
    const render = (source: string, at: string) => renderString(env, source, context, `${where}.${at}`);
    if (child.when !== undefined && ['', 'false', 'no', '0'].includes(render(child.when, 'when').trim().toLowerCase())) continue;
    const renderValue = (value: unknown, at: string): unknown => {
      if (typeof value === 'string') return render(value, at);
      if (Array.isArray(value)) return value.map((item, i) => renderValue(item, `${at}[${i}]`));
      if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, renderValue(v, `${at}.${k}`)]));
      return value;
    };
    requests.push({
      name,
      software: child.software,
      ...(child['software-type'] ? { softwareType: child['software-type'] } : {}),
      parameters: renderValue(child.parameters ?? {}, 'parameters') as Record<string, unknown>,
      ...(child.sla ? { sla: Object.fromEntries(Object.entries(child.sla).map(([k, v]) => [k, render(v, `sla.${k}`)])) } : {}),
      ...(child.shared ? { shared: true } : {}),
    });
  }
  return requests;
}

/** Every template string of a promise rendered; the other keys as they are. */
function renderPromise(promise: PromiseDefinition, where: string, render: (source: string, where: string) => string): PromiseDefinition {
  if ('tcp' in promise) return { ...promise, tcp: render(promise.tcp, `${where}.tcp`) };
  if ('http' in promise) {
    const rendered = { ...promise, http: render(promise.http, `${where}.http`) };
    if (promise.contains !== undefined) rendered.contains = render(promise.contains, `${where}.contains`);
    return rendered;
  }
  if ('file' in promise) return { ...promise, file: render(promise.file, `${where}.file`) };
  if ('command' in promise) return { ...promise, command: promise.command.map((item, i) => render(item, `${where}.command[${i}]`)) };
  return { ...promise };
}

/** The software type's port names, given in order from the partition's range. */
export function namePorts(names: string[], range: { first: number; last: number }): Record<string, number> {
  const available = range.last - range.first + 1;
  if (names.length > available) {
    throw new Error(`the software type names ${names.length} ports, the partition has ${available} (${range.first}-${range.last})`);
  }
  return Object.fromEntries(names.map((name, i) => [name, range.first + i]));
}

/**
 * The instance's secrets: generated once (24 random bytes each), kept in the partition
 * with mode 0600 and reused by every later deployment, so a password never changes
 * under its clients. A secret the release no longer names is kept, in case it returns.
 */
export async function ensureSecrets(partitionDir: string, names: string[]): Promise<Record<string, string>> {
  const dir = path.join(partitionDir, PARTITION_PRIVATE_DIR);
  const file = path.join(dir, SECRETS_FILE);
  let secrets: Record<string, string> = {};
  try {
    secrets = JSON.parse(await readFile(file, 'utf8')) as Record<string, string>;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${file}: ${(error as Error).message}`);
  }
  const missing = names.filter((name) => typeof secrets[name] !== 'string');
  if (missing.length === 0) return pick(secrets, names);
  for (const name of missing) secrets[name] = randomToken(24);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, `${JSON.stringify(secrets, null, 2)}\n`, 0o600);
  return pick(secrets, names);
}

function pick(secrets: Record<string, string>, names: string[]): Record<string, string> {
  return Object.fromEntries(names.map((name) => [name, secrets[name] ?? '']));
}
