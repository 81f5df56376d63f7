/**
 * The one way to call the master, shared by the CLI and the node agent.
 *
 * Errors come back as PledgerError: the master's own error when it answered, and
 * MASTER_UNREACHABLE when it could not be reached at all, so callers can tell "the
 * master said no" from "there is no master".
 *
 * @example
 *   const master = new MasterClient({ url: 'http://127.0.0.1:8600', token });
 *   const me = await master.call<Account>('GET', '/api/v1/whoami');
 */
import { PledgerError } from './errors.js';

export interface MasterClientOptions {
  url: string;
  token?: string;
  /** Milliseconds before a call is abandoned. */
  timeoutMs?: number;
}

export interface RawAnswer {
  status: number;
  headers: Headers;
  body: Buffer;
}

export class MasterClient {
  readonly url: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;

  constructor(options: MasterClientOptions) {
    this.url = options.url.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** Sends JSON (when `body` is given) and parses the JSON answer. */
  async call<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    const answer = await this.raw(method, path, {
      body: body === undefined ? undefined : Buffer.from(JSON.stringify(body)),
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    });
    return (answer.body.length > 0 ? JSON.parse(answer.body.toString('utf8')) : undefined) as T;
  }

  /**
   * Sends bytes and returns the answer as bytes. Answers 2xx and 304 are returned;
   * every other status is thrown as the master's PledgerError.
   */
  async raw(method: string, path: string, options: { body?: Buffer; headers?: Record<string, string> } = {}): Promise<RawAnswer> {
    const headers: Record<string, string> = { accept: 'application/json', ...options.headers };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let response: Response;
    const release = new AbortController();
    try {
      response = await fetch(`${this.url}${path}`, {
        method,
        headers,
        body: options.body,
        signal: AbortSignal.any([release.signal, AbortSignal.timeout(this.timeoutMs)]),
      });
    } catch (error) {
      const reason = (error as Error & { cause?: Error }).cause?.message ?? (error as Error).message;
      throw new PledgerError('MASTER_UNREACHABLE', `cannot reach the master at ${this.url}: ${reason}`, { cause: error });
    }
    const body = Buffer.from(await response.arrayBuffer());
    // A 304 has no body; a server that still announces one (Content-Length) leaves the
    // connection waiting for it, which keeps the process alive until it times out.
    if (response.status === 304) release.abort();
    if (response.ok || response.status === 304) return { status: response.status, headers: response.headers, body };
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      parsed = undefined;
    }
    throw PledgerError.fromBody(parsed, response.status);
  }
}
