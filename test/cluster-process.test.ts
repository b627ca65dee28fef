/**
 * `splitnet launch` as a real process tree: killing the coordinator takes
 * the workers with it, and a data-parallel run resumes to the weights of one
 * that never stopped.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { ClusterConfig } from '../src/config/cluster.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

/** `splitnet launch` of a long data-parallel run as a child; resolves once both workers are ready, with their pids. */
async function launchTwoWorkers(cluster: ClusterConfig): Promise<{ coord: ChildProcessWithoutNullStreams; pids: number[] }> {
  const dir = tempDir();
  const cfgPath = join(dir, 'cluster.json');
  writeFileSync(cfgPath, JSON.stringify(cluster));
  const coord = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', '--backend', 'wasm', 'launch', '--config', cfgPath,
    '--synthetic', '--width', '0.125', '--resolution', '67', '--batch', '8', '--train-samples', '4000', '--out', join(dir, 'run'), '--no-progress'],
  { cwd: root });
  spawned.add(coord.pid!);
  let out = '';
  const pids = await new Promise<number[]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no worker pids in 60 s; output: ${out}`)), 60_000);
    coord.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const found = [...out.matchAll(/pid (\d+)\)/g)].map((m) => Number(m[1]));
      spawned.add(...found);
      if (found.length === 2 && /parameters per replica/.test(out)) { clearTimeout(timer); resolve(found); }
    });
  });
  return { coord, pids };
}

/** Alive and not a zombie: an exited worker whose parent cannot reap it (stopped, or not an init that reaps) is done. */
const running = (pid: number): boolean => {
  if (!alive(pid)) return false;
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

describe('the process tree', () => {
  it('when the coordinator is killed, every worker exits by itself', async () => {
    const { coord, pids } = await launchTwoWorkers(await localCluster(2));
    expect(pids.every(alive)).toBe(true);
    coord.kill('SIGKILL');
    await new Promise((r) => (coord.exitCode !== null || coord.signalCode !== null ? r(null) : coord.once('exit', r)));
    const deadline = Date.now() + 20_000;
    while (pids.some(running) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(pids.filter(running), 'workers still running 20 s after the coordinator died').toEqual([]);
  });
});

describe('a stopped coordinator', () => {
  it('when the coordinator is SIGSTOPped, every worker exits within the heartbeat timeout plus 3 s', async () => {
    const heartbeat = { intervalMs: 250, timeoutMs: 2_000 };
    const { coord, pids } = await launchTwoWorkers(await localCluster(2, { heartbeat }));
    await new Promise((r) => setTimeout(r, 1_000)); // into the steps
    coord.kill('SIGSTOP');
    const stoppedAt = Date.now();
    const deadline = stoppedAt + heartbeat.timeoutMs + 3_000;
    while (pids.some(running) && Date.now() < deadline + 5_000) await new Promise((r) => setTimeout(r, 100));
    const tookMs = Date.now() - stoppedAt;
    const left = pids.filter(running);
    coord.kill('SIGKILL');
    console.log(`coordinator SIGSTOPped: workers gone after ${tookMs} ms (heartbeat timeout ${heartbeat.timeoutMs} ms)`);
    expect(left, 'workers still running').toEqual([]);
    expect(tookMs).toBeLessThan(heartbeat.timeoutMs + 3_000);
  });
});

describe('data-parallel checkpoints', () => {
  const CONFIG: TrainConfig = {
    ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 2,
    trainSamples: 24, testSamples: 8, augment: true, checkpointEvery: 0,
  };
  const quiet = { log: () => {}, progress: false } as const;

  it('a run stopped after 2 steps and resumed ends with the weights of one that never stopped', async () => {
    const c1 = await localCluster(2);
    const straight = await train({ config: CONFIG, outDir: tempDir(), mode: 'data', cluster: c1, workers: c1.workers, onEvent: spawned.watch(), ...quiet });
    const dir = tempDir();
    const c2 = await localCluster(2);
    const first = await train({ config: CONFIG, outDir: dir, mode: 'data', cluster: c2, workers: c2.workers, maxSteps: 2, onEvent: spawned.watch(), ...quiet });
    expect(first.finished).toBe(false);
    expect(first.position).toEqual({ epoch: 0, step: 2, globalStep: 2 });
    const c3 = await localCluster(2);
    const resumed = await train({ config: { ...CONFIG, lr: 5 }, outDir: dir, mode: 'data', cluster: c3, workers: c3.workers, resume: true, onEvent: spawned.watch(), ...quiet });
    expect(resumed.finished).toBe(true);
    expect([...first.losses, ...resumed.losses]).toEqual(straight.losses);
    for (const [name, w] of straight.params) expect(resumed.params.get(name), name).toEqual(w);
    // The interrupted epoch's train loss counts the steps before the stop too.
    expect(resumed.epochs.map((e) => e.trainLoss)).toEqual(straight.epochs.map((e) => e.trainLoss));
  });
});
