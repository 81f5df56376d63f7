/** What operators do: accounts, node registration, software releases and supplies. */
import type { Command } from '@commander-js/extra-typings';
import type { NodeRegister, NodeScope, NodeUpdate, NodeView } from '../../protocol/api.js';
import { MasterClient } from '../../protocol/client.js';
import { PledgerError } from '../../protocol/errors.js';
import { fields, print, table } from '../output.js';
import { checkMasterUrl, userClient, writeClientConfig } from '../settings.js';
import { globals } from './globals.js';
import { registerSoftwareCheckCommands } from './software-check.js';

export function registerOperatorCommands(program: Command): void {
  program
    .command('login')
    .description('check a master URL (--master) and token (--token), and keep them for the next commands')
    .action(async (_options, command) => {
      const g = globals(command);
      if (!g.master || !g.token) throw new PledgerError('BAD_REQUEST', 'login needs --master URL and --token TOKEN');
      const client = new MasterClient({ url: checkMasterUrl(g.master, '--master'), token: g.token });
      const me = await client.accounts.whoami();
      const file = await writeClientConfig({ master: client.url, token: g.token });
      print(g, { ...me, config: file }, (v) => `logged in to ${client.url} as ${v.name} (${v.role}); settings kept in ${file}`);
    });

  program
    .command('whoami')
    .description('show the account of the current token')
    .action(async (_options, command) => {
      const g = globals(command);
      const me = await (await userClient(g)).accounts.whoami();
      print(g, me, (v) => `${v.name} (${v.role})`);
    });

  const account = program.command('account').description('manage accounts (operators)');
  account
    .command('create')
    .description('create an account and print its API token (shown once)')
    .argument('<name>')
    .option('--admin', 'make it an operator')
    .action(async (name, options, command) => {
      const g = globals(command);
      const created = await (await userClient(g)).accounts.create({ name, role: options.admin ? 'admin' : 'user' });
      print(g, created, (v) => fields([['account', v.name], ['role', v.role], ['token', v.token]]));
    });
  account
    .command('list')
    .description('list the accounts')
    .action(async (_options, command) => {
      const g = globals(command);
      const list = await (await userClient(g)).accounts.list();
      print(g, list, (l) => table(['NAME', 'ROLE', 'CREATED'], l.map((a) => [a.name, a.role, a.createdAt])));
    });

  const software = program.command('software').description('software releases');
  registerSoftwareCheckCommands(software);
  software
    .command('list')
    .description('list the published software releases')
    .action(async (_options, command) => {
      const g = globals(command);
      const list = await (await userClient(g)).software.list();
      print(g, list, (l) =>
        table(['NAME', 'VERSION', 'TYPES', 'DESCRIPTION'], l.map((s) => [s.name, s.version, Object.keys(s.softwareTypes).join(','), s.description])),
      );
    });
  software
    .command('show')
    .description('show a software release and the parameters of each software type')
    .argument('<software>', 'NAME or NAME@VERSION')
    .action(async (ref, _options, command) => {
      const g = globals(command);
      const view = await (await userClient(g)).software.show(ref);
      print(g, view, (v) =>
        [
          fields([['name', v.name], ['version', v.version], ['hash', v.hash], ['description', v.description], ['published', v.publishedAt]]),
          ...Object.entries(v.softwareTypes).map(([t, { parameters }]) => `\nsoftware type ${t}, parameters:\n${JSON.stringify(parameters, null, 2)}`),
        ].join('\n'),
      );
    });
  software
    .command('publish')
    .description('check a software release folder and publish it (operators)')
    .argument('<dir>')
    .action(async (dir, _options, command) => {
      const g = globals(command);
      const client = await userClient(g);
      const { loadSoftware } = await import('../../protocol/software-release.js');
      const { packSoftware } = await import('../../protocol/software-archive.js');
      await loadSoftware(dir); // refuse locally, with the same message, before uploading
      const archive = await packSoftware(dir);
      const answer = await client.answer.software.publish(archive);
      print(g, answer.body, (v) => `${answer.status === 201 ? 'published' : 'already published'} ${v.name}@${v.version} (${v.hash})`);
    });

  program
    .command('supply')
    .description('ask a node to build a software release, or with --destroy to remove it (operators)')
    .argument('<software>', 'NAME or NAME@VERSION')
    .argument('<node>')
    .option('--destroy', 'remove it from the node instead')
    .action(async (ref, node, options, command) => {
      const g = globals(command);
      const supply = await (await userClient(g)).supplies.set({ software: ref, node, state: options.destroy ? 'destroyed' : 'available' });
      print(g, supply, (s) => `${s.software.name}@${s.software.version} on ${s.node}: ${s.state}`);
    });
}

