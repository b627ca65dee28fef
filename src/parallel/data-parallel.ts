/**
 * One data-parallel replica (the worker side of --mode data), with the
 * optimizer sharded as in ZeRO stage 1.
 *
 * Contract (PyTorch DDP's, plus ZeRO-1's), the same on every replica:
 *   1. forward + backward on this replica's shard of the global batch
 *      (samples rank·B/N … (rank+1)·B/N − 1 of the step, with the dropout
 *      masks and augmentation those samples get in one process);
 *   2. backward hands each gradient to its bucket the moment it exists
 *      (fc8 first, conv1 last; buckets of `bucketBytes`, planned from the
 *      parameter order, identical everywhere); a full bucket starts its ring
 *      reduce-scatter at once, while backward goes on;
 *   3. after its reduce-scatter a replica owns the summed gradient of one
 *      chunk of the bucket: it divides by N and takes the SGD step (weight
 *      decay, momentum) for that chunk only; it holds momentum for that
 *      chunk only (1/N of the optimizer state);
 *   4. an all-gather of the updated weight chunks leaves every replica with
 *      all new weights, which it loads into its model.
 * Wire volume per bucket of L floats: (N−1)/N·L of gradients plus (N−1)/N·L
 * of weights, the same 2(N−1)/N·L as a plain ring all-reduce.
 *
 * The weights also live on the host, flat per bucket: the all-gather's
 * target and the checksum's input (compared by the coordinator). State and
 * load are collectives too: `state` all-gathers the momentum shards, so every
 * replica can answer with the whole optimizer state; `load` keeps this
 * replica's shard.
 *
 * bf16 on the wire (cfg.wire). Invariant: every replica ends every step with
 * bit-identical weights (the checksums compare them). A value that travels
 * as bf16 is rounded, so whoever sends it must use the rounded value too.
 * Per bucket of L floats, chunk [lo, hi) owned by this replica:
 *   gradients  reduce-scatter in bf16, each hop adding into float32
 *              (ring-allreduce.ts); the owner's summed chunk [hi − lo] is
 *              float32 and used by the owner alone: no one need agree with it.
 *   update     the owner takes the SGD step on float32 (weights and momentum
 *              [hi − lo], never rounded) into a scratch copy, and writes the
 *              step Δ = w_new − w into its chunk of the gradient buffer [L]
 *              (free now: bf16 frames go out of the ring's own buffers).
 *   all-gather of Δ in bf16: the ring rounds the owner's chunk of Δ in place
 *              as it sends it, so after it every replica, the owner included,
 *              holds the same bf16 values of every chunk's Δ, and adds them
 *              into its float32 weights: w ← w + Δ̃, the same float32 sum of
 *              the same inputs everywhere.
 * Why the update, not the weights: weights sent as bf16 would make the
 * working weights bf16 values (relative error 2^-9 of |w| each step, a
 * step smaller than half a bf16 ulp of its weight lost), and forward on
 * rounded weights moves the gradients at initialization by up to 25%
 * (measured on the test net: fc6, where the batch's terms cancel). Rounding
 * Δ instead costs 2^-9 of |Δ| (≈ lr·|g|, orders below |w|), keeps the
 * weights float32 everywhere (so they are the master weights, and a
 * checkpoint is exact with no extra gather), and sends the same bytes.
 * With fp32 the owner steps its chunk of the weights in place and the
 * all-gather sends the weights themselves.
 */
import * as tf from '@tensorflow/tfjs';
import { performance } from 'node:perf_hooks';
import type { PlainTensor, TrainState } from '../checkpoint/checkpoint.js';
import type { TrainConfig } from '../config/train.js';
import { specOf } from '../model/alexnet.js';
import { TrainBatches, type RunData } from '../data/run-data.js';
import { copyInto, readFloats, readScalar } from '../kernels/read.js';
import { buildModel, disposeModel, type Model } from '../model/build.js';
import { lossAndGrads } from '../model/engine.js';
import { sgdUpdateRange, type SgdOptions } from '../model/sgd.js';
import { chunkRange, ownedChunk, planBuckets, type Bucket, type RingAllReduce } from '../wire/ring-allreduce.js';
import { addInto } from '../wire/bf16.js';
import type { Communicator } from '../wire/communicator.js';
import { evaluate } from './evaluate.js';
import { StepTimeline } from './step-timing.js';
import { checksumOf, type Combine, type EvalResult, type StepInput, type StepResult, type Strategy } from './strategy.js';

