/**
 * Promises an instance makes about itself. The built-in kinds are checked inside the
 * agent, without a child process: a TCP port accepts connections, a URL answers with a
 * status and a text, a file exists and is fresh, a service has a running process. A
 * `command` promise runs a program the way monitoring systems run their plugins: exit
 * 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, first line of output as the message.
 *
 * After a deployment a service takes a moment to bind, so each promise is tried again
 * every 200 ms until it holds or its timeout ends; a periodic check is tried once.
 */
import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import type { PromiseStatus } from '../protocol/api.js';
import type { PromiseDefinition } from '../protocol/software-release.js';
import { cleanEnv } from './processes.js';

export interface PromiseResult {
  name: string;
  /** OK or WARNING: the promise holds. */
  ok: boolean;
  status: PromiseStatus;
  message: string;
}

/** Where a promise is checked: the partition (relative file paths, a command's directory) and its services. */
export interface PromiseContext {
  partitionDir?: string;
  /** True when the named service has a running process; absent: process promises are UNKNOWN. */
  serviceRunning?: (name: string) => boolean;
}

const RETRY_MS = 200;
export const DEFAULT_PROMISE_TIMEOUT_S = 10;
export const DEFAULT_PROMISE_INTERVAL_S = 60;
/** A command promise's output beyond this is not kept: the message is its first line. */
const MAX_OUTPUT_BYTES = 64 * 1024;
const MAX_MESSAGE_CHARS = 2000;
const MAX_BODY_BYTES = 1024 * 1024;

/** Raised by a check that did not hold, with the status it deserves. */
class Broken extends Error {
  constructor(
    message: string,
    readonly status: PromiseStatus = 'critical',
  ) {
    super(message);
  }
}

/**
 * Checks promises in parallel (at most PROMISE_CONCURRENCY at a time: a thousand
 * connections at once would overflow a server's listen backlog and turn into one-second
 * SYN retries), each until it holds or times out; the results keep the order of the definitions.
 */
export async function checkPromises(promises: Record<string, PromiseDefinition>, context: PromiseContext = {}): Promise<PromiseResult[]> {
  return limited(
    Object.entries(promises).map(([name, promise]) => () => checkPromise(name, promise, context)),
    PROMISE_CONCURRENCY,
  );
}

export const PROMISE_CONCURRENCY = 64;

/** Runs `tasks` with at most `limit` of them at a time; the results keep the tasks' order. */
export async function limited<T>(tasks: (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: T[] = new Array<T>(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await tasks[i]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}

export async function checkPromise(name: string, promise: PromiseDefinition, context: PromiseContext = {}): Promise<PromiseResult> {
  const deadline = Date.now() + (promise.timeout ?? DEFAULT_PROMISE_TIMEOUT_S) * 1000;
  for (;;) {
    const result = await checkPromiseOnce(name, promise, context, Math.max(deadline - Date.now(), RETRY_MS));
    if (result.ok || Date.now() + RETRY_MS >= deadline) return result;
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
}

/** One try within `timeoutMs` (the promise's own timeout by default). */
export async function checkPromiseOnce(name: string, promise: PromiseDefinition, context: PromiseContext = {}, timeoutMs?: number): Promise<PromiseResult> {
  const limit = timeoutMs ?? (promise.timeout ?? DEFAULT_PROMISE_TIMEOUT_S) * 1000;
  try {
    const { status, message } = await attempt(promise, context, limit);
    const holds = status === 'ok' || status === 'warning';
    return { name, ok: holds, status, message: holds ? clip(message) : clip(`promise ${name}: ${message}`) };
  } catch (error) {
    const status = error instanceof Broken ? error.status : 'unknown';
    return { name, ok: false, status, message: clip(`promise ${name}: ${(error as Error).message}`) };
  }
}

const clip = (message: string) => (message.length > MAX_MESSAGE_CHARS ? `${message.slice(0, MAX_MESSAGE_CHARS)}...` : message);

async function attempt(promise: PromiseDefinition, context: PromiseContext, timeoutMs: number): Promise<{ status: PromiseStatus; message: string }> {
  if ('tcp' in promise) return { status: 'ok', message: await checkTcp(promise.tcp, timeoutMs) };
  if ('http' in promise) return { status: 'ok', message: await checkHttp(promise, timeoutMs) };
  if ('file' in promise) return { status: 'ok', message: await checkFile(promise.file, promise['max-age'], context) };
  if ('process' in promise) return { status: 'ok', message: checkProcess(promise.process, context) };
  return runCommand(promise.command, context, timeoutMs);
}

/** `host:port`, or `[v6 address]:port`. */
export function parseHostPort(address: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  const port = Number(match?.[3]);
  if (!match || port < 1 || port > 65535) throw new Broken(`"${address}" is not host:port`, 'unknown');
  return { host: match[1] ?? match[2] ?? '', port };
}

function checkTcp(address: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let target: { host: string; port: number };
    try {
      target = parseHostPort(address);
    } catch (error) {
      reject(error as Error);
      return;
    }
    const socket = net.connect({ ...target, timeout: timeoutMs });
    socket.once('connect', () => {
      socket.destroy();
      resolve(`${address} accepts connections`);
    });
    socket.once('timeout', () => {
      socket.destroy();
      reject(new Broken(`no answer from ${address}`));
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      socket.destroy();
      reject(new Broken(`cannot connect to ${address}: ${error.code ?? error.message}`));
    });
  });
}

/**
 * One GET with node's own http client (lighter than fetch: a node checks a thousand of
 * these per cycle), no redirect followed, the body read up to 1 MiB.
 */
function checkHttp(promise: Extract<PromiseDefinition, { http: string }>, timeoutMs: number): Promise<string> {
  const expected = promise.status ?? 200;
  return new Promise((resolve, reject) => {
    let url: URL;
    try {
      url = new URL(promise.http);
    } catch {
      reject(new Broken(`${promise.http} is not a URL`, 'unknown'));
      return;
    }
    const client = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : undefined;
    if (!client) {
      reject(new Broken(`${promise.http} is not an http(s) URL`, 'unknown'));
      return;
    }
    const request = client.get(url, { agent: false, timeout: timeoutMs, headers: { 'user-agent': 'pledger-node' } }, (response) => {
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        if (size < MAX_BODY_BYTES) chunks.push(chunk);
        size += chunk.length;
      });
      response.on('error', (error) => reject(new Broken(`cannot get ${promise.http}: ${error.message}`)));
      response.on('end', () => {
        const status = response.statusCode ?? 0;
        if (status !== expected) return reject(new Broken(`${promise.http} answered ${status}, expected ${expected}`));
        if (promise.contains !== undefined && !Buffer.concat(chunks).toString('utf8').includes(promise.contains)) {
          return reject(new Broken(`${promise.http} answered without ${JSON.stringify(promise.contains)}`));
        }
        resolve(`${promise.http} answered ${status}`);
      });
    });
    request.on('timeout', () => request.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    request.on('error', (error: NodeJS.ErrnoException) => reject(new Broken(`cannot get ${promise.http}: ${error.code ?? error.message}`)));
  });
}

