/**
 * The 2012 split as two real worker processes vs the same two-tower net in
 * one process, same weights, batch and seed.
 *
 * Tolerances: each tower runs the same kernels on the same numbers in either
 * arrangement; what differs is where a cross link's two gradient
 * contributions are added (the tape in one process, the receiving worker in
 * the split), and float addition of two terms is order-free. We allow 1e-4
 * relative on gradients (as the issue asks) and 1e-5 on weights after
 * several steps; the measured errors are printed.
 *
 * bf16 on the wire (4 steps, momentum, weight decay, dropout, augmentation)
 * against the float32 one-process run. bf16 keeps 8 significant bits: each
 * rounding is off by ≤ 2^-9 relative. The split rounds what crosses in
 * forward (pooled conv2, pool5, fc6, fc7 outputs and the logits), and that
 * moves everything downstream, the gradients included (unlike data-parallel,
 * which rounds only gradient sums and updates), and backward rounds the
 * gradient slices it sends. So: the loss within 2^-9 relative (measured
 * ~6e-4), the weights within 2^-7 (four roundings' worth) of each layer's
 * largest weight (measured ~2e-3, at fc8, whose 4 updates are a large part of
 * its small Xavier weights). That both towers see the same logits is
 * checked by the coordinator: it stops a run whose towers' losses differ by
 * more than 1e-5 relative, which unrounded own halves do (by 3.6e-5 at step 0).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { ClusterError } from '../src/run/coordinator.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train, type TrainOptions } from '../src/run/loop.js';
import { layerRelError, relError } from './helpers/backends.js';
import { predictBytesByRank } from '../src/compare/predict-bytes.js';
import { specOf } from '../src/model/alexnet.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const BASE: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', arch: 'original', channels: 3, width: 1 / 8, resolution: 67, batch: 8,
  epochs: 1, trainSamples: 24, testSamples: 16, checkpointEvery: 0,
};
const quiet = { log: () => {}, progress: false } as const;
/** bf16 wire vs float32 (see the header): the loss within 2^-9 relative, the weights within 2^-7 of each layer's largest */
const BF16_LOSS_TOLERANCE = 2 ** -9;
const BF16_WEIGHT_TOLERANCE = 2 ** -7;
const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

async function split(config: TrainConfig, extra: Partial<TrainOptions> = {}) {
  const cluster = await localCluster(2);
  return train({ cluster, workers: cluster.workers, config, outDir: tempDir(), mode: 'model', ...quiet, ...extra, onEvent: spawned.watch(extra.onEvent) });
}

function worst(a: Map<string, Float32Array>, b: Map<string, Float32Array>, minus?: Map<string, Float32Array>): number {
  let w = 0;
  for (const [name, ref] of b) {
    const got = a.get(name)!;
    if (minus) {
      const m = minus.get(name)!;
      w = Math.max(w, relError(got.map((v, i) => m[i]! - v), ref.map((v, i) => m[i]! - v)));
    } else {
      w = Math.max(w, relError(got, ref));
    }
  }
  return w;
}

