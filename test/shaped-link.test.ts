/**
 * Shaped links (--link): each local worker in a network namespace of its
 * own behind a veth rate-limited with tc, the coordinator on a bridge. The
 * link is really shaped, a run trains over it, and the namespaces, veths,
 * bridge and processes are gone after every exit: a finished run, Ctrl-C,
 * a worker that dies. What cannot work is refused before anything starts.
 * Needs root and iproute2; without them the test says so loudly and skips.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { CompareResult } from '../src/compare/types.js';
import { parseLinkRate, ShapedNetwork, whyNoShaping } from '../src/run/shaped-network.js';
import { freePorts } from '../src/wire/free-ports.js';
import { parseClusterConfig } from '../src/config/cluster.js';
import { splitnet } from './helpers/cli.js';
import { tempDir } from './helpers/idx-files.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const skip = whyNoShaping();
if (skip !== undefined) console.warn(`\n*** SKIPPED: shaped links cannot be made here: ${skip} ***\n`);

/** A tiny data-parallel run: 2 steps of batch 8 at 67 px. */
const TINY = ['--arch', 'original', '--width', '0.0625', '--batch', '8', '--test-samples', '8', '--no-progress'];

/** Everything a launcher with this pid made: namespaces `splitnet-<pid>-…`, the bridge `snb<pid>`, veths `sn<pid>…`. */
function leftBy(pid: number): string[] {
  const ns = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.startsWith(`splitnet-${pid}-`));
  const links = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout.split('\n')
    .map((l) => /^\d+:\s+([^:@]+)/.exec(l)?.[1]).filter((n): n is string => n === `snb${pid}` || (n?.startsWith(`sn${pid}`) ?? false));
  return [...ns, ...links];
}

async function clusterFile(dir: string, workers: number): Promise<string> {
  const [coord, ...ports] = await freePorts(workers + 1);
  const path = join(dir, 'cluster.json');
  writeFileSync(path, JSON.stringify({
    coordinator: { host: '127.0.0.1', port: coord }, transport: 'tcp',
    workers: ports.map((port) => ({ host: '127.0.0.1', device: 'cpu', port })),
    timeouts: { registerMs: 30_000, stepMs: 60_000, shutdownGraceMs: 2_000 }, heartbeat: { intervalMs: 500, timeoutMs: 5_000 },
  }));
  return path;
}

const children: ChildProcess[] = [];
const networks: ShapedNetwork[] = [];
afterEach(() => {
  for (const n of networks.splice(0)) n.close();
  for (const c of children.splice(0)) {
    if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null) continue;
    try { process.kill(-c.pid, 'SIGKILL'); } catch { c.kill('SIGKILL'); }
    // and what it left: its namespaces' processes die with the next launcher's stale sweep, or here
    for (const ns of spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.startsWith(`splitnet-${c.pid}-`))) {
      const name = ns.split(' ')[0]!;
      for (const p of spawnSync('ip', ['netns', 'pids', name], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean)) {
        try { process.kill(Number(p), 'SIGKILL'); } catch { /* gone */ }
      }
      spawnSync('ip', ['netns', 'del', name]);
    }
    spawnSync('ip', ['link', 'del', `snb${c.pid}`]);
  }
});

/** Starts `splitnet ...args` in a process group of its own; resolves its exit code and output. */
function start(args: string[]): { child: ChildProcess; done: Promise<{ code: number | null; out: string }>; output: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: root, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (c: string) => { out += c; });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => { out += c; });
  const done = new Promise<{ code: number | null; out: string }>((resolve) => child.once('exit', (code) => {
    // the pipes may still hold the last lines
    setTimeout(() => resolve({ code, out }), 200);
  }));
  return { child, done, output: () => out };
}

