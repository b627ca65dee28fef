/**
 * Every layout against one process on the same seed and data: N-way towers
 * (N = 3, 4; N = 2 is model-parallel.test.ts), hybrid (N = 2, 3, 4, on both
 * nets), and the 2 × 2 grid of replicas × towers; all with momentum, weight
 * decay, dropout and augmentation, over 3 steps of real worker processes.
 *
 * Tolerance: 1e-5 relative on the weights after 3 steps (each layer's worst
 * parameter), the same as the 2012 split's. What differs from one process:
 *   - towers: where a cross link's N gradient contributions are added (the
 *     receiving worker adds them in tower order, as the one-process tape does);
 *   - hybrid and the grid: the conv (or tower) gradients are sums over the
 *     shards, added on the ring in another order than one process's batch
 *     sum, and hybrid's fc units see the whole batch's features gathered
 *     from the shards' convolutions. Float sums of reordered terms: ~1e-7
 *     relative per step.
 * The measured errors are printed.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { specOf } from '../src/model/alexnet.js';
import { planLayout, unclaimedBound } from '../src/parallel/layouts.js';
import { train, type Mode, type TrainOptions } from '../src/run/loop.js';
import { MAX_UNCLAIMED } from '../src/wire/communicator.js';
import { relError } from './helpers/backends.js';
import { localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const ORIGINAL: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', arch: 'original', init: 'xavier-uniform', channels: 3, width: 1 / 8, resolution: 67, batch: 12,
  epochs: 1, trainSamples: 36, testSamples: 24, checkpointEvery: 0, augment: true,
};
const D2L: TrainConfig = { ...ORIGINAL, arch: 'd2l', channels: 1, init: undefined };
const TOLERANCE = 1e-5;
const quiet = { log: () => {}, progress: false } as const;
const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

async function cluster(mode: Mode, workers: number, config: TrainConfig, extra: Partial<TrainOptions> = {}) {
  const c = await localCluster(workers);
  return train({ cluster: c, workers: c.workers, config, outDir: tempDir(), mode, ...quiet, ...extra, onEvent: spawned.watch(extra.onEvent) });
}

/** The worst of each parameter's relative error against one process's. */
function worst(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  let w = 0;
  for (const [name, ref] of b) w = Math.max(w, relError(a.get(name)!, ref));
  return w;
}

describe('every layout trains the one-process net', () => {
  for (const towers of [3, 4]) {
    it(`${towers} towers on ${towers} workers: 3 steps end with the one-process ${towers}-tower weights (< ${TOLERANCE})`, async () => {
      const cfg = { ...ORIGINAL, towers, batch: 8, trainSamples: 24 };
      const single = await train({ config: cfg, outDir: tempDir(), ...quiet });
      const split = await cluster('model', towers, cfg);
      const err = worst(split.params, single.params);
      console.log(`${towers} towers vs one process: worst relative weight error ${err.toExponential(2)}`);
      expect(err).toBeLessThan(TOLERANCE);
      expect(split.losses[2]).toBeCloseTo(single.losses[2]!, 5);
      expect(split.epochs[0]!.accuracy).toBe(single.epochs[0]!.accuracy);
    });
  }

  for (const [name, base] of [['d2l', D2L], ['original', ORIGINAL]] as const) {
    for (const n of name === 'd2l' ? [2, 3, 4] : [3]) {
      it(`hybrid on ${n} workers, ${name} net: 3 steps end with the one-process weights (< ${TOLERANCE})`, async () => {
        const single = await train({ config: base, outDir: tempDir(), ...quiet });
        const hybrid = await cluster('hybrid', n, base);
        const err = worst(hybrid.params, single.params);
        console.log(`hybrid ×${n} (${name}) vs one process: worst relative weight error ${err.toExponential(2)}`);
        expect(err).toBeLessThan(TOLERANCE);
        expect(hybrid.losses[2]).toBeCloseTo(single.losses[2]!, 5);
        expect(hybrid.epochs[0]!.accuracy).toBe(single.epochs[0]!.accuracy);
      });
    }
  }

  it(`2 replicas × 2 towers: 3 steps end with the one-process weights (< ${TOLERANCE})`, async () => {
    const cfg = { ...ORIGINAL, batch: 8, trainSamples: 24 };
    const single = await train({ config: cfg, outDir: tempDir(), ...quiet });
    const grid = await cluster('model', 4, cfg, { replicas: 2 });
    const err = worst(grid.params, single.params);
    console.log(`2 × 2 grid vs one process: worst relative weight error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(TOLERANCE);
    expect(grid.losses[2]).toBeCloseTo(single.losses[2]!, 5);
  });

  it('a 4-tower checkpoint resumes in one process and in hybrid to the weights of a run that never stopped', async () => {
    const cfg = { ...ORIGINAL, towers: 4, batch: 8, trainSamples: 24 };
    const whole = await train({ config: cfg, outDir: tempDir(), ...quiet });
    for (const resumeIn of ['single', 'hybrid'] as const) {
      const dir = tempDir();
      await cluster('model', 4, cfg, { outDir: dir, maxSteps: 1 });
      const resumed = resumeIn === 'single'
        ? await train({ config: cfg, outDir: dir, resume: true, ...quiet })
        : await cluster('hybrid', 2, cfg, { outDir: dir, resume: true });
      const err = worst(resumed.params, whole.params);
      console.log(`4 towers, 1 step, resumed in ${resumeIn}: worst relative weight error ${err.toExponential(2)}`);
      expect(err).toBeLessThan(TOLERANCE);
    }
  });

  it('a hybrid checkpoint (its fc units and momentum gathered into the net\'s names) resumes in the 2 × 2 grid to the weights of a run that never stopped', async () => {
    const cfg = { ...ORIGINAL, batch: 8, trainSamples: 24 };
    const whole = await train({ config: cfg, outDir: tempDir(), ...quiet });
    const dir = tempDir();
    await cluster('hybrid', 2, cfg, { outDir: dir, maxSteps: 1 });
    const resumed = await cluster('model', 4, cfg, { outDir: dir, resume: true, replicas: 2 });
    const err = worst(resumed.params, whole.params);
    console.log(`hybrid, 1 step, resumed in 2 × 2: worst relative weight error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(TOLERANCE);
  });

  it('refuses a grid whose replicas × towers is not the worker count, naming both', async () => {
    await expect(cluster('model', 4, { ...ORIGINAL, batch: 8 }, { replicas: 3 }))
      .rejects.toThrow('--mode model runs 3 replicas × 2 towers = 6 workers; the cluster has 4 (set --towers and --replicas so that replicas × towers = workers)');
    await expect(cluster('hybrid', 3, { ...ORIGINAL, batch: 8 }))
      .rejects.toThrow('global batch 8 does not split evenly over 3 workers');
  });

  it('bounds the unclaimed messages a worker may hold by what its layout has in flight: 256 micro-batches over 6 towers', () => {
    const cfg = { ...ORIGINAL, towers: 6, batch: 256 };
    const placement = planLayout('model', cfg, specOf(cfg), 6, { microBatches: 256 });
    // per micro-batch and other tower: conv3, fc6, fc7, fc8 both ways and the logits forward
    expect(unclaimedBound(placement, specOf(cfg), 256, MAX_UNCLAIMED)).toBe(256 * 9 * 5);
    expect(unclaimedBound(planLayout('model', ORIGINAL, specOf(ORIGINAL), 2, {}), specOf(ORIGINAL), 1, MAX_UNCLAIMED)).toBe(MAX_UNCLAIMED);
  });
});
