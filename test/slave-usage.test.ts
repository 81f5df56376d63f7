/**
 * The CPU the usage meter bills between two samples of a partition's process trees,
 * from process tables written by hand: what the processes used themselves, and what
 * the children they reaped used, each tick once.
 */
import { describe, expect, it } from 'vitest';
import type { ProcessInfo } from '../slave/processes.js';
import { MAX_BYTE_SECONDS_PER_HOUR as NODE_BOUND } from '../slave/usage.js';
import { cpuSample, cpuTicksSince } from '../slave/usage.js';
import { MAX_BYTE_SECONDS_PER_HOUR as MASTER_BOUND } from '../protocol/api.js';

const proc = (pid: number, ppid: number, cpuTicks: number, reapedCpuTicks = 0): ProcessInfo => ({
  pid,
  ppid,
  pgid: 100,
  state: 'S',
  startTime: pid * 7,
  cpuTicks,
  rssPages: 1,
  reapedCpuTicks,
});
const billed = (before: ProcessInfo[], after: ProcessInfo[]) => cpuTicksSince({ instance: 'i', at: 0, ...cpuSample(before) }, cpuSample(after));

describe('CPU between two samples', () => {
  it('counts the children a service started and reaped between the samples, which no sample saw', () => {
    expect(billed([proc(100, 1, 10)], [proc(100, 1, 12, 300)])).toBe(302);
  });

  it('counts a child seen running and reaped since only for what it used after the first sample', () => {
    const before = [proc(100, 1, 10), proc(101, 100, 50)];
    // The child ended at 80 ticks: the service inherited them when it reaped it.
    expect(billed(before, [proc(100, 1, 10, 80)])).toBe(30);
    // A grandchild seen running, reaped by the child, itself reaped by the service.
    const deeper = [proc(100, 1, 10), proc(101, 100, 50), proc(102, 101, 20)];
    expect(billed(deeper, [proc(100, 1, 10, 100)])).toBe(30);
    // The child still runs; the grandchild ended, and the child reaped it.
    expect(billed(deeper, [proc(100, 1, 10), proc(101, 100, 55, 25)])).toBe(10);
  });

  it('counts a process that is new since the previous sample in full, and a reused pid as a new process', () => {
    expect(billed([proc(100, 1, 10)], [proc(100, 1, 10), proc(101, 100, 40, 5)])).toBe(45);
    expect(billed([proc(100, 1, 10)], [{ ...proc(100, 1, 3), startTime: 1 }])).toBe(3);
  });

  it('does not bill the past children of a process first seen by an older sample that did not record them', () => {
    const older = { instance: 'i', at: 0, cpu: { '100:700': 10 } };
    expect(cpuTicksSince(older, cpuSample([proc(100, 1, 15, 5000)]))).toBe(5);
  });
});

describe('memory and disk of an hour', () => {
  it('are reported at most at the bound the master accepts, so that a large partition is billed at the bound rather than refused', () => {
    expect(NODE_BOUND).toBe(MASTER_BOUND);
  });
});
