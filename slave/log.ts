/**
 * The node agent's only voice. It runs from cron as often as from a terminal, so it
 * writes JSON lines (one object per event, easy to ship and grep) or readable lines,
 * always on stderr: stdout belongs to the CLI's own output.
 */
export interface Logger {
  info(message: string, fields?: object): void;
  error(message: string, fields?: object): void;
}

type Level = 'info' | 'error';

export function createLogger(json: boolean): Logger {
  const write = (level: Level, message: string, fields: object = {}) => {
    const time = new Date().toISOString();
    const line = json ? JSON.stringify({ time, level, msg: message, ...fields }) : readable(time, level, message, fields);
    process.stderr.write(`${line}\n`);
  };
  return {
    info: (message, fields) => write('info', message, fields),
    error: (message, fields) => write('error', message, fields),
  };
}

/** A logger that drops everything: for callers (and tests) that only want the results. */
export const silentLogger: Logger = { info: () => {}, error: () => {} };

function readable(time: string, level: Level, message: string, fields: object): string {
  const extras = Object.entries(fields).map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  return [time, level === 'error' ? 'ERROR' : 'info ', message, ...extras].join(' ');
}
