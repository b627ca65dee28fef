/**
 * One tower of the 2012 split (the worker side of --mode model).
 *
 * Contract:
 *   - Worker k owns tower k's weights only and takes the whole batch; both
 *     workers draw the same data and dropout masks (keyed on the global
 *     sample and unit), so the pair computes what one process computes.
 *   - Tower-local links (conv1 -> conv2, conv3 -> conv4 -> conv5) never touch
 *     the network.
 *   - At each cross link (pooled conv2 -> conv3, pooled conv5 -> fc6,
 *     fc6 -> fc7, fc7 -> fc8) and for the logits, forward sends this tower's
 *     output the moment it exists and awaits the other's: an all-gather in
 *     tower order, key '<step>/<micro>/<link>/fwd'.
 *   - Backward splits dL/d(gathered input) by tower, sends the other tower's
 *     slice ('<step>/<micro>/<link>/bwd') and adds the slice that comes back
 *     to its own. The logits' gradient is not exchanged: both workers compute
 *     the same loss from all logits.
 *   - Micro-batches are pipelined (GPipe fill and drain): all m micro-batches
 *     start at once, and whenever one awaits the other tower, the next one
 *     computes. Their gradients are summed in micro-batch order and divided
 *     by m, the same on both workers; each then updates its own weights.
 *   - Evaluation walks the test set on both workers together ('eval<epoch>/<batch>/…').
 *   - bf16 on the wire (cfg.wire): at every cross link and for the logits a
 *     tower sends its output rounded to bf16 and concatenates the *rounded*
 *     values of its own part too, so both towers hold the identical gathered
 *     tensor ([b, 13, 13, 2·C] pooled conv2 at conv3, [b, 2·D] at fc6–fc8,
 *     [b, classes] logits) and compute the identical loss. Backward sends the
 *     other tower's slice of dL/d(gathered) as bf16 and adds it, decoded, to
 *     its own float32 slice: that sum is used by the receiving tower alone,
 *     so its own slice stays unrounded. Weights and momentum never travel.
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
import type { Communicator } from '../wire/communicator.js';
import type { WireType } from '../config/choices.js';
import { roundToBf16InPlace, toBf16 } from '../wire/bf16.js';
import { evaluate } from './evaluate.js';
import { StepTimeline } from './step-timing.js';
import { type Combine, type EvalResult, type StepInput, type StepResult, type Strategy } from './strategy.js';

/** A micro-batch's dense layers, by kernel name: input x [b, in] and dL/d(pre-activation) dz [b, out]. */
type Deferred = Map<string, { x: tf.Tensor; dz: tf.Tensor }>;
const disposeDeferred = (deferred: Deferred[]) => tf.dispose(deferred.flatMap((d) => [...d.values()].flatMap((e) => [e.x, e.dz])));

/** The two towers' exchanges for one micro-batch (or test batch) under key prefix `prefix`, sent as `wire`. */
export function crossLinks(comm: Communicator, rank: number, prefix: string, wire: WireType = 'fp32'): CrossLinks {
  return {
    async gather(name, own, axis) {
      const key = `${prefix}/${name}/fwd`;
      const values = await readFloats(own); // a copy: rounding it leaves `own` as it is
      let mine = own;
      if (wire === 'bf16') {
        // This tower uses what the other receives: the same bits on both sides (see the header).
        const bits = new Uint16Array(values.length);
        roundToBf16InPlace(values, 0, values.length, bits);
        comm.send(1 - rank, key, bits);
        mine = tf.tensor(values, own.shape);
      } else {
        comm.send(1 - rank, key, values);
      }
      const theirs = tf.tensor(await comm.receive(1 - rank, key, own.size, wire), own.shape);
      const all = tf.concat(rank === 0 ? [mine, theirs] : [theirs, mine], axis);
      tf.dispose(mine === own ? [theirs] : [theirs, mine]);
      return all;
    },
    async scatter(name, dGathered, axis, replicated) {
      const [d0, d1] = tf.split(dGathered, 2, axis) as [tf.Tensor, tf.Tensor];
      const [mine, other] = rank === 0 ? [d0, d1] : [d1, d0];
      if (replicated) {
        other.dispose();
        return mine;
      }
      const key = `${prefix}/${name}/bwd`;
      try {
        const values = await readFloats(other);
        comm.send(1 - rank, key, wire === 'bf16' ? toBf16(values) : values);
        const theirs = tf.tensor(await comm.receive(1 - rank, key, mine.size, wire), mine.shape);
        const sum = tf.add(mine, theirs);
        theirs.dispose();
        return sum;
      } finally {
        tf.dispose([mine, other]);
      }
    },
  };
}

export class ModelParallelTower implements Strategy {
  readonly model: Model;
  private readonly opt: Sgd;
  private readonly batches: TrainBatches;