export function registerNodeAdminCommands(node: Command): void {
  node
    .command('register')
    .description('register a node and print its credential (shown once; operators)')
    .argument('<name>')
    .option('--label <pairs...>', 'labels that SLAs match, as KEY=VALUE (region=eu network=lan)')
    .option('--scope <scope>', 'whose instances it takes: open (anyone, default), owner, closed')
    .option('--owner <account>', 'the account that owns it (default: you)')
    .option('--resource <pairs...>', 'what it offers, as NAME=AMOUNT: cpu (cores), memory (MiB), disk (GiB) or any name (cpu=8 memory=16384)')
    .action(async (name, options, command) => {
      const g = globals(command);
      const body: NodeRegister = { name };
      if (options.label) body.labels = parsePairs(options.label, '--label');
      if (options.resource) body.resources = parseAmounts(options.resource, '--resource');
      if (options.scope) body.scope = parseScope(options.scope);
      if (options.owner) body.owner = options.owner;
      const client = await userClient(g);
      const credential = await client.nodes.register(body);
      // The master's binary cache key travels with the credential, over the operator's
      // own authenticated channel: the node never has to trust a key it downloaded itself.
      const { publicKey } = await client.binaryCache.key();
      print(g, { ...credential, binaryCacheKey: publicKey }, (c) =>
        fields([['node', c.name], ['credential', c.credential], ['binary cache key', c.binaryCacheKey]]),
      );
    });
  node
    .command('binary-cache-key')
    .description("print the master's binary cache key, for `pledger node configure --binary-cache-key` (register prints it too)")
    .action(async (_options, command) => {
      const g = globals(command);
      const key = await (await userClient(g)).binaryCache.key();
      print(g, key, (k) => k.publicKey);
    });
  node
    .command('set')
    .description("change a node's labels, resources, scope, owner or binary cache uploads (operators)")
    .argument('<name>')
    .option('--label <pairs...>', 'add or change labels, as KEY=VALUE')
    .option('--unlabel <keys...>', 'remove labels')
    .option('--resource <pairs...>', 'declare or change resources, as NAME=AMOUNT (memory=32768)')
    .option('--remove-resource <names...>', 'declare a resource no more: nothing that needs it goes there any longer')
    .option('--scope <scope>', 'open, owner or closed')
    .option('--owner <account>', 'the account that owns it')
    .option('--no-owner', 'no owner')
    .option('--binary-cache-upload <on|off>', 'whether the master files the built parts it uploads to the binary cache (off by default)')
    .action(async (name, options, command) => {
      const g = globals(command);
      const client = await userClient(g);
      const update: NodeUpdate = {};
      const current = async () => {
        const view = (await client.nodes.list()).find((n) => n.name === name);
        if (!view) throw new PledgerError('NODE_NOT_FOUND', `no node named "${name}"`);
        return view;
      };
      if (options.label || options.unlabel) {
        const labels = { ...(await current()).labels, ...parsePairs(options.label ?? [], '--label') };
        for (const key of options.unlabel ?? []) delete labels[key];
        update.labels = labels;
      }
      if (options.resource || options.removeResource) {
        const declared = Object.fromEntries(Object.entries((await current()).resources).map(([resource, { capacity }]) => [resource, capacity]));
        const resources = { ...declared, ...parseAmounts(options.resource ?? [], '--resource') };
        for (const resource of options.removeResource ?? []) delete resources[resource];
        update.resources = resources;
      }
      if (options.scope) update.scope = parseScope(options.scope);
      if (options.owner === false) update.owner = null;
      else if (typeof options.owner === 'string') update.owner = options.owner;
      if (options.binaryCacheUpload !== undefined) update.binaryCacheUpload = parseSwitch(options.binaryCacheUpload, '--binary-cache-upload');
      if (Object.keys(update).length === 0) {
        throw new PledgerError('BAD_REQUEST', 'nothing to change: give --label, --unlabel, --resource, --remove-resource, --scope, --owner, --no-owner or --binary-cache-upload');
      }
      const view = await client.nodes.update(name, update);
      print(g, view, (n) =>
        fields([
          ['node', n.name],
          ['scope', n.scope],
          ['owner', n.owner],
          ['labels', labelText(n.labels)],
          ['resources', resourceText(n.resources)],
          ['binary cache upload', n.binaryCacheUpload ? 'on' : 'off'],
        ]),
      );
    });
  node
    .command('list')
    .description('list the nodes (operators)')
    .action(async (_options, command) => {
      const g = globals(command);
      const list = await (await userClient(g)).nodes.list();
      print(g, list, (l) => {
        if (l.length === 0) return 'no nodes';
        const nodes = table(
          ['NAME', 'SCOPE', 'LABELS', 'RESOURCES (USED/DECLARED)', 'PARTITIONS', 'FREE', 'LAST SEEN', 'SOFTWARE'],
          l.map((n) => [
            n.name,
            n.scope,
            labelText(n.labels),
            resourceText(n.resources),
            n.partitions,
            n.freePartitions,
            n.lastSeenAt,
            n.software.map((s) => `${s.name}@${s.version}:${s.status}`).join(' '),
          ]),
        );
        const failures = l.flatMap((n) => n.software.filter((s) => s.status === 'error').map((s) => `\n${n.name}: ${s.name}@${s.version} failed to build:\n${s.message ?? ''}`));
        const setAside = l.flatMap((n) =>
          n.setAside ? [`\n${n.name}: ${n.setAside.count} event(s) set aside, refused by the master for good (last: ${n.setAside.lastType ?? '?'} ${n.setAside.lastEvent ?? ''}: ${n.setAside.lastReason ?? ''})`] : [],
        );
        return nodes + failures.join('\n') + setAside.join('');
      });
    });
}


