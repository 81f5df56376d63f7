/** The ordering flow: request, list, info, destroy. */
import { readFile } from 'node:fs/promises';
import type { Command } from '@commander-js/extra-typings';
import type { InstanceRequest, InstanceView, MovementView, Parameters, RequestedState } from '../../protocol/api.js';
import type { MasterClient } from '../../protocol/client.js';
import { PledgerError } from '../../protocol/errors.js';
import { fields, print, table } from '../output.js';
import { userClient } from '../settings.js';
import { globals, type GlobalOptions } from './globals.js';
import { parseAmounts, parsePairs } from './operator.js';

/**
 * `k=v` gives the string v; `k:=v` gives v parsed as JSON (numbers, booleans, lists).
 * Later pairs win over earlier ones and over --parameters-file.
 */
export function parseParameterPairs(pairs: string[], base: Parameters = {}): Parameters {
  const parameters: Parameters = { ...base };
  for (const pair of pairs) {
    const typed = /^([^=:]+):=(.*)$/s.exec(pair);
    const plain = /^([^=]+)=(.*)$/s.exec(pair);
    if (typed) {
      try {
        parameters[typed[1]!] = JSON.parse(typed[2]!);
      } catch {
        throw new PledgerError('BAD_REQUEST', `--parameters ${pair}: the value after := is not JSON`);
      }
    } else if (plain) {
      parameters[plain[1]!] = plain[2]!;
    } else {
      throw new PledgerError('BAD_REQUEST', `--parameters ${pair}: expected KEY=VALUE or KEY:=JSON`);
    }
  }
  return parameters;
}