  constructor(
    private readonly cfg: TrainConfig, private readonly data: RunData,
    private readonly link: Communicator, readonly rank: number, private readonly microBatches: number,
  ) {
    if (cfg.arch !== 'original') throw new Error(`--mode model splits the two-tower 'original' net; this run is '${cfg.arch}'`);
    if (cfg.batch % microBatches !== 0) throw new Error(`batch ${cfg.batch} does not split into ${microBatches} micro-batches`);
    this.model = buildModel(specOf(cfg), { seed: cfg.seed, towers: [rank] });
    this.opt = new Sgd({ lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
    this.batches = new TrainBatches(data, cfg);
  }

  async step(s: StepInput): Promise<StepResult> {
    const timeline = new StepTimeline();
    const { t0 } = timeline;
    const { link, cfg } = this;
    // Time this process sat idle, awaiting the other tower: with pipelined
    // micro-batches the waits overlap each other and other micro-batches' compute,
    // so they are measured as the event loop's idle time, not summed.
    const loopBefore = performance.eventLoopUtilization();
    const sentBefore = link.bytesSent;
    link.traffic.take(); // evaluation's exchanges are not this step's
    link.forgetSeen();
    const { micro, deferred } = await this.runMicroBatches(s, timeline);
    const backendBytes = tf.memory().numBytes;
    const g0 = performance.now();
    const grads = this.averageGradients(micro.map((r) => r.grads), deferred);
    const u0 = performance.now();
    this.opt.opts.lr = s.lr;
    this.opt.apply(this.model.params, grads);
    const u1 = performance.now();
    tf.dispose([...grads.values(), ...micro.flatMap((r) => [...r.grads.values()])]);
    let lossSum = 0;
    for (const r of micro) lossSum += await readScalar(r.loss);
    tf.dispose(micro.map((r) => r.loss));
    const waitMs = performance.eventLoopUtilization(loopBefore).idle;
    const traffic = link.traffic.take();
    // The micro-batches' compute and their waits on the other tower interleave: one span around them, each layer's inside it.
    timeline.span('compute', `forward + backward (${this.microBatches} micro-batch${this.microBatches > 1 ? 'es' : ''}, waits inside)`, t0, g0);
    timeline.span('compute', 'average gradients', g0, u0);
    timeline.span('optimizer', 'sgd', u0, u1);
    timeline.traffic(traffic);
    return {
      loss: lossSum / micro.length, samples: cfg.batch, computeMs: Math.max(0, performance.now() - t0 - waitMs), waitMs,
      bytesSent: link.bytesSent - sentBefore, tensors: tf.memory().numTensors,
      detail: timeline.detail({ sendMs: traffic.sendMs, optimizerMs: u1 - u0, bytesReceived: traffic.receivedBytes, sentByLink: traffic.sentBy, backendBytes }),
    };
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
    const size = cfg.batch / m;
    const deferred: Deferred[] = Array.from({ length: m }, () => new Map());
    const settled = await Promise.allSettled(Array.from({ length: m }, async (_, i) => {
      const b0 = performance.now();
      const { x, y } = this.batches.batch(s.epoch, s.step, i * size, size);
      timeline.span('compute', `input batch${m > 1 ? ` (micro-batch ${i})` : ''}`, b0, performance.now());
      try {
        return await lossAndGrads(this.model, x, y, {
          dropout: { seed: cfg.seed, step: s.globalStep, firstSample: i * size },
          links: crossLinks(link, this.rank, `${s.globalStep}/${i}`, cfg.wire),
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
    // Both towers are needed for every sample: the two workers walk the test set together.
    return evaluate(this.model, this.data.test, {
      resolution: this.cfg.resolution, channels: this.cfg.channels, resize: this.cfg.resize, batch: this.cfg.evalBatch,
      links: (b) => crossLinks(this.link, this.rank, `eval${epoch}/${b}`, this.cfg.wire),
    });
  }

  /** This tower's half of the parameters and momentum buffers. */
  state(): Promise<TrainState> {
    return readModelState(this.model, this.opt);
  }

  async load(state: TrainState): Promise<void> {
    loadModelState(this.model, this.opt, state);
  }

  async close(): Promise<void> {
    this.link.close();
    this.opt.dispose();
    disposeModel(this.model);
  }
}

/** Two towers' replies as one: the loss agrees (both compute it from all logits), byte counts add up. */
export const combineTowers: Combine = {
  step(results) {
    const [a, b] = results as [StepResult, StepResult];
    if (Math.abs(a.loss - b.loss) > 1e-5 * Math.max(1, Math.abs(a.loss))) {
      throw new Error(`the towers disagree on the loss: ${a.loss} vs ${b.loss}`);
    }
    return {
      loss: a.loss, samples: a.samples, computeMs: Math.max(a.computeMs, b.computeMs), waitMs: Math.max(a.waitMs, b.waitMs),
      bytesSent: a.bytesSent + b.bytesSent, tensors: Math.max(a.tensors, b.tensors), workers: results,
    };
  },
  evaluate: (results) => results[0]!, // both evaluated every sample together
  stateHolders: (world) => Array.from({ length: world }, (_, r) => r), // each holds its tower
  shareOf: (state, rank) => {
    const mine = (t: { name: string }) => t.name.includes(`.t${rank}.`); // conv1.t0.kernel: tower 0's
    return { params: state.params.filter(mine), momentum: state.momentum.filter(mine) };
  },
};
