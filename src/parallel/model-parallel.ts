/**
 * One tower of the 2012 split generalised: the worker side of --mode model,
 * T towers per row, R rows (R × T workers; rank = r·T + t).
 *
 * Contract:
 *   - Worker (r, t) owns tower t's weights only and takes row r's shard of
 *     the batch (samples r·B/R … (r+1)·B/R − 1; all of it when R = 1); the
 *     towers of a row draw the same data and dropout masks (keyed on the
 *     global sample and unit), so a row computes what one process computes.
 *   - Tower-local links (conv1 -> conv2, conv3 -> conv4 -> conv5) never touch
 *     the network.
 *   - At each cross link (pooled conv2 -> conv3, pooled conv5 -> fc6,
 *     fc6 -> fc7, fc7 -> fc8) and for the logits, forward sends this tower's
 *     output to every other tower of its row the moment it exists and awaits
 *     theirs: an all-gather in tower order, key '<step>/<micro>/<link>/fwd'.
 *     Towers may differ by one kernel where the division is uneven: each
 *     part's size comes from the layer shapes.
 *   - Backward splits dL/d(gathered input) by tower, sends each other tower
 *     its slice ('<step>/<micro>/<link>/bwd') and adds the slices that come
 *     back to its own, in tower order (the order one process adds them in).
 *     The logits' gradient is not exchanged: every tower computes the same
 *     loss from all logits.
 *   - Micro-batches are pipelined (GPipe fill and drain): all m micro-batches
 *     start at once, and whenever one awaits another tower, the next one
 *     computes. Their gradients are summed in micro-batch order and divided
 *     by m, the same on every tower.
 *   - R = 1: each tower updates its own weights. R > 1: tower t's replicas
 *     (the workers t, T + t, …) all-reduce its gradients on their ring with
 *     ZeRO-1 (replicated-params.ts), each averaging over the rows.
 *   - Evaluation: rows split the test set; a row's towers walk their part
 *     together ('eval<epoch>/<batch>/…').
 *   - bf16 on the wire (cfg.wire): at every cross link and for the logits a
 *     tower sends its output rounded to bf16 and concatenates the *rounded*
 *     values of its own part too, so every tower holds the identical
 *     gathered tensor and computes the identical loss. Backward sends the
 *     other towers' slices of dL/d(gathered) as bf16 and adds them, decoded,
 *     to its own float32 slice: that sum is used by the receiving tower
 *     alone, so its own slice stays unrounded.
 */
import * as tf from '@tensorflow/tfjs';
import { performance } from 'node:perf_hooks';
import type { TrainState } from '../checkpoint/checkpoint.js';
import { loadModelState, readModelState } from '../checkpoint/model-state.js';
import type { TrainConfig } from '../config/train.js';
import { specOf } from '../model/alexnet.js';
import { TrainBatches, type RunData } from '../data/run-data.js';
import { readFloats, readScalar } from '../kernels/read.js';
import { buildModel, disposeModel, paramName, type Model } from '../model/build.js';
import { lossAndGrads, type CrossLinks } from '../model/engine.js';
import { Sgd } from '../model/sgd.js';
import type { WireType } from '../config/choices.js';
import { roundToBf16InPlace, toBf16, type WireArray } from '../wire/bf16.js';
import type { RingAllReduce } from '../wire/ring-allreduce.js';
import type { Traffic } from '../wire/traffic.js';
import { evaluate } from './evaluate.js';
import { ReplicatedParams } from './replicated-params.js';
import { StepMeter, type StepTimeline } from './step-timing.js';
import { testShard } from './test-shard.js';
import type { EvalResult, StepInput, StepResult, Strategy } from './strategy.js';

/** A micro-batch's dense layers, by kernel name: input x [b, in] and dL/d(pre-activation) dz [b, out]. */
type Deferred = Map<string, { x: tf.Tensor; dz: tf.Tensor }>;
const disposeDeferred = (deferred: Deferred[]) => tf.dispose(deferred.flatMap((d) => [...d.values()].flatMap((e) => [e.x, e.dz])));

/** What the towers need of a worker's communicator: keyed tensors to and from other workers. */
export interface Peers {
  /** hands `data` (float32, or bf16 bit patterns) to worker `to` under `key`; it must not change afterwards */
  send(to: number, key: string, data: WireArray): void;
  /** worker `from`'s tensor for `key`, `floats` values sent as `wire`, as float32 */
  receive(from: number, key: string, floats: number, wire?: WireType): Promise<Float32Array>;
  /** fails every pending and future receive (a local step failed) */
  fail(err: Error): void;
  /** forgets the keys seen before global step `step` (as each step begins) */
  forgetSeen(step: number): void;
  /** bytes handed to peers since it opened: keyed tensors and its ring's pieces */
  bytesSent: number;
  /** the keyed tensors' sends and waits, per step */
  readonly traffic: Traffic;
}

