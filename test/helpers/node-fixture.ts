/**
 * One real master process, an operator and a user, and one node whose agent runs as
 * an ordinary user, formatted: what the end-to-end tests of bundled releases share.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { freshDatabase, type TestDatabase } from './databases.js';
import { agentUser, pledger, portBase, processesMentioning, startMaster, type AgentUser, type RunningMaster, type RunResult } from './processes.js';

export interface NodeFixture {
  master: RunningMaster;
  asAdmin: Record<string, string>;
  asUser: Record<string, string>;
  agent: AgentUser;
  root: string;
  nodeName: string;
  /** `pledger node COMMAND --json` as the agent's user, with `env` added to its environment. */
  node(command: string, env?: Record<string, string>): Promise<RunResult>;
  close(): Promise<void>;
}

/** `settings` are written into the node configuration beside what `node configure` wrote (supervisor, promiseSummarySeconds...). */
export async function startNodeFixture(nodeName: string, ipBase: string, partitions = 1, settings: Record<string, unknown> = {}): Promise<NodeFixture> {
  const db: TestDatabase = await freshDatabase('sqlite');
  const master = await startMaster(db.url);
  const asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
  const user = await pledger(['account', 'create', 'alice', '--json'], { env: asAdmin });
  if (user.exitCode !== 0) throw new Error(`account create failed: ${user.stderr}`);
  const asUser = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: user.json<{ token: string }>().token };
  const agent = agentUser();
  const root = path.join(agent.home, 'root');
  const config = path.join(agent.home, 'node.json');
  const registered = await pledger(['node', 'register', nodeName, '--json'], { env: asAdmin });
  const configure = await pledger(
    ['node', 'configure', '--master', master.url, '--credential', registered.json<{ credential: string }>().credential, '--root', root, '--config', config,
      '--partitions', String(partitions), '--ip-base', ipBase, '--port-base', String(portBase())],
    { user: agent },
  );
  if (configure.exitCode !== 0) throw new Error(`node configure failed: ${configure.stderr}`);
  // Rewritten in place: the file keeps the agent's ownership and its mode.
  writeFileSync(config, JSON.stringify({ ...(JSON.parse(readFileSync(config, 'utf8')) as object), ...settings }));
  const node = (command: string, env?: Record<string, string>) => pledger(['node', command, '--config', config, '--json'], { user: agent, env, timeoutMs: 600_000 });
  const formatted = await node('format');
  if (formatted.exitCode !== 0) throw new Error(`node format failed: ${formatted.stderr}`);
  return {
    master,
    asAdmin,
    asUser,
    agent,
    root,
    nodeName,
    node,
    close: async () => {
      // Leave nothing running, whatever happened.
      for (const p of processesMentioning(root)) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
      await master.stop();
      await db.drop();
    },
  };
}
