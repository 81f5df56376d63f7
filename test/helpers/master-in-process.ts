/**
 * A real master served from the test process over a fresh SQLite file, for tests of
 * the node agent's parts. It notes every request it answers, so that a test can check
 * what the agent asked for without standing in for the master.
 */
import { initMaster, serveMaster, type RunningMaster } from '../../master/server.js';
import type { SoftwareView } from '../../protocol/api.js';
import { MasterClient } from '../../protocol/client.js';
import { packSoftware } from '../../protocol/software-archive.js';
import { freshDatabase, type TestDatabase } from './databases.js';

export interface InProcessMaster {
  url: string;
  port: number;
  /** `sqlite:/path/master.db`: the master's own database, for tests that change it under the master. */
  databaseUrl: string;
  operator: MasterClient;
  /** Every answered request as `METHOD /path STATUS`, release hashes shown as :hash. */
  answered: string[];
  registerNode(name: string): Promise<string>;
  publish(dir: string): Promise<SoftwareView>;
  /** Stops serving; the database stays, for `restart`. */
  stop(): Promise<void>;
  /** Serves the same database on the same port again. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export async function startInProcessMaster(): Promise<InProcessMaster> {
  const database: TestDatabase = await freshDatabase('sqlite');
  const { token } = await initMaster(database.url, 'admin');
  const answered: string[] = [];
  let running: RunningMaster | undefined;
  const serve = async (port: number) => {
    running = await serveMaster({ database: database.url, host: '127.0.0.1', port, softwareDir: null });
    running.app.server.on('request', (request, response) => {
      const route = `${request.method} ${(request.url ?? '').split('?')[0]!.replace(/[0-9a-f]{64}/, ':hash')}`;
      response.on('finish', () => answered.push(`${route} ${response.statusCode}`));
    });
    return Number(new URL(running.url).port);
  };
  const port = await serve(0);
  const url = `http://127.0.0.1:${port}`;
  const operator = new MasterClient({ url, token });
  return {
    url,
    port,
    databaseUrl: database.url,
    operator,
    answered,
    registerNode: async (name) => (await operator.nodes.register({ name })).credential,
    publish: async (dir) => operator.software.publish(await packSoftware(dir)),
    stop: async () => {
      await running?.close();
      running = undefined;
    },
    restart: async () => {
      await serve(port);
    },
    close: async () => {
      await running?.close();
      await database.drop();
    },
  };
}