/** Lets socket events in between layers of backward (a macrotask turn of the event loop). */
const yieldToSockets = () => new Promise<void>((resolve) => setImmediate(resolve));

export class DataParallelReplica implements Strategy {
  readonly model: Model;
  readonly buckets: Bucket[];
  private readonly sgd: SgdOptions;
  private readonly batches: TrainBatches;
  private readonly where = new Map<string, { bucket: number; offset: number; size: number }>();
  /** this step's optimizer time and timeline (the chunk updates run inside the bucket reductions) */
  private optimizerMs = 0;
  private timeline = new StepTimeline();
  /** all weights, flat per bucket */
  private readonly weights: Float32Array[];
  /**
   * one gradient buffer per bucket. Its chunks go out zero-copy; reusing it
   * next step is safe because the coordinator starts a step only once every
   * replica has finished the last, so every frame of it has arrived.
   */
  private readonly gradBuffers: Float32Array[];
  /** momentum of this replica's chunk of each bucket (none for plain SGD) */
  private readonly momentum: Float32Array[] | undefined;
  /** [begin, end) of this replica's chunk of each bucket */
  private readonly owned: Array<[number, number]>;
  /** bf16 wire: the SGD step's result for one owned chunk, [max(hi − lo)], reused bucket after bucket (the step is synchronous) */
  private readonly stepped: Float32Array | undefined;
  /** collective sequence: the same count on every replica */
  private seq = 0;

  private readonly ring: RingAllReduce;

  private constructor(
    private readonly cfg: TrainConfig, private readonly data: RunData, private readonly link: Communicator,
    readonly rank: number, readonly world: number, bucketBytes: number,
  ) {
    this.ring = link.ring(Array.from({ length: world }, (_, r) => r));
    if (cfg.batch % world !== 0) throw new Error(`global batch ${cfg.batch} does not split evenly over ${world} replicas`);
    this.model = buildModel(specOf(cfg), { seed: cfg.seed });
    this.sgd = { lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay };
    this.batches = new TrainBatches(data, cfg);
    // Backward produces gradients in reverse parameter order: bucket them that way.
    this.buckets = planBuckets([...this.model.params].reverse().map(([name, v]) => ({ name, size: v.size })), bucketBytes);
    for (const b of this.buckets) for (const p of b.params) this.where.set(p.name, { bucket: b.index, offset: p.offset, size: p.size });
    this.weights = this.buckets.map((b) => new Float32Array(b.size));
    this.gradBuffers = this.buckets.map((b) => new Float32Array(b.size));
    this.owned = this.buckets.map((b) => chunkRange(b.size, world, ownedChunk(rank, world)));
    this.momentum = cfg.momentum === 0 ? undefined : this.owned.map(([lo, hi]) => new Float32Array(hi - lo));
    this.stepped = cfg.wire === 'bf16' ? new Float32Array(Math.max(0, ...this.owned.map(([lo, hi]) => hi - lo))) : undefined;
    this.ring.configure(this.buckets.map((b) => b.size));
  }

  /** A replica on its ring (which it closes with itself); reads its initial weights to the host. */
  static async open(cfg: TrainConfig, data: RunData, link: Communicator, rank: number, world: number, bucketBytes: number): Promise<DataParallelReplica> {
    const r = new DataParallelReplica(cfg, data, link, rank, world, bucketBytes);
    for (const [name, v] of r.model.params) {
      const at = r.where.get(name)!;
      r.weights[at.bucket]!.set(await readFloats(v), at.offset);
    }
    return r;
  }

