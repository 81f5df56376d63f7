/**
 * The README's first command, as a newcomer runs it: `pledger quickstart` brings up a
 * master and a node on this machine, deploys hello and prints what its URL answers;
 * running it again reuses everything; `--down` undoes it.
 */
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import { execa } from 'execa';
import { pledger, processesMentioning, PROJECT } from './helpers/processes.js';

interface QuickstartOutput {
  master: string;
  token: string;
  instance: InstanceView;
  answer: string;
}

describe('pledger quickstart', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pledger-quickstart-'));
  let port: number;
  const quickstart = (...args: string[]) => pledger(['quickstart', '--dir', dir, '--port', String(port), ...args], { timeoutMs: 120_000 });

  afterAll(async () => {
    await quickstart('--down');
    for (const p of processesMentioning(dir)) process.kill(p.pid, 'SIGKILL');
  });

  it('runs a master and a node, deploys hello and prints what it answers', async () => {
    port = await freePort();
    const result = await quickstart('--json');
    expect(result.exitCode).toBe(0);
    const output = result.json<QuickstartOutput>();
    expect(output.master).toBe(`http://127.0.0.1:${port}`);
    expect(output.instance).toMatchObject({ title: 'hello-world', status: 'started', ready: true });
    expect(output.answer).toBe('Hello from Pledger!\n');
    expect(await (await fetch(output.instance.connection.url!)).text()).toBe('Hello from Pledger!\n');
  });

  it('reuses everything when run again', async () => {
    const again = await quickstart('--greeting', 'Welcome back', '--json');
    expect(again.exitCode).toBe(0);
    const output = again.json<QuickstartOutput>();
    expect(output.instance).toMatchObject({ serial: 2, partition: 'part0' });
    expect(output.answer).toBe('Welcome back\n');
    const nodes = await pledger(['node', 'list', '--json'], { env: { PLEDGER_MASTER_URL: output.master, PLEDGER_TOKEN: output.token } });
    expect(nodes.json<{ name: string }[]>().map((n) => n.name)).toEqual(['local']);
  });

  it('undoes it all with --down', async () => {
    const down = await quickstart('--down');
    expect(down.exitCode).toBe(0);
    expect(await portOpen(port)).toBe(false);
    expect(processesMentioning(path.join(dir, 'node', 'software'))).toEqual([]);
  });

  it("fails at once with the cause when another program holds the instance's address and port, and works once it is free", async () => {
    const { ipBase, portBase } = JSON.parse(readFileSync(path.join(dir, 'node.json'), 'utf8')) as { ipBase: string; portBase: number };
    const squatter = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => squatter.listen(portBase, ipBase, resolve));
    try {
      const blocked = await quickstart();
      expect(blocked.exitCode).toBe(1);
      expect(blocked.stderr).toContain(`error: instance "hello-world" failed: cannot bind ${ipBase}:${portBase}: address already in use`);
      expect(blocked.stderr).not.toMatch(/is the node agent running/);
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
    const freed = await quickstart('--json');
    expect(freed.exitCode, freed.stderr).toBe(0);
    // The greeting of the earlier runs: a request without parameters keeps them.
    expect(freed.json<QuickstartOutput>().answer).toBe('Welcome back\n');
    expect((await quickstart('--down')).exitCode).toBe(0);
  });

  it('scripts/quickstart.sh --down uses the built checkout as it is: no install, no build', async () => {
    const built = statSync(path.join(PROJECT, 'dist', 'cli', 'main.js')).mtimeMs;
    const down = await execa('bash', [path.join(PROJECT, 'scripts', 'quickstart.sh'), '--down', '--dir', dir, '--port', String(port)], { reject: false, all: true });
    expect(down.exitCode, String(down.all)).toBe(0);
    expect(String(down.all)).not.toMatch(/installing|build/i);
    expect(statSync(path.join(PROJECT, 'dist', 'cli', 'main.js')).mtimeMs).toBe(built);
  });
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