/**
 * The exchanges of one micro-batch (or test batch) under key prefix
 * `prefix` between the workers `group` (by tower: group[t] holds tower t),
 * of which this worker is group[me]; values sent as `wire`.
 */
export function crossLinks(peers: Peers, group: number[], me: number, prefix: string, wire: WireType = 'fp32'): CrossLinks {
  const others = group.map((rank, t) => ({ rank, t })).filter(({ t }) => t !== me);
  /** `own`'s shape with `axis` set to `size` */
  const shapeWith = (own: tf.Tensor, axis: number, size: number) => own.shape.map((d, i) => (i === axis ? size : d));
  return {
    async gather(name, own, axis, sizes) {
      const key = `${prefix}/${name}/fwd`;
      const values = await readFloats(own); // a copy: rounding it leaves `own` as it is
      let mine = own;
      if (wire === 'bf16') {
        // This tower uses what the others receive: the same bits everywhere (see the header).
        const bits = new Uint16Array(values.length);
        roundToBf16InPlace(values, 0, values.length, bits);
        for (const o of others) peers.send(o.rank, key, bits);
        mine = tf.tensor(values, own.shape);
      } else {
        for (const o of others) peers.send(o.rank, key, values);
      }
      const parts: tf.Tensor[] = new Array(group.length);
      parts[me] = mine;
      try {
        for (const o of others) {
          const shape = shapeWith(own, axis, sizes[o.t]!);
          parts[o.t] = tf.tensor(await peers.receive(o.rank, key, shape.reduce((a, b) => a * b, 1), wire), shape);
        }
        return tf.concat(parts, axis);
      } finally {
        tf.dispose(parts.filter((p) => p !== undefined && p !== own));
      }
    },
    async scatter(name, dGathered, axis, sizes, replicated) {
      const slices = tf.split(dGathered, sizes, axis);
      if (replicated) {
        tf.dispose(slices.filter((_, t) => t !== me));
        return slices[me]!;
      }
      const key = `${prefix}/${name}/bwd`;
      const parts: tf.Tensor[] = new Array(group.length);
      parts[me] = slices[me]!;
      try {
        for (const o of others) {
          const values = await readFloats(slices[o.t]!);
          peers.send(o.rank, key, wire === 'bf16' ? toBf16(values) : values);
        }
        for (const o of others) parts[o.t] = tf.tensor(await peers.receive(o.rank, key, slices[me]!.size, wire), slices[me]!.shape);
        // dL/d(own output): every tower's slice for this one, added in tower order as one process adds them
        return tf.tidy(() => parts.slice(1).reduce((acc, p) => tf.add(acc, p), parts[0]!));
      } finally {
        tf.dispose([...slices, ...parts.filter((p) => p !== undefined && !slices.includes(p))]);
      }
    },
  };
}

/** Where a tower worker sits: row `replica` of `replicas`, tower `tower`; `row` the ranks of its row, by tower (its replicas' ring comes to open() on its own). */
export interface TowerPlace { tower: number; replica: number; replicas: number; row: number[] }

export class ModelParallelTower implements Strategy {
  readonly model: Model;
  /** R = 1: this tower's own optimizer */
  private readonly opt: Sgd | undefined;
  private readonly batches: TrainBatches;
  /** this row's samples per step */
  private readonly rowBatch: number;

