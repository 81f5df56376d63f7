/**
 * Promises an instance makes about itself, checked inside the agent (no child
 * process): a TCP port accepts connections, a URL answers with a status and a text.
 * A service takes a moment to bind after it starts, so each promise is tried again
 * every 200 ms until it holds or its timeout ends.
 */
import net from 'node:net';
import type { PromiseDefinition } from '../protocol/software-release.js';

export interface PromiseResult {
  name: string;
  ok: boolean;
  message: string;
}

const RETRY_MS = 200;
const DEFAULT_TIMEOUT_S = 10;

/** Checks every promise at once; the results keep the order of the definitions. */
export async function checkPromises(promises: Record<string, PromiseDefinition>): Promise<PromiseResult[]> {
  return Promise.all(Object.entries(promises).map(([name, promise]) => checkPromise(name, promise)));
}

export async function checkPromise(name: string, promise: PromiseDefinition): Promise<PromiseResult> {
  const deadline = Date.now() + (promise.timeout ?? DEFAULT_TIMEOUT_S) * 1000;
  let failure = 'not checked';
  for (;;) {
    const remaining = deadline - Date.now();
    try {
      const success = await attempt(promise, Math.max(remaining, RETRY_MS));
      return { name, ok: true, message: success };
    } catch (error) {
      failure = (error as Error).message;
    }
    if (Date.now() + RETRY_MS >= deadline) return { name, ok: false, message: `promise ${name}: ${failure}` };
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
}

/** One try; resolves with a description of what held, rejects with what did not. */
function attempt(promise: PromiseDefinition, timeoutMs: number): Promise<string> {
  return 'tcp' in promise ? checkTcp(promise.tcp, timeoutMs) : checkHttp(promise, timeoutMs);
}

/** `host:port`, or `[v6 address]:port`. */
export function parseHostPort(address: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  const port = Number(match?.[3]);
  if (!match || port < 1 || port > 65535) throw new Error(`"${address}" is not host:port`);
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
      reject(new Error(`no answer from ${address}`));
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      socket.destroy();
      reject(new Error(`cannot connect to ${address}: ${error.code ?? error.message}`));
    });
  });
}

async function checkHttp(promise: Extract<PromiseDefinition, { http: string }>, timeoutMs: number): Promise<string> {
  const expected = promise.status ?? 200;
  let response: Response;
  try {
    response = await fetch(promise.http, { redirect: 'manual', signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    const cause = (error as Error & { cause?: Error }).cause;
    throw new Error(`cannot get ${promise.http}: ${cause?.message ?? (error as Error).message}`);
  }
  const body = await response.text();
  if (response.status !== expected) throw new Error(`${promise.http} answered ${response.status}, expected ${expected}`);
  if (promise.contains !== undefined && !body.includes(promise.contains)) {
    throw new Error(`${promise.http} answered without ${JSON.stringify(promise.contains)}`);
  }
  return `${promise.http} answered ${response.status}`;
}
