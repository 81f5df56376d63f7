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
    expect(checked.stdout).toMatch(/^software\.yaml:5:12: parts\.app\.files: missing\.c is not a file of the release$/m);
    expect(checked.stdout).toMatch(/^6 problem\(s\)$/m);
  });

  it('still runs the checks after the schema on every piece a schema error does not touch', async () => {
    const yaml = BROKEN.replace('name: broken', 'name: Broken_Name')
      .replace('    after: [later]\n', '    after: [later]\n    timeout: -1\n')
      .replace('  shared_one:\n', '  bad_files:\n    files: [/etc/passwd, ../outside]\n    build: [[make, "{{ oops"]]\n  shared_one:\n')
      .concat(['    publish:', '      url: "{% if %}"', '  other:', '    colour: blue', '    services:', '      web: [/bin/true, "{{ unclosed"]', ''].join('\n'));
    const dir = writeTree({ 'software.yaml': yaml });
    const checked = await pledger(['software', 'check', dir, '--json']);
    expect(checked.exitCode).toBe(1);
    const problems = checked.json<{ problems: { where: string; at: string; message: string }[] }>().problems;
    const places = problems.map((p) => p.where).sort();
    expect(places).toEqual(
      [
        // The schema's own findings...
        'name',
        'parts.app.timeout',
        'parts.bad_files.files.0',
        'parts.bad_files.files.1',
        'software-types.other',
        // ...and every other check, on what has the right shape.
        'parts.app.files',
        'parts.app.after',
        'parts.later',
        'parts.bad_files.build[0]',
        'parts.shared_one.build[0]',
        'software-types.default.files',
        'software-types.default.publish.url',
        'software-types.other.services.web',
      ].sort(),
    );
    expect(problems.find((p) => p.where === 'parts.app.timeout')).toMatchObject({ at: 'software.yaml:7:14', message: 'must be >= 1' });
    expect(problems.find((p) => p.where === 'software-types.other')!.message).toContain('(colour)');
    expect(problems.find((p) => p.where === 'software-types.default.publish.url')!.message).toMatch(/^template syntax: /);
    // A path the schema refuses is never looked up: no "not a file" about it.
    expect(problems.filter((p) => p.where === 'parts.bad_files.files')).toEqual([]);
  });

  it('accepts every bundled release', async () => {
    expect(BUNDLED).toEqual(expect.arrayContaining(['hello', 'redis', 'static-site']));
    for (const name of BUNDLED) {
      const checked = await pledger(['software', 'check', path.join(PROJECT, 'software-releases', name)]);
      expect(checked.stdout).toMatch(new RegExp(`^${name}@\\S+ is valid \\([0-9a-f]{64}\\)$`));
      expect(checked.exitCode).toBe(0);
    }
  });

  it('names the line and column of a YAML syntax error', async () => {
    const unclosed = writeTree({ ...greeterRelease(), 'software.yaml': 'name: x\nversion: 1.0.0\nsoftware-types:\n  default:\n    ports: [a\n    secrets: [b]\n' });
    const checked = await pledger(['software', 'check', unclosed, '--json']);
    expect(checked.exitCode).toBe(1);
    expect(checked.json<{ problems: { at: string; message: string }[] }>().problems).toEqual([
      { where: 'software.yaml:6:5', at: 'software.yaml:6:5', message: expect.stringContaining('Flow sequence') },
    ]);

    const twice = writeTree({ ...greeterRelease(), 'software.yaml': 'name: x\nversion: 1.0.0\nsoftware-types:\n  default: {}\n  default: {}\n' });
    const printed = await pledger(['software', 'check', twice]);
    expect(printed.exitCode).toBe(1);
    expect(printed.stdout).toBe('software.yaml:5:3: Map keys must be unique\n1 problem(s)');
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
