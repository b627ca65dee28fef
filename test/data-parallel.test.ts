/**
 * Data-parallel replicas as real worker processes over loopback sockets vs
 * the single-process loop on the same global batch, seed and data.
 *
 * Tolerance: 1e-5 relative to the largest weight of each parameter, after 4
 * SGD steps with momentum. The replicas compute each shard's gradient with
 * the same kernels as the single process but sum it in a different order
 * (per-shard GEMMs, then the ring's sum and ×1/N instead of one GEMM over the
 * whole batch): float32 rounding of ~1e-7 relative per step, which momentum
 * carries forward a few steps. A wrong shard, mask or average is off by
 * orders of magnitude more.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { relError } from './helpers/backends.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const CONFIG: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 12, epochs: 1,
  trainSamples: 48, testSamples: 24, augment: true, lr: 0.02, momentum: 0.9, weightDecay: 5e-4, checkpointEvery: 0,
};
const quiet = { log: () => {}, progress: false } as const;
const TOLERANCE = 1e-5;

const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

describe('data-parallel training', () => {
  let single: Awaited<ReturnType<typeof train>>;

  // the single-process reference every test compares with
  beforeAll(async () => {
    single = await train({ config: CONFIG, outDir: tempDir(), ...quiet });
    expect(single.finished).toBe(true);
    expect(single.losses).toHaveLength(4);
  });

  for (const world of [2, 3]) {
    it(`${world} replicas end with the weights of one process (relative error < ${TOLERANCE})`, async () => {
      const cluster = await localCluster(world, { bucketBytes: 64 * 1024, checksumEvery: 2 });
      const r = await train({ config: CONFIG, outDir: tempDir(), mode: 'data', cluster, workers: cluster.workers, onEvent: spawned.watch(), ...quiet });
      expect(r.finished).toBe(true);
      expect(r.mode).toBe('data');
      expect(r.world).toBe(world);
      expect(spawned.pids).toHaveLength(world);
      for (const pid of spawned.pids) expect(alive(pid), `worker pid ${pid}`).toBe(false);
      r.losses.forEach((l, i) => expect(l, `loss of step ${i}`).toBeCloseTo(single.losses[i]!, 5));
      let worst = 0;
      for (const [name, w] of single.params) {
        const err = relError(r.params.get(name)!, w);
        worst = Math.max(worst, err);
        expect.soft(err, name).toBeLessThan(TOLERANCE);
      }
      console.log(`${world} replicas: worst relative weight error after 4 steps ${worst.toExponential(2)}`);
      // test accuracy is computed on shards and summed: the same as one process
      expect(r.epochs[0]!.accuracy).toBeCloseTo(single.epochs[0]!.accuracy, 6);
      // every worker sent 2(N-1)/N of the gradient bytes each step
      const paramBytes = [...single.params.values()].reduce((n, p) => n + p.byteLength, 0);
      for (const s of r.stats) for (const b of s.bytesSent) expect(Math.abs(b - (2 * (world - 1) / world) * paramBytes)).toBeLessThan(64 * world);
    });
  }
});