async function waitFor(what: RegExp, output: () => string, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!what.test(output())) {
    if (Date.now() > until) throw new Error(`waited ${ms} ms for ${what}; got:\n${output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A data-parallel launch over 500mbit links with far more steps than a test waits for, once both workers are up. */
async function startLongShapedRun(): Promise<ReturnType<typeof start>> {
  const dir = tempDir();
  const cfg = await clusterFile(dir, 2);
  const run = start(['launch', '--mode', 'data', '--link', '500mbit', '--config', cfg, ...TINY, '--synthetic', '--train-samples', '80000', '--out', join(dir, 'run')]);
  await waitFor(/data-parallel over 2 workers/, run.output, 60_000);
  return run;
}

describe('--link: refused up front', () => {
  it('a rate that is not one, a one-process run, and a remote worker each exit 2 with one line, nothing made', async () => {
    const dir = tempDir();
    const bad = splitnet(['launch', '--mode', 'data', '--link', '5', ...TINY, '--synthetic', '--out', join(dir, 'a')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim()).toBe("splitnet: --link: expected a rate like 1gbit, 200mbit or 10gbit, got '5'");
    const single = splitnet(['launch', '--mode', 'single', '--link', '1gbit', ...TINY, '--synthetic', '--out', join(dir, 'b')]);
    expect(single.code).toBe(2);
    expect(single.stderr.trim()).toBe('splitnet: --link 1gbit: a one-process run has no link to shape');
    const cfg = await clusterFile(dir, 2);
    const remote = JSON.parse(readFileSync(cfg, 'utf8')) as { workers: Array<{ host: string }> };
    remote.workers[1]!.host = '192.0.2.7';
    writeFileSync(cfg, JSON.stringify(remote));
    const r = splitnet(['compare', '--link', '1gbit', '--config', cfg, '--arch', 'original', '--width', '0.0625', '--batch', '8', '--steps', '2', '--out', join(dir, 'c')]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toMatch(/^splitnet: --link 1gbit: (shapes the links of workers on this host; 192\.0\.2\.7 in .* is remote|shaping links needs .*)$/);
  });

  it.skipIf(skip !== undefined)("without the 'ip' command: exit 2 naming it, before any worker starts", () => {
    const r = splitnet(['launch', '--mode', 'data', '--link', '1gbit', ...TINY, '--synthetic', '--out', join(tempDir(), 'run')], { PATH: '/nonexistent' });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toMatch(/^splitnet: --link 1gbit: shaping links needs the 'ip' command \(Debian: apt-get install iproute2\): ENOENT$/);
  });
});

describe.skipIf(skip !== undefined)('--link: a shaped network', () => {
  it('is really shaped: a 200mbit link moves 4 MiB messages at no more than its rate (plus tbf\'s burst)', async () => {
    const n = ShapedNetwork.create(1, parseLinkRate('200mbit'));
    networks.push(n);
    const probe = await n.probe(0, false);
    // 25 MB/s; tbf lets one bucket (64 KiB here) through at once, so a 4 MiB message may beat the rate by ~2%
    expect(probe.bandwidth).toBeLessThan(25e6 * 1.1);
    expect(probe.bandwidth).toBeGreaterThan(25e6 * 0.3);
    n.close();
    expect(leftBy(process.pid)).toEqual([]);
  }, 60_000);

  it('moves the workers to TCP with CURVE on their namespaces\' addresses: plain only for a config without CURVE and --insecure', async () => {
    const n = ShapedNetwork.create(2, parseLinkRate('1gbit'));
    networks.push(n);
    const [coord, a, b] = await freePorts(3);
    const base = parseClusterConfig({ coordinator: { host: '127.0.0.1', port: coord }, transport: 'ipc',
      workers: [{ host: '127.0.0.1', device: 'cpu', port: a }, { host: '127.0.0.1', device: 'cpu', port: b }] });
    expect(base.security).toBe('none'); // ipc's default: its private directory keeps others out
    const placed = n.place(base);
    expect(placed).toMatchObject({ transport: 'tcp', security: 'curve', coordinator: { host: n.coordinatorHost, port: coord } });
    expect(placed.workers.map((w) => w.host)).toEqual(n.hosts);
    expect(n.place(base, true).security).toBe('none');
    expect(n.place({ ...base, security: 'curve' }, true).security).toBe('curve');
  });

  it('a data-parallel launch trains over it with each worker in its namespace, and leaves nothing behind', async () => {
    const dir = tempDir();
    const cfg = await clusterFile(dir, 2);
    const run = start(['launch', '--mode', 'data', '--link', '500mbit', '--config', cfg, ...TINY, '--synthetic', '--train-samples', '16', '--out', join(dir, 'run')]);
    const { code, out } = await run.done;
    expect(code, out).toBe(0);
    expect(out).toMatch(/^splitnet: 2 workers in network namespaces, each behind a 500mbit link \(tc tbf\)$/m);
    expect(out).toMatch(/worker 0 \(10\.213\.\d+\.2, cpu, pid \d+\), worker 1 \(10\.213\.\d+\.3, cpu, pid \d+\)/);
    expect(out).toMatch(/steps this run +2 /);
    expect(leftBy(run.child.pid!)).toEqual([]);
  }, 120_000);

  it('Ctrl-C during a shaped run: exit 130 after the checkpoint, namespaces and processes gone', async () => {
    const run = await startLongShapedRun();
    const workers = [...run.output().matchAll(/pid (\d+)\)/g)].map((m) => Number(m[1]));
    expect(workers).toHaveLength(2);
    process.kill(run.child.pid!, 'SIGINT');
    const { code, out } = await run.done;
    expect(code, out).toBe(130);
    expect(leftBy(run.child.pid!)).toEqual([]);
    for (const pid of workers) expect(() => process.kill(pid, 0), `worker pid ${pid}`).toThrow();
  }, 120_000);

  it('a worker killed mid-run: exit 1 naming it, namespaces and processes gone', async () => {
    const run = await startLongShapedRun();
    const victim = Number(/worker 1 \([^)]*pid (\d+)\)/.exec(run.output())![1]);
    process.kill(victim, 'SIGKILL');
    const { code, out } = await run.done;
    expect(code, out).toBe(1);
    expect(out).toMatch(/^splitnet: error: .*worker 1/m);
    expect(leftBy(run.child.pid!)).toEqual([]);
  }, 120_000);

  it('compare --link loopback,200mbit runs the cluster modes over both links, the 4-worker grid of a 2-worker config too, and checks the forecast on each', async () => {
    const dir = tempDir();
    const cfg = await clusterFile(dir, 2);
    const out = join(dir, 'out');
    mkdirSync(out);
    const r = splitnet(['compare', '--link', 'loopback,200mbit', '--modes', 'single,data,grid', '--config', cfg, '--arch', 'original', '--width', '0.0625',
      '--batch', '8', '--steps', '2', '--test-samples', '8', '--no-progress', '--no-forecast-check', '--out', out], {}, 240_000);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(readFileSync(join(out, 'compare.json'), 'utf8')) as CompareResult;
    expect(result.modes.map((m) => `${m.mode}×${m.world}@${m.link}`)).toEqual(['single×1@loopback', 'data×2@loopback', 'grid×4@loopback', 'data×2@200mbit', 'grid×4@200mbit']);
    expect(r.stdout).toMatch(/^link 200mbit: up to 4 workers in network namespaces/m);
    // behind the shaped links as on loopback, each worker sends what its rank is predicted to
    for (const m of result.modes) for (const w of m.workers) expect(w.sentByLink, `${m.mode}@${m.link} worker ${w.rank}`).toEqual(w.predicted.sentByLink);
    expect(result.links.map((l) => l.name)).toEqual(['loopback', '200mbit']);
    expect(result.links[1]!.bandwidth).toBeLessThan(25e6 * 1.1);
    expect(result.forecastCheck.map((c) => `${c.mode}×${c.workers}@${c.link}`)).toEqual(['single×1@loopback', 'data×2@loopback', 'grid×4@loopback', 'data×2@200mbit', 'grid×4@200mbit']);
    // the same run over a slower link: the same losses, and its own trace
    expect(result.modes[3]!.losses).toEqual(result.modes[1]!.losses);
    expect(result.modes[4]!.losses).toEqual(result.modes[2]!.losses);
    expect(() => readFileSync(join(out, 'trace-data-200mbit.json'))).not.toThrow();
    expect(() => readFileSync(join(out, 'trace-grid-200mbit.json'))).not.toThrow();
    expect(r.stdout).toMatch(/^step-time model +loopback: predicted \/ measured ms \(error\) +200mbit: predicted \/ measured ms \(error\)$/m);
  }, 260_000);
});
