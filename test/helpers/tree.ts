/** Throwaway folders built from object literals: `{ 'a/b.txt': 'content' }`. */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export function writeTree(files: Record<string, string>, dir = mkdtempSync(path.join(tmpdir(), 'pledger-tree-'))): string {
  for (const [name, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, name), content);
  }
  return dir;
}

/** A small valid release: one software type with a `greeting` parameter. */
export function greeterRelease(version = '1.0.0', extra: Record<string, string> = {}): Record<string, string> {
  return {
    'software.yaml': [
      'name: greeter',
      `version: ${version}`,
      'description: a test release',
      'software-types:',
      '  default:',
      '    parameters: schema.json',
      '    ports: [http]',
      '    files:',
      '      etc/greeting.txt: greeting.njk',
      '    publish:',
      '      url: "http://{{ partition.ip }}:{{ ports.http }}/"',
      '',
    ].join('\n'),
    'schema.json': JSON.stringify({
      type: 'object',
      additionalProperties: false,
      properties: { greeting: { type: 'string', maxLength: 20, default: 'hello' } },
    }),
    'greeting.njk': '{{ parameters.greeting }}\n',
    ...extra,
  };
}
