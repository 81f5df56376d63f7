/**
 * Rendering an instance: parameters are data, a missing value fails loudly and names
 * itself, and nothing is written outside the partition.
 */
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureSecrets, namePorts } from '../slave/deploy.js';
import {
  createTemplateEnvironment,
  renderFiles,
  renderString,
  renderTemplate,
  resolveInside,
  shellQuote,
  writePartitionFiles,
} from '../slave/render.js';

let scratch: string;
let release: string;
let partition: string;

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'pledger-render-'));
  release = path.join(scratch, 'release');
  partition = path.join(scratch, 'partition');
  await mkdir(path.join(release, 'templates'), { recursive: true });
  await mkdir(partition);
  await writeFile(path.join(release, 'templates', 'app.conf.njk'), 'greeting = {{ parameters.greeting }}\nport = {{ ports.http }}\n');
  await writeFile(path.join(release, 'templates', 'broken.njk'), 'a = {{ parameters.greeting }}\nb = {{ parameters.missing.deep }}\n');
  await writeFile(path.join(release, 'templates', 'outer.njk'), 'outer\n{% include "templates/broken.njk" %}\n');
  await writeFile(path.join(release, 'templates', 'filters.njk'), 'json = {{ parameters | json }}\nsh = {{ parameters.greeting | shell }}\n');
  await writeFile(path.join(release, 'templates', 'run.sh.njk'), '#!/bin/sh\necho {{ parameters.greeting | shell }}\n', { mode: 0o755 });
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

const context = (parameters: Record<string, unknown>) => ({ parameters, ports: { http: 30001 } });

describe('rendering', () => {
  it('prints a parameter that looks like a template as it is', () => {
    const env = createTemplateEnvironment(release);
    const greeting = '{{ 7*7 }} {% raw %}{% include "/etc/passwd" %}';
    const out = renderTemplate(env, release, 'templates/app.conf.njk', context({ greeting }), 'etc/app.conf');
    expect(out).toBe(`greeting = ${greeting}\nport = 30001\n`);
    expect(renderString(env, '--greeting={{ parameters.greeting }}', context({ greeting }), 'services.app[1]')).toBe(`--greeting=${greeting}`);
  });

  it('fails on an undefined value, naming the file, the line and the expression', () => {
    const env = createTemplateEnvironment(release);
    expect(() => renderFiles(env, release, { 'etc/b.conf': 'templates/broken.njk' }, context({ greeting: 'hi' }))).toThrow(
      'etc/b.conf (from templates/broken.njk), line 2: {{ parameters.missing.deep }} is undefined',
    );
    expect(() => renderTemplate(env, release, 'templates/outer.njk', context({ greeting: 'hi' }), 'etc/outer.conf')).toThrow(
      /etc\/outer.conf \(in templates\/broken.njk\), line 2: \{\{ parameters.missing.deep \}\} is undefined/,
    );
    expect(() => renderString(env, 'http://{{ partition.ip }}:{{ ports.nope }}/', { partition: { ip: '127.0.0.1' }, ports: {} }, 'publish.url')).toThrow(
      'publish.url, line 1: {{ ports.nope }} is undefined',
    );
  });

  it('offers json and shell filters that escape what they are given', async () => {
    const env = createTemplateEnvironment(release);
    const greeting = `it's "$(rm -rf /)"`;
    const out = renderTemplate(env, release, 'templates/filters.njk', context({ greeting }), 'x');
    expect(out).toBe(`json = ${JSON.stringify({ greeting })}\nsh = 'it'\\''s "$(rm -rf /)"'\n`);
    expect(shellQuote("a'b")).toBe(`'a'\\''b'`);
    expect(() => renderString(env, '{{ parameters.nope | shell }}', context({}), 'services.x[0]')).toThrow(/shell filter got an undefined value/);
  });

  it('writes files atomically inside the partition, keeping the executable bit of the template', async () => {
    const env = createTemplateEnvironment(release);
    const files = renderFiles(env, release, { 'etc/app.conf': 'templates/app.conf.njk', 'bin/run': 'templates/run.sh.njk' }, context({ greeting: 'hi' }));
    await writePartitionFiles(partition, files);
    expect(await readFile(path.join(partition, 'etc', 'app.conf'), 'utf8')).toBe('greeting = hi\nport = 30001\n');
    expect((await stat(path.join(partition, 'bin', 'run'))).mode & 0o777).toBe(0o750);
    expect((await stat(path.join(partition, 'etc', 'app.conf'))).mode & 0o777).toBe(0o640);
  });

  it('refuses paths that escape the partition', async () => {
    for (const bad of ['../outside', '/etc/passwd', 'etc/../../outside', '.pledger/secrets.json']) {
      expect(() => resolveInside(partition, bad)).toThrow();
    }
    expect(resolveInside(partition, 'etc/./x.conf')).toBe(path.join(partition, 'etc', 'x.conf'));
    await expect(writePartitionFiles(partition, [{ path: '../evil', content: 'x', mode: 0o640 }])).rejects.toThrow(/outside the partition/);
  });

  it('refuses to write through a symbolic link that leaves the partition', async () => {
    const outside = path.join(scratch, 'outside');
    await mkdir(outside);
    await symlink(outside, path.join(partition, 'escape'));
    await expect(writePartitionFiles(partition, [{ path: 'escape/x.conf', content: 'x', mode: 0o640 }])).rejects.toThrow(/outside the partition/);
    await expect(stat(path.join(outside, 'x.conf'))).rejects.toThrow();
  });
});

describe('ports and secrets', () => {
  it('names ports in order from the partition range and refuses too many', () => {
    expect(namePorts(['http', 'admin'], { first: 30010, last: 30019 })).toEqual({ http: 30010, admin: 30011 });
    expect(() => namePorts(['a', 'b', 'c'], { first: 30010, last: 30011 })).toThrow(/3 ports, the partition has 2/);
  });

  it('generates secrets once, keeps them private and reuses them', async () => {
    const dir = path.join(scratch, 'secrets-partition');
    await mkdir(dir);
    const first = await ensureSecrets(dir, ['password']);
    expect(first.password).toMatch(/^[A-Za-z0-9_-]{32}$/);
    const second = await ensureSecrets(dir, ['password', 'token']);
    expect(second.password).toBe(first.password);
    expect(second.token).not.toBe(first.password);
    expect((await stat(path.join(dir, '.pledger', 'secrets.json'))).mode & 0o777).toBe(0o600);
  });
});
