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
import type { IncomingHttpHeaders, IncomingMessage, RequestOptions } from 'node:http';
import { PledgerError } from './errors.js';

export interface MasterClientOptions {
  url: string;
  token?: string;
  /** Milliseconds without a byte from the master before a call is abandoned. */
  timeoutMs?: number;
  /**
   * Delays before each new attempt of a call the master answered SERVICE_UNAVAILABLE
   * (it lost its database for a moment and changed nothing): 0.25 s, doubling, about 7 s
   * in all by default. A jitter of up to half of each spreads the callers out.
   */
  unavailableRetriesMs?: number[];
}

const UNAVAILABLE_RETRIES_MS = [250, 500, 1000, 2000, 4000];

/** The answer's headers, looked up by name in any case (as with fetch's Headers). */
export class AnswerHeaders {
  constructor(private readonly headers: IncomingHttpHeaders) {}

  get(name: string): string | null {
    const value = this.headers[name.toLowerCase()];
    if (value === undefined) return null;
    return Array.isArray(value) ? value.join(', ') : value;
  }
}

export interface RawAnswer {
  status: number;
  headers: AnswerHeaders;
  body: Buffer;
}

/**
 * node:http rather than fetch: fetch loads Node's bundled undici on first use, which
 * costs more than a whole no-op run of the node agent started by cron.
 */
const transport = (protocol: string) => (protocol === 'https:' ? import('node:https') : import('node:http'));

export class MasterClient {
  readonly url: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;
  private readonly unavailableRetriesMs: number[];

  constructor(options: MasterClientOptions) {
    this.url = options.url.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.unavailableRetriesMs = options.unavailableRetriesMs ?? UNAVAILABLE_RETRIES_MS;
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
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once(method, path, options);
      } catch (error) {
        const delay = this.unavailableRetriesMs[attempt];
        if (!(error instanceof PledgerError) || error.code !== 'SERVICE_UNAVAILABLE' || delay === undefined) throw error;
        await new Promise((resolve) => setTimeout(resolve, delay * (1 + Math.random() / 2)));
      }
    }
  }

  private async once(method: string, path: string, options: { body?: Buffer; headers?: Record<string, string> }): Promise<RawAnswer> {
    const headers: Record<string, string> = { accept: 'application/json', ...options.headers };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (options.body) headers['content-length'] = String(options.body.length);
    let answer: RawAnswer;
    try {
      answer = await this.exchange(new URL(`${this.url}${path}`), { method, headers }, options.body);
    } catch (error) {
      const reason = (error as Error & { cause?: Error }).cause?.message ?? (error as Error).message;
      throw new PledgerError('MASTER_UNREACHABLE', `cannot reach the master at ${this.url}: ${reason}`, { cause: error });
    }
    if ((answer.status >= 200 && answer.status < 300) || answer.status === 304) return answer;
    let parsed: unknown;
    try {
      parsed = JSON.parse(answer.body.toString('utf8'));
    } catch {
      parsed = undefined;
    }
    throw PledgerError.fromBody(parsed, answer.status);
  }

  /** One request and its whole answer, within the client's timeout. */
  private async exchange(url: URL, options: RequestOptions, body: Buffer | undefined): Promise<RawAnswer> {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`${url.protocol} is not http: or https:`);
    const { request } = await transport(url.protocol);
    return new Promise<RawAnswer>((resolve, reject) => {
      const sent = request(url, { ...options, timeout: this.timeoutMs }, (response: IncomingMessage) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: new AnswerHeaders(response.headers), body: Buffer.concat(chunks) }));
        response.on('error', reject);
        response.on('close', () => {
          if (!response.complete) reject(new Error('the connection closed before the answer ended'));
        });
      });
      // The socket's inactivity, while connecting, sending or receiving.
      sent.on('timeout', () => sent.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      sent.on('error', reject);
      sent.end(body);
    });
  }
}