  async step(s: StepInput): Promise<StepResult> {
    const timeline = new StepTimeline();
    const { t0 } = timeline;
    const shard = this.cfg.batch / this.world;
    const { x, y } = this.batches.batch(s.epoch, s.step, this.rank * shard, shard);
    timeline.span('compute', 'input batch', t0, performance.now());
    const grads = this.gradBuffers;
    const filled = this.buckets.map(() => 0);
    const copies: Array<Array<Promise<void>>> = this.buckets.map(() => []);
    const reductions: Array<Promise<void>> = [];
    const sentBefore = this.ring.bytesSent;
    this.ring.traffic.take(); // what arrived between steps (late pieces of the last all-gather) is not this step's
    // Waiting is the event loop's idle time: the chunk updates and sends that run
    // between ring rounds after backward are work, not waiting (as in model-parallel).
    const loopBefore = performance.eventLoopUtilization();
    this.optimizerMs = 0;
    this.timeline = timeline;
    const lr = s.lr;
    const overlap = s.overlap !== false;
    this.ring.begin(this.seq++, this.cfg.wire);
    const startBucket = (b: number) => {
      const r = this.reduceBucket(b, grads[b]!, copies[b]!, lr);
      r.catch(() => {}); // awaited below; a failure while backward still runs must not go unhandled meanwhile
      reductions[b] = r;
    };
    try {
      const { loss, grads: produced } = await lossAndGrads(this.model, x, y, {
        dropout: { seed: this.cfg.seed, step: s.globalStep, firstSample: this.rank * shard },
        onGradient: (name, g) => {
          const at = this.where.get(name)!;
          const pending = copyInto(g, grads[at.bucket]!, at.offset);
          if (pending) copies[at.bucket]!.push(pending);
          filled[at.bucket]! += at.size;
          if (overlap && filled[at.bucket] === this.buckets[at.bucket]!.size) startBucket(at.bucket);
        },
        afterLayer: yieldToSockets,
        layerSpans: timeline.layers(),
      });
      const backwardEnd = performance.now();
      const backendBytes = tf.memory().numBytes;
      let value: number;
      try {
        if (filled.some((f, b) => f !== this.buckets[b]!.size)) throw new Error(`data-parallel: backward left buckets unfilled (${filled.join(', ')} floats)`);
        if (!overlap) this.buckets.forEach((b) => startBucket(b.index));
        await Promise.all(reductions);
        value = await readScalar(loss);
      } finally {
        tf.dispose([loss, ...produced.values()]);
      }
      const reduced = performance.now();
      this.loadWeightsIntoModel();
      const loaded = performance.now();
      const waitMs = performance.eventLoopUtilization(loopBefore).idle;
      const traffic = this.ring.traffic.take();
      timeline.span('compute', 'forward + backward', t0, backwardEnd);
      // the ring after backward: its idle share is waitMs, the chunk updates and sends inside it are drawn too
      timeline.span('wait', 'all-reduce after backward', backwardEnd, reduced);
      timeline.span('optimizer', 'weights into the model', reduced, loaded);
      timeline.traffic({ sends: traffic.sends, waits: [] }); // the ring's waits are inside 'all-reduce after backward'
      return {
        loss: value, samples: shard, computeMs: performance.now() - t0 - waitMs, waitMs, bytesSent: this.ring.bytesSent - sentBefore,
        tensors: tf.memory().numTensors,
        ...(s.checksum ? { checksum: checksumOf(this.weights) } : {}),
        detail: timeline.detail({
          sendMs: traffic.sendMs, optimizerMs: this.optimizerMs + (loaded - reduced), bytesReceived: traffic.receivedBytes, sentByLink: traffic.sentBy, backendBytes,
        }),
      };
    } finally {
      tf.dispose([x, y]);
    }
  }

  /**
   * Reduce-scatter a bucket's gradients, step this replica's chunk, all-gather
   * the weights (fp32) or the steps, added into every replica's weights (bf16).
   */
  private async reduceBucket(b: number, grads: Float32Array, copies: Array<Promise<void>>, lr: number): Promise<void> {
    await Promise.all(copies);
    const [lo, hi] = await this.ring.reduceScatter(b, grads);
    const u0 = performance.now();
    const weights = this.weights[b]!;
    if (this.stepped) {
      // The step into scratch, then Δ = w_new − w into the gradient chunk the step has used up (see the header).
      const w = this.stepped.subarray(0, hi - lo);
      w.set(weights.subarray(lo, hi));
      sgdUpdateRange({ ...this.sgd, lr }, w, this.momentum?.[b], grads.subarray(lo, hi), 0, hi - lo, 1 / this.world);
      for (let i = 0; i < hi - lo; i++) grads[lo + i] = w[i]! - weights[lo + i]!;
    } else {
      sgdUpdateRange({ ...this.sgd, lr }, weights, this.momentum?.[b], grads, lo, hi, 1 / this.world);
    }
    const u1 = performance.now();
    this.optimizerMs += u1 - u0;
    this.timeline.span('optimizer', `sgd bucket ${b}`, u0, u1);
    if (!this.stepped) return this.ring.allGather(b, weights);
    await this.ring.allGather(b, grads); // every chunk's Δ as the bf16 values every replica holds
    addInto(weights, 0, grads);
  }

  private loadWeightsIntoModel(): void {
    for (const [name, v] of this.model.params) {
      const at = this.where.get(name)!;
      const t = tf.tensor(this.weights[at.bucket]!.subarray(at.offset, at.offset + at.size), v.shape);
      v.assign(t);
      t.dispose();
    }
  }