async function checkFile(file: string, maxAgeSeconds: number | undefined, context: PromiseContext): Promise<string> {
  const full = path.resolve(context.partitionDir ?? process.cwd(), file);
  let modified: number;
  try {
    modified = (await stat(full)).mtimeMs;
  } catch (error) {
    throw new Broken(`${file} ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (error as Error).message}`);
  }
  const age = Math.max(0, Math.round((Date.now() - modified) / 1000));
  if (maxAgeSeconds !== undefined && age > maxAgeSeconds) throw new Broken(`${file} was modified ${age} s ago, more than ${maxAgeSeconds} s`);
  return `${file} exists, modified ${age} s ago`;
}

function checkProcess(service: string, context: PromiseContext): string {
  if (!context.serviceRunning) throw new Broken(`cannot tell whether service ${service} runs`, 'unknown');
  if (!context.serviceRunning(service)) throw new Broken(`service ${service} has no running process`);
  return `service ${service} is running`;
}

const EXIT_STATUS: Record<number, PromiseStatus> = { 0: 'ok', 1: 'warning', 2: 'critical', 3: 'unknown' };

/**
 * Runs a monitoring-plugins style program: argv without a shell, in the partition, with
 * the clean environment of services, in a process group of its own that is killed at
 * the timeout (a plugin stuck on a dead server must not pile up).
 */
function runCommand(argv: string[], context: PromiseContext, timeoutMs: number): Promise<{ status: PromiseStatus; message: string }> {
  const [command, ...args] = argv;
  const dir = context.partitionDir ?? process.cwd();
  return new Promise((resolve, reject) => {
    const child = spawn(command!, args, { cwd: dir, env: cleanEnv(dir), detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const keep = (current: string, chunk: Buffer) => (current.length < MAX_OUTPUT_BYTES ? current + chunk.toString('utf8') : current);
    child.stdout.on('data', (chunk: Buffer) => (stdout = keep(stdout, chunk)));
    child.stderr.on('data', (chunk: Buffer) => (stderr = keep(stderr, chunk)));
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // ended meanwhile
      }
    }, timeoutMs);
    child.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Broken(`cannot run ${command}: ${error.code ?? error.message}`, 'unknown'));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const firstLine = (stdout.trim() || stderr.trim()).split('\n')[0]?.trim() ?? '';
      if (timedOut) return reject(new Broken(`${command} timed out after ${Math.round(timeoutMs / 100) / 10} s`, 'unknown'));
      if (code === null) return reject(new Broken(`${command} was killed by ${signal}`, 'unknown'));
      const status = EXIT_STATUS[code] ?? 'unknown';
      const message = firstLine || `${command} exited with ${code}`;
      if (status === 'ok' || status === 'warning') resolve({ status, message });
      else reject(new Broken(code in EXIT_STATUS ? message : `${message} (exit code ${code})`, status));
    });
  });
}
