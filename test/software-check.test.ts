/**
 * `pledger software check DIR` and the published JSON Schema of software.yaml: what a
 * release author sees before anything reaches a master.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { softwareJsonSchema } from '../protocol/software-release.js';
import { PROJECT, pledger } from './helpers/processes.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

const BUNDLED = readdirSync(path.join(PROJECT, 'software-releases'));

const BROKEN = [
  'name: broken',
  'version: 1.0.0',
  'parts:',
  '  app:',
  '    files: [missing.c]',
  '    after: [later]',
  '  later:',
  '    deb: [redis-server]',
  '    source: { url: "https://example.org/a.tar.gz", sha256: "0000000000000000000000000000000000000000000000000000000000000000" }',
  '  shared_one:',
  '    shared: true',
  '    build: [[make, "PREFIX={{ software.path }}"]]',
  'software-types:',
  '  default:',
  '    files:',
  '      etc/app.conf: templates/missing.njk',
  '',
].join('\n');

describe('pledger software check', () => {
  it('reports every problem of a release at once, each with its line and column in software.yaml', async () => {
    const dir = writeTree({ 'software.yaml': BROKEN });
    const checked = await pledger(['software', 'check', dir, '--json']);
    expect(checked.exitCode).toBe(1);
    const { problems } = checked.json<{ problems: { where: string; at: string; message: string }[] }>();
    expect(problems).toEqual(
      expect.arrayContaining([
        { where: 'parts.app.files', at: 'software.yaml:5:12', message: 'missing.c is not a file of the release' },
        { where: 'parts.app.after', at: 'software.yaml:6:12', message: 'later is not a part written before app' },
        expect.objectContaining({ where: 'parts.later', at: 'software.yaml:8:5', message: expect.stringMatching(/takes one of Debian packages \(deb\), a source archive \(source\) or npm packages/) }),
        expect.objectContaining({ where: 'parts.shared_one.build[0]', at: 'software.yaml:12:13', message: expect.stringMatching(/software\.\*/) }),
        expect.objectContaining({ where: 'software-types.default.files', message: 'templates/missing.njk is not a file of the release' }),
      ]),
    );
    expect(problems).toHaveLength(5);
  });

  it('prints one problem per line for people, and a count', async () => {
    const dir = writeTree({ 'software.yaml': BROKEN.replace('name: broken', 'name: Broken_Name') });
    const checked = await pledger(['software', 'check', dir]);
    expect(checked.exitCode).toBe(1);
    expect(checked.stdout).toMatch(/^software\.yaml:1:7: name: must match pattern/m);
    expect(checked.stdout).toMatch(/^1 problem\(s\)$/m);
  });

  it('accepts every bundled release', async () => {
    expect(BUNDLED).toEqual(expect.arrayContaining(['hello', 'redis', 'static-site']));
    for (const name of BUNDLED) {
      const checked = await pledger(['software', 'check', path.join(PROJECT, 'software-releases', name)]);
      expect(checked.stdout).toMatch(new RegExp(`^${name}@\\S+ is valid \\([0-9a-f]{64}\\)$`));
      expect(checked.exitCode).toBe(0);
    }
  });

  it('names the place of a YAML syntax error', async () => {
    const dir = writeTree({ ...greeterRelease(), 'software.yaml': 'name: x\nversion: [1\n' });
    const checked = await pledger(['software', 'check', dir, '--json']);
    expect(checked.exitCode).toBe(1);
    expect(checked.json<{ problems: { at: string }[] }>().problems[0]!.at).toMatch(/^software\.yaml:\d+$/);
  });
});

describe('the JSON Schema of software.yaml', () => {
  const published = JSON.parse(readFileSync(path.join(PROJECT, 'docs', 'software.schema.json'), 'utf8')) as object;

  it('is up to date in docs/ (regenerate with `pledger software schema > docs/software.schema.json`)', async () => {
    expect(published).toEqual(softwareJsonSchema());
    const printed = await pledger(['software', 'schema']);
    expect(JSON.parse(printed.stdout)).toEqual(published);
  });

  it('validates the bundled releases and refuses an unknown key, as an editor using it would', () => {
    const validate = new Ajv({ strict: false }).compile(published);
    for (const name of BUNDLED) {
      const definition: unknown = parse(readFileSync(path.join(PROJECT, 'software-releases', name, 'software.yaml'), 'utf8'));
      expect(validate(definition), JSON.stringify(validate.errors)).toBe(true);
    }
    expect(validate({ name: 'x', version: '1', 'software-types': { default: {} }, partz: {} })).toBe(false);
  });
});