  evaluate(): Promise<EvalResult> {
    // The test set split across replicas.
    const n = this.data.test.count;
    const begin = Math.floor((this.rank * n) / this.world);
    const end = Math.floor(((this.rank + 1) * n) / this.world);
    const t = this.data.test;
    const part = { ...t, count: end - begin, images: t.images.subarray(begin * 784, end * 784), labels: t.labels.subarray(begin, end) };
    return evaluate(this.model, part, { resolution: this.cfg.resolution, channels: this.cfg.channels, resize: this.cfg.resize, batch: this.cfg.evalBatch });
  }

  /** Every parameter and (gathered from all replicas: a collective) every momentum buffer. */
  async state(): Promise<TrainState> {
    const params: PlainTensor[] = [];
    const momentum: PlainTensor[] = [];
    let full: Float32Array[] | undefined;
    if (this.momentum) {
      this.ring.begin(this.seq++);
      full = this.buckets.map((b, i) => {
        const f = new Float32Array(b.size);
        f.set(this.momentum![i]!, this.owned[i]![0]);
        return f;
      });
      await Promise.all(full.map((f, i) => this.ring.allGather(i, f)));
    }
    for (const [name, v] of this.model.params) {
      const at = this.where.get(name)!;
      params.push({ name, shape: v.shape, data: this.weights[at.bucket]!.slice(at.offset, at.offset + at.size) });
      if (full) momentum.push({ name, shape: v.shape, data: full[at.bucket]!.slice(at.offset, at.offset + at.size) });
    }
    return { params, momentum };
  }

  /** Every replica is given the whole state and keeps its momentum shard. */
  async load(state: TrainState): Promise<void> {
    const byName = new Map(state.params.map((p) => [p.name, p]));
    for (const name of this.model.params.keys()) {
      const p = byName.get(name);
      if (p === undefined) throw new Error(`state has no parameter ${name}`);
      const at = this.where.get(name)!;
      if (p.data.length !== at.size) throw new Error(`state: ${name} has ${p.data.length} values, the model ${at.size}`);
      this.weights[at.bucket]!.set(p.data, at.offset);
    }
    this.loadWeightsIntoModel();
    if (!this.momentum) return;
    const flat = this.buckets.map((b) => new Float32Array(b.size)); // absent buffers are zeros, as a fresh optimizer's
    for (const m of state.momentum) {
      const at = this.where.get(m.name);
      if (at === undefined) throw new Error(`state has momentum for ${m.name}, which the model does not have`);
      if (m.data.length !== at.size) throw new Error(`state: momentum of ${m.name} has ${m.data.length} values, the parameter ${at.size}`);
      flat[at.bucket]!.set(m.data, at.offset);
    }
    this.owned.forEach(([lo, hi], i) => this.momentum![i]!.set(flat[i]!.subarray(lo, hi)));
  }

  checksum(): string {
    return checksumOf(this.weights);
  }

  async close(): Promise<void> {
    this.link.close();
    disposeModel(this.model);
  }
}

/** N replicas' replies as one: the global batch's mean loss, the test set's shards added up, rank 0's state. */
export const combineReplicas: Combine = {
  step(results) {
    const sums = results.map((r) => r.checksum);
    if (sums[0] !== undefined && new Set(sums).size !== 1) {
      throw new Error(`replicas diverged: checksums ${sums.map((c, r) => `worker ${r} ${c}`).join(', ')}`);
    }
    const samples = results.reduce((n, r) => n + r.samples, 0);
    return {
      // Equal shards: the global batch's mean is the mean of the shards' means.
      loss: results.reduce((s, r) => s + r.loss * r.samples, 0) / samples,
      samples,
      computeMs: Math.max(...results.map((r) => r.computeMs)),
      waitMs: Math.max(...results.map((r) => r.waitMs)),
      bytesSent: results.reduce((n, r) => n + r.bytesSent, 0),
      tensors: Math.max(...results.map((r) => r.tensors)),
      ...(sums[0] !== undefined ? { checksum: sums[0] } : {}),
      workers: results,
    };
  },
  evaluate: (results) => ({
    correct: results.reduce((n, r) => n + r.correct, 0),
    lossSum: results.reduce((n, r) => n + r.lossSum, 0),
    samples: results.reduce((n, r) => n + r.samples, 0),
  }),
  stateHolders: () => [0],
  shareOf: (state) => state, // every replica keeps all weights and picks its momentum shard
};
