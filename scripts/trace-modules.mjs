/**
 * `node --import ./scripts/trace-modules.mjs ...` appends the URL of every ES module
 * (or package entry) the program imports to the file named by $PLEDGER_TRACE_MODULES,
 * one a line: what a command loads, for the start-up tests and benchmarks.
 */
import { register } from 'node:module';

if (process.env.PLEDGER_TRACE_MODULES) {
  const hooks = `
    import { appendFileSync } from 'node:fs';
    export async function resolve(specifier, context, nextResolve) {
      const resolved = await nextResolve(specifier, context);
      appendFileSync(${JSON.stringify(process.env.PLEDGER_TRACE_MODULES)}, resolved.url + '\\n');
      return resolved;
    }`;
  register(`data:text/javascript,${encodeURIComponent(hooks)}`);
}
