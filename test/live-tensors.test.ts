/**
 * No mode leaks backend tensors: the live tensor count after each step is
 * the same from the second step on (the first creates the momentum buffers),
 * in one process and on every worker of every layout: data, the split
 * (with micro-batches), hybrid, and 2 replicas × 2 towers.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train, type TrainResult } from '../src/run/loop.js';
import { setupBackends } from './helpers/backends.js';
import { localCluster } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const CONFIG: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
  trainSamples: 32, testSamples: 8, evalBatch: 8, checkpointEvery: 2,
};
const quiet = { log: () => {}, progress: false } as const;

/** tensors[worker] over steps 2..n */
function countsAfterFirst(r: TrainResult): number[][] {
  return r.stats[0]!.tensors.map((_, w) => r.stats.slice(1).map((s) => s.tensors[w]!));
}

describe('the live tensor count stays flat over a run', () => {
  beforeAll(setupBackends);

  it('single mode, 4 steps with a checkpoint every 2', async () => {
    const r = await train({ config: CONFIG, outDir: tempDir(), ...quiet });
    for (const counts of countsAfterFirst(r)) expect(new Set(counts).size, `counts ${counts}`).toBe(1);
  });

  it('data-parallel, 2 workers, 4 steps', async () => {
    const r = await train({ config: CONFIG, outDir: tempDir(), mode: 'data', cluster: await localCluster(2), ...quiet });
    expect(r.stats[0]!.tensors).toHaveLength(2);
    for (const counts of countsAfterFirst(r)) expect(new Set(counts).size, `counts ${counts}`).toBe(1);
  });

  it('model-parallel, 2 workers, 2 pipelined micro-batches, 4 steps', async () => {
    const r = await train({
      config: { ...CONFIG, arch: 'original', channels: 3, init: 'xavier-uniform' }, outDir: tempDir(), mode: 'model', microBatches: 2,
      cluster: await localCluster(2), ...quiet,
    });
    expect(r.stats[0]!.tensors).toHaveLength(2);
    for (const counts of countsAfterFirst(r)) expect(new Set(counts).size, `counts ${counts}`).toBe(1);
  });

  it('hybrid, 2 workers, 4 steps', async () => {
    const r = await train({ config: CONFIG, outDir: tempDir(), mode: 'hybrid', cluster: await localCluster(2), ...quiet });
    expect(r.stats[0]!.tensors).toHaveLength(2);
    for (const counts of countsAfterFirst(r)) expect(new Set(counts).size, `counts ${counts}`).toBe(1);
  });

  it('2 replicas × 2 towers, 4 workers, 4 steps', async () => {
    const r = await train({
      config: { ...CONFIG, arch: 'original', channels: 3, init: 'xavier-uniform' }, outDir: tempDir(), mode: 'model', replicas: 2,
      cluster: await localCluster(4), ...quiet,
    });
    expect(r.stats[0]!.tensors).toHaveLength(4);
    for (const counts of countsAfterFirst(r)) expect(new Set(counts).size, `counts ${counts}`).toBe(1);
  });
});
