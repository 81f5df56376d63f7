/**
 * The bundled `static-site` release end to end: nginx from Debian's binary packages,
 * built and run by the node agent as an ordinary user, serving the pages its requester
 * gave as parameters, fetched over real HTTP.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import type { RunReport } from '../slave/result.js';
import { startNodeFixture, type NodeFixture } from './helpers/node-fixture.js';
import { pledger, processesMentioning } from './helpers/processes.js';

describe('static-site: nginx from Debian packages serving the pages given as parameters', () => {
  let f: NodeFixture;
  const info = async () => (await pledger(['info', 'site', '--json'], { env: f.asUser })).json<InstanceView>();

  beforeAll(async () => {
    f = await startNodeFixture('edge-web', '127.46.0.1');
  }, 60_000);
  afterAll(async () => {
    await f?.close();
  });

  it('builds nginx from Debian packages as an ordinary user', async () => {
    expect((await pledger(['supply', 'static-site', f.nodeName], { env: f.asAdmin })).exitCode).toBe(0);
    const run = await f.node('software');
    expect(run.json<RunReport>().results, run.stderr).toEqual([expect.objectContaining({ item: 'static-site@1.22.1', status: 'done' })]);
  }, 600_000);

  it('serves the index, the stylesheet and the 404 page given as parameters, as they were written', async () => {
    const index = '<!doctype html><h1>Bonjour {{ 7*7 }} & <b>à tous</b></h1>\n';
    const requested = await pledger(
      ['request', 'site', 'static-site', '--parameters', `index=${index}`, '--parameters', 'not-found=<p>nothing here</p>', '--parameters', 'stylesheet=h1 { color: teal }', '--json'],
      { env: f.asUser },
    );
    expect(requested.exitCode, requested.stderr).toBe(0);
    const run = await f.node('instance');
    expect(run.exitCode, run.stdout + run.stderr).toBe(0);
    const view = await info();
    expect(view).toMatchObject({ status: 'started', ready: true });
    const url = view.connection.url!;
    expect(url).toMatch(/^http:\/\/127\.46\.0\.1:\d+\/$/);

    const home = await fetch(url);
    expect(home.status).toBe(200);
    expect(home.headers.get('content-type')).toMatch(/^text\/html/);
    expect(home.headers.get('server')).toBe('nginx');
    expect(await home.text()).toBe(index);
    const css = await fetch(new URL('style.css', url));
    expect(css.headers.get('content-type')).toMatch(/^text\/css/);
    expect(await css.text()).toBe('h1 { color: teal }');
    const missing = await fetch(new URL('no/such/page', url));
    expect(missing.status).toBe(404);
    expect(await missing.text()).toBe('<p>nothing here</p>');
  }, 120_000);

  it('runs nginx as the node user', () => {
    const workers = processesMentioning('nginx').filter((p) => p.cmdline.includes(f.root));
    expect(workers.length).toBeGreaterThan(0);
    for (const p of workers) expect(p.uid).toBe(f.agent.uid);
  });

  it('serves new pages after a parameter change and the next run', async () => {
    await pledger(['request', 'site', 'static-site', '--parameters', 'index=<p>v2</p>'], { env: f.asUser });
    expect((await f.node('instance')).exitCode).toBe(0);
    const view = await info();
    expect(view).toMatchObject({ serial: 2, status: 'started' });
    expect(await (await fetch(view.connection.url!)).text()).toBe('<p>v2</p>');
  }, 120_000);
});