describe('model-parallel (the 2012 split)', () => {
  it('2 towers are bit for bit the split before the net could be divided N ways: the recorded losses and weights', async () => {
    const golden = JSON.parse(readFileSync(new URL('./golden/split-original-tiny.json', import.meta.url), 'utf8')) as { losses: number[]; sha256: string };
    const s = await split({ ...BASE, init: 'xavier-uniform', augment: true, trainSamples: 24 });
    expect(s.losses).toEqual(golden.losses);
    const h = createHash('sha256');
    for (const name of [...s.params.keys()].sort()) {
      const d = s.params.get(name)!;
      h.update(name).update(Buffer.from(d.buffer, d.byteOffset, d.byteLength));
    }
    expect(h.digest('hex')).toBe(golden.sha256);
  });

  it('one step: the loss and every parameter gradient match the one-process two-tower net (< 1e-4)', async () => {
    // Plain SGD with lr 1: the update w0 - w1 is the gradient itself.
    const cfg: TrainConfig = { ...BASE, trainSamples: 8, lr: 1, momentum: 0, weightDecay: 0 };
    const single = await train({ config: cfg, outDir: tempDir(), ...quiet });
    const s = await split(cfg);
    expect(s.losses[0]).toBeCloseTo(single.losses[0]!, 5);
    // initial weights: a zero-step run
    const w0 = await train({ config: { ...cfg, lr: 1e-30 }, outDir: tempDir(), ...quiet });
    const err = worst(s.params, single.params, w0.params);
    console.log(`split vs one process, gradient (via the lr-1 update): worst relative error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(1e-4);
    expect(s.epochs[0]!.loss).toBeCloseTo(single.epochs[0]!.loss, 5); // test loss: a function of all logits
  });

  for (const micro of [1, 2]) {
    it(`weights after 3 steps with momentum, weight decay, dropout and augmentation (${micro} micro-batch${micro > 1 ? 'es' : ''}) match (< 1e-5)`, async () => {
      const cfg: TrainConfig = { ...BASE, augment: true, lr: 0.02, momentum: 0.9, weightDecay: 5e-4 };
      const single = await train({ config: cfg, outDir: tempDir(), ...quiet });
      const s = await split(cfg, { microBatches: micro });
      s.losses.forEach((l, i) => expect(l).toBeCloseTo(single.losses[i]!, 5));
      const err = worst(s.params, single.params);
      console.log(`split (${micro} micro-batches) vs one process, weights after 3 steps: worst relative error ${err.toExponential(2)}`);
      expect(err).toBeLessThan(1e-5);
      expect(s.epochs[0]!.accuracy).toBe(single.epochs[0]!.accuracy);
    });
  }

  it('bf16 on the wire, 4 steps with momentum, weight decay, dropout and augmentation: loss within 2^-9, weights within 2^-7 of the float32 one-process run, half the bytes', async () => {
    const cfg: TrainConfig = { ...BASE, trainSamples: 32, augment: true, lr: 0.02, momentum: 0.9, weightDecay: 5e-4 };
    const single = await train({ config: cfg, outDir: tempDir(), ...quiet });
    // Both towers must compute the same loss: combineTowers stops the run if they differ.
    const s = await split({ ...cfg, wire: 'bf16' });
    expect(s.finished).toBe(true);
    expect(s.losses).toHaveLength(4);
    const lossErr = Math.max(...s.losses.map((l, i) => Math.abs(l - single.losses[i]!) / single.losses[i]!));
    const { worst, layer } = layerRelError(s.params, single.params);
    console.log(`split, bf16 wire, vs one process: worst relative loss error ${lossErr.toExponential(2)}, weight error after 4 steps ${worst.toExponential(2)} (${layer})`);
    expect(lossErr).toBeLessThan(BF16_LOSS_TOLERANCE);
    expect(worst, layer).toBeLessThan(BF16_WEIGHT_TOLERANCE);
    // Each step each tower sent exactly its predicted bf16 bytes, half of fp32's (by link: compare-predict.test.ts).
    // One replica has no ring: the bucket size plays no part.
    const predict = (wire: 'fp32' | 'bf16') => predictBytesByRank('model', specOf(cfg), 2, cfg.batch, 25 * 2 ** 20, wire).map((p) => p.bytesSentPerStep);
    const predicted = predict('bf16');
    expect(predicted).toEqual(predict('fp32').map((b) => b / 2));
    for (const [step, st] of s.stats.entries()) expect(st.bytesSent, `step ${step}`).toEqual(predicted);
  });

  it('the merged checkpoint of a split run resumes in one process to the weights of a run that never stopped', async () => {
    const cfg: TrainConfig = { ...BASE, lr: 0.02, momentum: 0.9 };
    const straight = await train({ config: cfg, outDir: tempDir(), ...quiet });
    const dir = tempDir();
    const cluster = await localCluster(2);
    const first = await train({ cluster, workers: cluster.workers, config: cfg, outDir: dir, mode: 'model', maxSteps: 2, onEvent: spawned.watch(), ...quiet });
    expect(first.finished).toBe(false);
    expect(first.position.globalStep).toBe(2);
    const resumed = await train({ config: cfg, outDir: dir, resume: true, ...quiet });
    expect(worst(resumed.params, straight.params)).toBeLessThan(1e-5);
    // The epoch's train loss counts the split's 2 steps before the stop (as close as the split's losses are to one process's).
    expect(resumed.epochs).toHaveLength(1);
    expect(resumed.epochs[0]!.trainLoss).toBeCloseTo(straight.epochs[0]!.trainLoss, 5);
  });

  it('a worker that dies mid-exchange: the other does not hang, everything stops with the reason', async () => {
    let pids: number[] = [];
    const cfg: TrainConfig = { ...BASE, trainSamples: 400 };
    const started = Date.now();
    const err = await split(cfg, {
      log: (l) => process.stderr.write(`[dies] ${l}\n`),
      onEvent: (e) => {
        if (e.type === 'started') pids = e.pids;
        if (e.type === 'step' && e.globalStep === 2) setTimeout(() => process.kill(pids[1]!, 'SIGKILL'), 30);
      },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClusterError);
    expect((err as Error).message).toMatch(/worker 1 \(127\.0\.0\.1, cpu, pid \d+\) exited on SIGKILL|worker 0 .* failed: worker 1 disconnected/);
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(pids).toHaveLength(2);
    for (const pid of pids) expect(alive(pid)).toBe(false);
  }, 40_000);

  it('keeps exchanging past 512 messages (sends made from the blocked training thread once stalled there)', async () => {
    const r = await split({ ...BASE, width: 1 / 16, batch: 4, trainSamples: 4 * 64, testSamples: 8 });
    expect(r.finished).toBe(true);
    expect(r.losses).toHaveLength(64); // 64 steps × 9 exchanges = 576 messages each way
  }, 60_000);

  it('refuses the d2l net, or a cluster of three for a net of two towers, before any worker starts', async () => {
    await expect(split({ ...BASE, arch: 'd2l', channels: 1 })).rejects.toThrow("--mode model splits the towered 'original' net: add --arch original (this run is 'd2l')");
    const three = await localCluster(3);
    await expect(train({ cluster: three, workers: three.workers, config: BASE, outDir: tempDir(), mode: 'model', onEvent: spawned.watch(), ...quiet }))
      .rejects.toThrow('--mode model runs 1 replica × 2 towers = 2 workers; the cluster has 3 (set --towers and --replicas so that replicas × towers = workers)');
    expect(spawned.pids, 'workers started for a refused run').toEqual([]);
  });
});