/** `KEY=VALUE` pairs, as labels and SLAs are given on the command line. */
export function parsePairs(pairs: string[], flag: string): Record<string, string> {
  const parsed: Record<string, string> = {};
  for (const pair of pairs) {
    const match = /^([^=]+)=(.+)$/s.exec(pair);
    if (!match) throw new PledgerError('BAD_REQUEST', `${flag} ${pair}: expected KEY=VALUE`);
    parsed[match[1]!] = match[2]!;
  }
  return parsed;
}

/** `NAME=AMOUNT` pairs of declared resources: whole numbers. */
export function parseAmounts(pairs: string[], flag: string): Record<string, number> {
  const amounts: Record<string, number> = {};
  for (const [name, amount] of Object.entries(parsePairs(pairs, flag))) {
    if (!/^\d{1,10}$/.test(amount)) throw new PledgerError('BAD_REQUEST', `${flag} ${name}=${amount}: expected NAME=AMOUNT, a whole number`);
    amounts[name] = Number(amount);
  }
  return amounts;
}

function resourceText(resources: NodeView['resources']): string {
  return Object.entries(resources)
    .map(([name, { capacity, used }]) => `${name}=${used}/${capacity}`)
    .join(',');
}

function parseScope(scope: string): NodeScope {
  if (scope !== 'open' && scope !== 'owner' && scope !== 'closed') throw new PledgerError('BAD_REQUEST', `--scope ${scope}: expected open, owner or closed`);
  return scope;
}

function parseSwitch(value: string, flag: string): boolean {
  if (value !== 'on' && value !== 'off') throw new PledgerError('BAD_REQUEST', `${flag} ${value}: expected on or off`);
  return value === 'on';
}

function labelText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}
