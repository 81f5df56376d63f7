/**
 * The hello software release: it loads, its parameters behave as documented, its
 * templates render with the documented context, and the server it builds answers.
 */
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Ajv } from 'ajv';
import { execa } from 'execa';
import nunjucks from 'nunjucks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSoftware, type LoadedSoftware } from '../protocol/software-release.js';

const SR = path.join(import.meta.dirname, '..', 'software-releases', 'hello');

describe('software release hello', () => {
  let sr: LoadedSoftware;
  beforeAll(async () => {
    sr = await loadSoftware(SR);
  });

  it('loads, with a stable content hash', async () => {
    expect(sr.definition.name).toBe('hello');
    expect(sr.definition.version).toBe('1.0.0');
    expect(Object.keys(sr.definition['software-types'])).toEqual(['default']);
    expect(sr.hash).toMatch(/^[0-9a-f]{64}$/);
    expect((await loadSoftware(SR)).hash).toBe(sr.hash);
  });

  it('defaults the greeting and refuses bad parameters', () => {
    const schema = sr.parameterSchemas.default as { properties: { greeting: { default: string } } };
    expect(schema.properties.greeting.default).toBe('Hello from Pledger!');

    const validate = new Ajv({ useDefaults: true, strict: false }).compile(schema);
    const parameters: Record<string, unknown> = {};
    expect(validate(parameters)).toBe(true);
    expect(parameters).toEqual({ greeting: 'Hello from Pledger!' });
    expect(validate({ greeting: 'x'.repeat(200) })).toBe(true);
    expect(validate({ greeting: 'x'.repeat(201) })).toBe(false);
    expect(validate({ greeting: '' })).toBe(false);
    expect(validate({ greeting: 42 })).toBe(false);
    expect(validate({ colour: 'blue' })).toBe(false);
  });

  it('renders with the documented context and keeps parameters as data', async () => {
    const env = new nunjucks.Environment(null, { autoescape: false, throwOnUndefined: true });
    const context = {
      parameters: { greeting: '{{ 7*7 }} & <b>' },
      partition: { reference: 'p0', ip: '127.0.0.2', path: '/srv/pledger/partitions/p0', ports: { first: 10000, last: 10009 } },
      ports: { http: 10000 },
      parts: { hello: { path: `/srv/pledger/software/${sr.hash}/parts/hello` } },
      software: { name: 'hello', version: '1.0.0', hash: sr.hash, path: `/srv/pledger/software/${sr.hash}` },
      secrets: {},
      instance: { title: 'my-hello', softwareType: 'default', serial: 1 },
    };
    const render = (template: string) => env.renderString(template, context);
    const type = sr.definition['software-types'].default!;

    const greeting = render(await readFile(path.join(SR, type.files!['etc/greeting.txt']!), 'utf8'));
    expect(greeting.trimEnd()).toBe('{{ 7*7 }} & <b>');
    expect(type.services!.hello!.map(render)).toEqual([
      `/srv/pledger/software/${sr.hash}/parts/hello/hello`,
      '127.0.0.2',
      '10000',
      '/srv/pledger/partitions/p0/etc/greeting.txt',
    ]);
    expect(render((type.promises!.answers as { http: string }).http)).toBe('http://127.0.0.2:10000/health');
    expect(render(type.publish!.url!)).toBe('http://127.0.0.2:10000/');
    // A template that names something the context lacks fails instead of rendering empty.
    expect(() => render('{{ ports.https }}')).toThrow(/undefined/);
  });
});

describe('the hello server', () => {
  let dir: string;
  let base: string;
  let server: ReturnType<typeof execa> | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'pledger-hello-'));
    const { definition } = await loadSoftware(SR);
    const part = definition.parts!.hello!;
    for (const file of part.files ?? []) await copyFile(path.join(SR, file), path.join(dir, file));
    // Built as the node agent builds it: in the part's directory, no shell, a clean PATH.
    for (const [command, ...args] of part.build ?? []) {
      await execa(command!, args, { cwd: dir, env: { PATH: '/usr/local/bin:/usr/bin:/bin' }, extendEnv: false });
    }
    // The release's build has no -Werror (a newer compiler must not break it); the source must still be clean.
    await execa('cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', path.join(dir, 'hello-strict'), path.join(dir, 'hello.c')]);

    await execa('sh', ['-c', 'printf "%s\\n" "$1" > "$2"', 'sh', '{{ 7*7 }} & <b>', path.join(dir, 'greeting.txt')]);
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    server = execa(path.join(dir, 'hello'), ['127.0.0.1', String(port), path.join(dir, 'greeting.txt')], { reject: false });
    await waitUntilAnswering(`${base}/health`);
  }, 60_000);

  afterAll(async () => {
    if (server !== undefined && server.exitCode === null) server.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('answers / with the greeting, as it is', async () => {
    const response = await fetch(`${base}/`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/plain; charset=utf-8');
    expect(response.headers.get('content-length')).toBe(String(Buffer.byteLength('{{ 7*7 }} & <b>\n')));
    expect(await response.text()).toBe('{{ 7*7 }} & <b>\n');
  });

  it('answers /health', async () => {
    const response = await fetch(`${base}/health`);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('ok\n');
  });

  it('answers 404 on other paths and 405 on other methods', async () => {
    const missing = await fetch(`${base}/nothing-here`);
    expect(missing.status).toBe(404);
    await missing.text();
    const posted = await fetch(`${base}/`, { method: 'POST', body: 'x' });
    expect(posted.status).toBe(405);
    expect(posted.headers.get('allow')).toBe('GET');
    await posted.text();
  });

  it('stops cleanly on SIGTERM and logs one line per request', async () => {
    server!.kill('SIGTERM');
    const result = await server!;
    expect(result.exitCode).toBe(0);
    const lines = String(result.stdout).split('\n');
    expect(lines.filter((line) => / "GET \/ HTTP\/1\.[01]" 200 /.test(line))).toHaveLength(1);
    expect(lines.filter((line) => / "GET \/nothing-here HTTP\/1\.[01]" 404 /.test(line))).toHaveLength(1);
    expect(lines.at(-1)).toBe('hello: stopping on SIGTERM');
  });
});

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

async function waitUntilAnswering(url: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const response = await fetch(url);
      await response.text();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}