async function readParametersFile(file: string): Promise<Parameters> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw new PledgerError('BAD_REQUEST', `cannot read parameters from ${file}: ${(error as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new PledgerError('BAD_REQUEST', `${file} must hold a JSON object of parameters`);
  }
  return value as Parameters;
}

/** Polls until the node has reached the requested state, or fails or times out. */
export async function waitUntilReady(client: MasterClient, title: string, timeoutSeconds: number, onChange?: (view: InstanceView) => void): Promise<InstanceView> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  let last = '';
  for (;;) {
    const view = await client.instances.get(title);
    const summary = `${view.status} ${view.message ?? ''}`;
    if (summary !== last) onChange?.(view);
    last = summary;
    if (view.ready) return view;
    if (view.status === 'error') {
      throw new PledgerError('NODE_FAILURE', `instance "${title}" failed: ${view.message ?? 'no message'}`, {
        hint: `its node reported this; \`pledger info ${title} --history\` lists every report, and the node tries again at its next run`,
      });
    }
    if (Date.now() > deadline) {
      // Unallocated, no node agent is involved yet: what is missing is a node that can take it.
      const hint =
        view.status === 'unallocated'
          ? 'no node can take it yet: an operator registers and formats a node (`pledger node register`, `pledger node format`) or supplies the release to one (`pledger supply`)'
          : `is the node agent of ${view.node ?? 'its node'} running? see \`pledger info ${title} --history\``;
      throw new PledgerError('TIMEOUT', `instance "${title}" is not ${view.state} after ${timeoutSeconds} s (status: ${view.status}${view.message ? `, ${view.message}` : ''})`, { hint });
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** "2 ok, 1 critical", or "-" when nothing was reported. */
function promiseSummary(view: InstanceView): string {
  const counts = new Map<string, number>();
  for (const p of view.promises) counts.set(p.status, (counts.get(p.status) ?? 0) + 1);
  return counts.size === 0 ? '-' : [...counts].map(([status, n]) => `${n} ${status}`).join(', ');
}

export function describeInstance(view: InstanceView): string {
  const lines: [string, unknown][] = [
    ['title', view.title],
    ['software', `${view.software.name}@${view.software.version} (${view.softwareType})`],
    ['state', view.state],
    ['status', view.ready ? `${view.status} (ready)` : view.status],
  ];
  if (view.message) lines.push(['message', view.message]);
  if (view.parent) lines.push(['parent', view.parent], ['tree', view.root ?? view.parent]);
  if (view.shared) lines.push(['shared', 'yes: hosted by an instance of its release']);
  lines.push(['node', view.node ? `${view.node}${view.partition ? ` / ${view.partition}` : ''}` : null], ['serial', view.serial], ['parameters', view.parameters]);
  if (Object.keys(view.sla).length > 0) lines.push(['sla', Object.entries(view.sla).map(([k, v]) => `${k}=${v}`).join(', ')]);
  if (Object.keys(view.resources).length > 0) lines.push(['resources', Object.entries(view.resources).map(([k, v]) => `${k}=${v}`).join(', ')]);
  for (const [name, value] of Object.entries(view.connection)) lines.push([`connection.${name}`, value]);
  for (const p of view.promises) lines.push([`promise.${p.name}`, `${p.status} since ${p.since}${p.message ? `: ${p.message}` : ''}`]);
  return fields(lines);
}

export function registerInstanceCommands(program: Command): void {
  program
    .command('request')
    .description('request an instance (idempotent: the same title names the same instance)')
    .argument('<title>', 'the name of the instance, yours to choose')
    .argument('<software>', 'NAME or NAME@VERSION of a software release')
    .option('--type <type>', 'the software type')
    .option('--parameters <pairs...>', 'parameters as KEY=VALUE (a string) or KEY:=JSON')
    .option('--parameters-file <file>', 'parameters as a JSON object in a file')
    .option('--state <state>', 'started, stopped or destroyed')
    .option('--sla <pairs...>', 'where it may run, as KEY=VALUE: node=NAME, a label of the node (region=eu), anti-affinity=node|LABEL')
    .option('--shared', 'a shared instance: hosted by a started instance of the release (host=TITLE in --sla picks one)')
    .option('--resource <pairs...>', 'more than its software type needs, as NAME=AMOUNT: cpu (cores), memory (MiB), disk (GiB)')
    .option('--wait', 'wait until the node has reached the requested state')
    .option('--timeout <seconds>', 'how long --wait waits', '300')
    .action(async (title, software, options, command) => {
      const g = globals(command);
      const client = await userClient(g);
      if (options.state && !['started', 'stopped', 'destroyed'].includes(options.state)) {
        throw new PledgerError('BAD_REQUEST', `--state ${options.state}: expected started, stopped or destroyed`);
      }
      const body: InstanceRequest = { software };
      if (options.type) body.softwareType = options.type;
      if (options.state) body.state = options.state as RequestedState;
      if (options.shared) body.shared = true;
      if (options.sla) body.sla = parsePairs(options.sla, '--sla');
      if (options.resource) body.resources = parseAmounts(options.resource, '--resource');
      if (options.parameters || options.parametersFile) {
        const base = options.parametersFile ? await readParametersFile(options.parametersFile) : {};
        body.parameters = parseParameterPairs(options.parameters ?? [], base);
      }
      let view = await client.instances.request(title, body);
      if (options.wait) view = await waitUntilReady(client, title, Number(options.timeout), progress(g));
      print(g, view, describeInstance);
    });

  program
    .command('list')
    .description('list your instances')
    .option('--all', 'include destroyed instances')
    .action(async (options, command) => {
      const g = globals(command);
      const client = await userClient(g);
      const views = await client.instances.list(options.all ? { query: { all: 'true' } } : {});
      print(g, views, (list) =>
        list.length === 0
          ? 'no instances'
          : table(
              ['TITLE', 'SOFTWARE', 'STATE', 'STATUS', 'NODE'],
              list.map((v) => [v.title, `${v.software.name}@${v.software.version}`, v.state, v.ready ? `${v.status} (ready)` : v.status, v.node]),
            ),
      );
    });

  program
    .command('info')
    .description('show one of your instances')
    .argument('<title>')
    .option('--history', 'show every movement of the instance in the ledger')
    .option('--tree', 'show the instance and every sub-instance it requested, recursively')
    .action(async (title, options, command) => {
      const g = globals(command);
      const client = await userClient(g);
      if (options.tree) {
        const tree = await client.instances.tree(title);
        print(g, tree, (t) =>
          table(
            ['TITLE', 'SOFTWARE', 'STATE', 'STATUS', 'NODE', 'PROMISES'],
            t.instances.map(({ depth, instance: v }) => [
              `${'  '.repeat(depth)}${v.title}${v.shared ? ' (shared)' : ''}`,
              `${v.software.name}@${v.software.version}`,
              v.state,
              v.ready ? `${v.status} (ready)` : v.message ? `${v.status}: ${v.message}` : v.status,
              v.node,
              promiseSummary(v),
            ]),
          ),
        );
      } else if (options.history) {
        const history = await client.instances.history(title);
        print(g, history, (list) => table(['AT', 'MOVEMENT', 'BY', 'DETAIL'], list.map((m) => [m.at, m.kind, m.actor, movementDetail(m)])));
      } else {
        print(g, await client.instances.get(title), describeInstance);
      }
    });

  program
    .command('destroy')
    .description('destroy one of your instances: its processes stop and its partition is wiped')
    .argument('<title>')
    .option('--wait', 'wait until the node has destroyed it')
    .option('--timeout <seconds>', 'how long --wait waits', '300')
    .action(async (title, options, command) => {
      const g = globals(command);
      const client = await userClient(g);
      let view = await client.instances.destroy(title);
      if (options.wait) view = await waitUntilReady(client, title, Number(options.timeout), progress(g));
      print(g, view, describeInstance);
    });
}

function progress(g: GlobalOptions): ((view: InstanceView) => void) | undefined {
  if (g.json || !process.stderr.isTTY) return undefined;
  return (view) => process.stderr.write(`${view.title}: ${view.status}${view.message ? ` (${view.message})` : ''}\n`);
}

function movementDetail(m: MovementView): string {
  const d = m.data as Record<string, unknown>;
  switch (m.kind) {
    case 'instance.requested':
      return `serial ${String(d.serial)}, ${String(d.state)}, ${JSON.stringify(d.parameters)}`;
    case 'instance.allocated':
      return `${String(d.node)} / ${String(d.partition)}`;
    case 'instance.unallocated':
    case 'instance.error':
      return String(d.reason ?? d.message ?? '');
    case 'instance.banged':
      return `${String(d.message)}${d.serial === null ? '' : ` (redeploying as serial ${String(d.serial)})`}`;
    case 'instance.promises':
      return (d.promises as { name: string; status: string }[]).map((p) => `${p.name}=${p.status}`).join(' ');
    case 'usage.reported':
      return `${String(d.hour)}: cpu ${String(d.cpuMs)} ms, up ${String(d.uptimeSeconds)} s`;
    default:
      return d.serial !== undefined ? `serial ${String(d.serial)}` : '';
  }
}
