/** The options every command accepts. */
export interface GlobalOptions {
  json?: boolean;
  master?: string;
  token?: string;
}

export function globals(command: { optsWithGlobals(): object }): GlobalOptions {
  return command.optsWithGlobals() as GlobalOptions;
}