  private constructor(
    private readonly cfg: TrainConfig, private readonly data: RunData, private readonly link: Peers,
    private readonly place: TowerPlace, private readonly microBatches: number,
    /** R > 1: this tower's parameters, replicated over its column */
    private readonly replicated: ReplicatedParams | undefined, private readonly closeLink: () => void, model: Model,
  ) {
    this.model = model;
    this.opt = replicated ? undefined : new Sgd({ lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
    this.batches = new TrainBatches(data, cfg);
    this.rowBatch = cfg.batch / place.replicas;
  }

  /**
   * Tower `place.tower` of row `place.replica`, exchanging with its row over
   * `link`; with replicas, all-reducing its gradients on `column` (the ring
   * of its tower's replicas). `closeLink` closes the communicator.
   */
  static async open(
    cfg: TrainConfig, data: RunData, link: Peers, place: TowerPlace, microBatches: number,
    column: RingAllReduce | undefined, bucketBytes: number, closeLink: () => void,
  ): Promise<ModelParallelTower> {
    const spec = specOf(cfg);
    if (spec.towers < 2) throw new Error(`--mode model splits a towered net ('original'); this run's net has ${spec.towers} tower`);
    if (place.row.length !== spec.towers) throw new Error(`a row of ${place.row.length} workers for a net of ${spec.towers} towers`);
    if (cfg.batch % place.replicas !== 0) throw new Error(`batch ${cfg.batch} does not split evenly over ${place.replicas} replicas`);
    if ((cfg.batch / place.replicas) % microBatches !== 0) throw new Error(`a row's batch of ${cfg.batch / place.replicas} does not split into ${microBatches} micro-batches`);
    const model = buildModel(spec, { seed: cfg.seed, towers: [place.tower] });
    try {
      const replicated = place.replicas > 1
        ? await ReplicatedParams.open(model.params, column!, { sgd: { lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay }, wire: cfg.wire, bucketBytes, scale: 1 / place.replicas })
        : undefined;
      return new ModelParallelTower(cfg, data, link, place, microBatches, replicated, closeLink, model);
    } catch (err) {
      disposeModel(model);
      throw err;
    }
  }

  get rank(): number { return this.place.row[this.place.tower]!; }

  async step(s: StepInput): Promise<StepResult> {
    // Time this process sat idle, awaiting the other towers (and its replicas' ring).
    const meter = new StepMeter(this.link, [this.link.traffic, ...(this.replicated ? [this.replicated.traffic] : [])]);
    const { timeline } = meter;
    const { t0 } = timeline;
    const { link } = this;
    link.forgetSeen(s.globalStep);
    const { micro, deferred } = await this.runMicroBatches(s, timeline);
    const backendBytes = tf.memory().numBytes;
    const g0 = performance.now();
    const grads = this.averageGradients(micro.map((r) => r.grads), deferred);
    const u0 = performance.now();
    let optimizerMs: number;
    try {
      optimizerMs = await this.update(s, grads, timeline);
    } finally {
      tf.dispose([...grads.values(), ...micro.flatMap((r) => [...r.grads.values()])]);
    }
    const u1 = performance.now();
    let lossSum = 0;
    for (const r of micro) lossSum += await readScalar(r.loss);
    tf.dispose(micro.map((r) => r.loss));
    const { waitMs, bytesSent, traffic } = meter.finish();
    // The micro-batches' compute and their waits on the other tower interleave: one span around them, each layer's inside it.
    timeline.span('compute', `forward + backward (${this.microBatches} micro-batch${this.microBatches > 1 ? 'es' : ''}, waits inside)`, t0, g0);
    timeline.span('compute', 'average gradients', g0, u0);
    if (this.replicated) timeline.span('wait', 'all-reduce among the replicas', u0, u1);
    else timeline.span('optimizer', 'sgd', u0, u1);
    timeline.traffic(traffic);
    return {
      loss: lossSum / micro.length, samples: this.rowBatch, computeMs: Math.max(0, performance.now() - t0 - waitMs), waitMs,
      bytesSent, tensors: tf.memory().numTensors,
      ...(s.checksum && this.replicated ? { checksum: this.replicated.checksum() } : {}),
      detail: timeline.detail({ sendMs: traffic.sendMs, optimizerMs, bytesReceived: traffic.receivedBytes, sentByLink: traffic.sentBy, backendBytes }),
    };
  }

  /** The averaged gradients into the weights: this tower's optimizer, or the replicas' all-reduce and sharded update. Returns the update's ms. */
  private async update(s: StepInput, grads: Map<string, tf.Tensor>, timeline: StepTimeline): Promise<number> {
    if (this.opt) {
      const u0 = performance.now();
      this.opt.opts.lr = s.lr;
      this.opt.apply(this.model.params, grads);
      return performance.now() - u0;
    }
    const r = this.replicated!;
    r.begin(s.lr, true, timeline);
    // Backward order (fc8 first), so the buckets fill and start in the order they are planned.
    for (const name of [...this.model.params.keys()].reverse()) r.onGradient(name, grads.get(name)!);
    await r.reduced();
    const l0 = performance.now();
    r.loadIntoModel();
    return r.optimizerMs + performance.now() - l0;
  }

  /**
   * GPipe: every micro-batch runs at once; each awaits the other tower at its
   * cross links. With m > 1 the dense layers' weight gradients wait for all
   * micro-batches (their x and dz come back in `deferred`): one xᵀ·dz over the
   * whole batch instead of m weight-sized products and their sum.
   */
  private async runMicroBatches(s: StepInput, timeline: StepTimeline): Promise<{ micro: Array<Awaited<ReturnType<typeof lossAndGrads>>>; deferred: Deferred[] }> {
    const { link, cfg } = this;
    const m = this.microBatches;
    const size = this.rowBatch / m;
    const first = this.place.replica * this.rowBatch; // this row's first sample in the global batch
    const deferred: Deferred[] = Array.from({ length: m }, () => new Map());
    const settled = await Promise.allSettled(Array.from({ length: m }, async (_, i) => {
      const b0 = performance.now();
      const { x, y } = this.batches.batch(s.epoch, s.step, first + i * size, size);
      timeline.span('compute', `input batch${m > 1 ? ` (micro-batch ${i})` : ''}`, b0, performance.now());
      try {
        return await lossAndGrads(this.model, x, y, {
          dropout: { seed: cfg.seed, step: s.globalStep, firstSample: first + i * size },
          links: crossLinks(link, this.place.row, this.place.tower, `${s.globalStep}/${i}`, cfg.wire),
          layerSpans: timeline.layers(m > 1 ? `micro-batch ${i}` : ''),
          ...(m > 1 ? { onDeferredDense: (layer: string, tower: number, xs: tf.Tensor, dz: tf.Tensor) => deferred[i]!.set(paramName(this.model.spec, layer, tower, 'kernel'), { x: xs, dz }) } : {}),
        });
      } catch (err) {
        // The other micro-batches may be waiting on exchanges this one will never make: end them too.
        link.fail(err instanceof Error ? err : new Error(String(err)));
        throw err;
      } finally {
        tf.dispose([x, y]);
      }
    }));
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) {
      // All micro-batches have ended (the link's failure reaches every wait): free what the others made.
      for (const r of settled) if (r.status === 'fulfilled') tf.dispose([r.value.loss, ...r.value.grads.values()]);
      disposeDeferred(deferred);
      throw failed.reason;
    }
    return { micro: settled.map((r) => (r as PromiseFulfilledResult<Awaited<ReturnType<typeof lossAndGrads>>>).value), deferred };
  }

  /** Every parameter's gradient averaged over the micro-batches, summed in micro-batch order (the same on both workers). */
  private averageGradients(micro: Array<Map<string, tf.Tensor>>, deferred: Deferred[]): Map<string, tf.Tensor> {
    const m = micro.length;
    const grads = new Map<string, tf.Tensor>();
    for (const [name, v] of this.model.params) {
      const key = name.replace(/\.bias$/, '.kernel'); // a dense layer's deferred inputs are filed under its kernel
      const dense = deferred[0]!.has(key);
      grads.set(name, tf.tidy(() => {
        if (m === 1) return tf.clone(micro[0]!.get(name)!);
        if (!dense) return tf.div(tf.addN(micro.map((g) => g.get(name)!)), m); // one pass over the m gradients
        const dz = tf.concat(deferred.map((d) => d.get(key)!.dz), 0); // [B, out], micro-batches in order
        const g = name.endsWith('.bias') ? tf.sum(dz, 0)
          : tf.matMul(tf.concat(deferred.map((d) => d.get(key)!.x), 0) as tf.Tensor2D, dz as tf.Tensor2D, true, false); // [in, out]
        return tf.div(tf.reshape(g, v.shape), m);
      }));
    }
    disposeDeferred(deferred);
    return grads;
  }

  evaluate(epoch: number): Promise<EvalResult> {
    // Every tower is needed for every sample: a row's workers walk its part of the test set together.
    return evaluate(this.model, testShard(this.data.test, this.place.replica, this.place.replicas), {
      resolution: this.cfg.resolution, channels: this.cfg.channels, resize: this.cfg.resize, batch: this.cfg.evalBatch,
      links: (b) => crossLinks(this.link, this.place.row, this.place.tower, `eval${epoch}/${b}`, this.cfg.wire),
    });
  }

  /** This tower's parameters and momentum buffers (with replicas: gathered from them, a collective). */
  state(): Promise<TrainState> {
    return this.replicated ? this.replicated.state() : readModelState(this.model, this.opt!);
  }

  async load(state: TrainState): Promise<void> {
    if (this.replicated) this.replicated.load(state);
    else loadModelState(this.model, this.opt!, state);
  }

  /** with replicas, of this tower's weights (its replicas must agree); a tower of its own has nothing to agree with */
  checksum(): string | undefined {
    return this.replicated?.checksum();
  }

  async close(): Promise<void> {
    this.closeLink();
    this.opt?.dispose();
    disposeModel(this.model);
  }
}
