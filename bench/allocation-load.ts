/**
 * The HTTP load of the allocation benchmark, run in a worker thread of its own: the
 * master answers on the main thread, whose database calls are synchronous, and a load
 * generator sharing that thread could send nothing while a commit waits for the disk.
 * Here requests leave on time, as they would from other machines.
 */
import { parentPort, workerData } from 'node:worker_threads';

export interface LoadOptions {
  url: string;
  token: string;
  rate: number;
  /** Instance titles and SLAs to request, in order. */
  requests: { title: string; sla: Record<string, string> }[];
}

export interface LoadResult {
  latencies: number[];
  failures: string[];
}

const { url, token, rate, requests } = workerData as LoadOptions;
const latencies: number[] = [];
const failures: string[] = [];
const started = performance.now();
const pending: Promise<void>[] = [];
for (const [i, { title, sla }] of requests.entries()) {
  const wait = started + (i * 1000) / rate - performance.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  pending.push(
    (async () => {
      const sent = performance.now();
      const response = await fetch(`${url}/api/v1/instances/${title}`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ software: 'bench', sla }),
      });
      const view = (await response.json()) as { status?: string };
      latencies.push(performance.now() - sent);
      if (view.status !== 'allocated') failures.push(`${title}: ${JSON.stringify(view)}`);
    })(),
  );
}
await Promise.all(pending);
parentPort!.postMessage({ latencies, failures } satisfies LoadResult);
