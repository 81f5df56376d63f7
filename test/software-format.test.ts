/**
 * The software release format as the master checks it at publish time: every problem
 * is reported with its place, and nothing that could escape a folder gets through.
 */
import { describe, expect, it } from 'vitest';
import { PledgerError } from '../protocol/errors.js';
import { hashDirectory, loadSoftware, type SoftwareProblem } from '../protocol/software-release.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

async function problemsOf(files: Record<string, string>): Promise<SoftwareProblem[]> {
  try {
    await loadSoftware(writeTree(files));
  } catch (error) {
    expect(error).toBeInstanceOf(PledgerError);
    expect((error as PledgerError).code).toBe('SOFTWARE_INVALID');
    return (error as PledgerError).details as SoftwareProblem[];
  }
  throw new Error('the release was accepted');
}

const withYaml = (yaml: string, extra: Record<string, string> = {}) => ({ ...greeterRelease(), 'software.yaml': yaml, ...extra });

describe('the software release format', () => {
  it('loads a valid release and names it by its content', async () => {
    const dir = writeTree(greeterRelease());
    const loaded = await loadSoftware(dir);
    expect(loaded.definition.name).toBe('greeter');
    expect(loaded.hash).toBe(await hashDirectory(writeTree(greeterRelease())));
    expect(loaded.hash).not.toBe(await hashDirectory(writeTree(greeterRelease('1.0.0', { 'extra.txt': 'x' }))));
  });

  it('refuses map keys that could escape a folder or could never be requested', async () => {
    const problems = await problemsOf(
      withYaml(
        [
          'name: greeter',
          'version: 1.0.0',
          'parts:',
          '  "../../escape": { files: [schema.json] }',
          'software-types:',
          '  default:',
          '    files: { "../outside": greeting.njk }',
          '  Default: { bogus: 1 }',
        ].join('\n'),
      ),
    );
    const text = problems.map((p) => `${p.where}: ${p.message}`).join('\n');
    expect(text).toMatch(/parts: .*property name/);
    expect(text).toMatch(/software-types\.default\.files: .*property name/);
    expect(text).toMatch(/software-types: .*property name/);
  });

  it('reports every problem at once, with its place', async () => {
    const problems = await problemsOf(
      withYaml(
        [
          'name: greeter',
          'version: 1.0.0',
          'software-types:',
          '  default:',
          '    parameters: missing.json',
          '    ports: [http, http]',
          '    files: { etc/a: nosuch.njk }',
          '    services: { web: ["{% if %}"] }',
          '    publish: { url: "{{ unclosed" }',
        ].join('\n'),
      ),
    );
    const places = problems.map((p) => p.where);
    expect(places).toEqual(
      expect.arrayContaining([
        'software-types.default.parameters',
        'software-types.default.ports',
        'software-types.default.files',
        'software-types.default.services.web',
        'software-types.default.publish.url',
      ]),
    );
    expect(problems.find((p) => p.where === 'software-types.default.services.web')!.message).toMatch(/template syntax/);
  });

  it('points at the line and column of a YAML error', async () => {
    const problems = await problemsOf(withYaml('name: greeter\nversion: [1.0\n'));
    expect(problems[0]!.where).toMatch(/^software\.yaml:\d+:\d+$/);
  });

  it('refuses unknown keys and names the node agent reserves', async () => {
    const problems = await problemsOf(withYaml(greeterRelease()['software.yaml'] + 'colour: red\n', { 'build.log': 'x', 'parts/x': 'y' }));
    const text = problems.map((p) => `${p.where}: ${p.message}`).join('\n');
    expect(text).toMatch(/additional properties \(colour\)/);
    expect(text).toMatch(/build\.log: build\.log is reserved/);
    expect(text).toMatch(/parts: parts is reserved/);
  });

  it('refuses an invalid parameter schema', async () => {
    const problems = await problemsOf({ ...greeterRelease(), 'schema.json': '{"type": "nonsense"}' });
    expect(problems[0]).toMatchObject({ where: 'software-types.default.parameters' });
  });

  it('refuses a shared route or backend naming a parameter the shared schema does not have', async () => {
    const yaml = ['name: edge', 'version: 1.0.0', 'software-types:', '  default:', '    shared:', '      parameters: shared.json', '      unique: [hostname]', '      backends: [backend]', ''].join('\n');
    const problems = await problemsOf({ 'software.yaml': yaml, 'shared.json': JSON.stringify({ type: 'object', properties: { host: { type: 'string' }, backend: { type: 'string' } } }) });
    expect(problems).toEqual([{ where: 'software-types.default.shared.unique', message: "hostname is not a parameter of the shared instances' schema" }]);
  });
});
