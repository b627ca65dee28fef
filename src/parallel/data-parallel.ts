/**
 * One data-parallel replica (the worker side of --mode data): the whole net,
 * every parameter replicated over all workers (replicated-params.ts: ring
 * all-reduce with ZeRO-1), forward and backward on this replica's shard of
 * the global batch (samples rank·B/N … (rank+1)·B/N − 1 of the step, with
 * the dropout masks and augmentation those samples get in one process).
 * Backward hands each gradient to its bucket as it is produced, and awaits
 * between layers so the ring's messages progress while backward goes on.
 */
import * as tf from '@tensorflow/tfjs';
import { performance } from 'node:perf_hooks';
import type { TrainState } from '../checkpoint/checkpoint.js';
import type { TrainConfig } from '../config/train.js';
import { specOf } from '../model/alexnet.js';
import { TrainBatches, type RunData } from '../data/run-data.js';
import { readScalar } from '../kernels/read.js';
import { buildModel, disposeModel, type Model } from '../model/build.js';
import { lossAndGrads } from '../model/engine.js';
import type { RingAllReduce } from '../wire/ring-allreduce.js';
import { evaluate } from './evaluate.js';
import { ReplicatedParams } from './replicated-params.js';
import { StepMeter } from './step-timing.js';
import { testShard } from './test-shard.js';
import type { EvalResult, StepInput, StepResult, Strategy } from './strategy.js';

/** Lets socket events in between layers of backward (a macrotask turn of the event loop). */
export const yieldToSockets = () => new Promise<void>((resolve) => setImmediate(resolve));

export class DataParallelReplica implements Strategy {
  readonly model: Model;
  private readonly batches: TrainBatches;

  private constructor(
    private readonly cfg: TrainConfig, private readonly data: RunData, private readonly ring: RingAllReduce,
    private readonly replicated: ReplicatedParams, private readonly closeLink: () => void, model: Model,
  ) {
    this.model = model;
    this.batches = new TrainBatches(data, cfg);
  }

  get rank(): number { return this.ring.rank; }
  get world(): number { return this.ring.world; }
  get buckets() { return this.replicated.buckets; }

  /** A replica on `ring` (closed with it by `closeLink`); reads its initial weights to the host. */
  static async open(cfg: TrainConfig, data: RunData, ring: RingAllReduce, bucketBytes: number, closeLink: () => void): Promise<DataParallelReplica> {
    if (cfg.batch % ring.world !== 0) throw new Error(`global batch ${cfg.batch} does not split evenly over ${ring.world} replicas`);
    const model = buildModel(specOf(cfg), { seed: cfg.seed });
    try {
      const replicated = await ReplicatedParams.open(model.params, ring, {
        sgd: { lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay }, wire: cfg.wire, bucketBytes, scale: 1 / ring.world,
      });
      return new DataParallelReplica(cfg, data, ring, replicated, closeLink, model);
    } catch (err) {
      disposeModel(model);
      throw err;
    }
  }

  async step(s: StepInput): Promise<StepResult> {
    // Waiting is the event loop's idle time: the chunk updates and sends that run
    // between ring rounds after backward are work, not waiting.
    const meter = new StepMeter(this.ring, [this.ring.traffic]);
    const { timeline } = meter;
    const { t0 } = timeline;
    const shard = this.cfg.batch / this.world;
    const { x, y } = this.batches.batch(s.epoch, s.step, this.rank * shard, shard);
    timeline.span('compute', 'input batch', t0, performance.now());
    this.replicated.begin(s.lr, s.overlap !== false, timeline);
    try {
      const { loss, grads: produced } = await lossAndGrads(this.model, x, y, {
        dropout: { seed: this.cfg.seed, step: s.globalStep, firstSample: this.rank * shard },
        onGradient: (name, g) => this.replicated.onGradient(name, g),
        afterLayer: yieldToSockets,
        layerSpans: timeline.layers(),
      });
      const backwardEnd = performance.now();
      const backendBytes = tf.memory().numBytes;
      let value: number;
      try {
        await this.replicated.reduced();
        value = await readScalar(loss);
      } finally {
        tf.dispose([loss, ...produced.values()]);
      }
      const reduced = performance.now();
      this.replicated.loadIntoModel();
      const loaded = performance.now();
      const { waitMs, bytesSent, traffic } = meter.finish();
      timeline.span('compute', 'forward + backward', t0, backwardEnd);
      // the ring after backward: its idle share is waitMs, the chunk updates and sends inside it are drawn too
      timeline.span('wait', 'all-reduce after backward', backwardEnd, reduced);
      timeline.span('optimizer', 'weights into the model', reduced, loaded);
      timeline.traffic({ sends: traffic.sends, waits: [] }); // the ring's waits are inside 'all-reduce after backward'
      return {
        loss: value, samples: shard, computeMs: performance.now() - t0 - waitMs, waitMs, bytesSent,
        tensors: tf.memory().numTensors,
        ...(s.checksum ? { checksum: this.replicated.checksum() } : {}),
        detail: timeline.detail({
          sendMs: traffic.sendMs, optimizerMs: this.replicated.optimizerMs + (loaded - reduced), bytesReceived: traffic.receivedBytes, sentByLink: traffic.sentBy, backendBytes,
        }),
      };
    } finally {
      tf.dispose([x, y]);
    }
  }

  evaluate(): Promise<EvalResult> {
    // The test set split across replicas.
    return evaluate(this.model, testShard(this.data.test, this.rank, this.world), { resolution: this.cfg.resolution, channels: this.cfg.channels, resize: this.cfg.resize, batch: this.cfg.evalBatch });
  }

  /** Every parameter and (gathered from all replicas: a collective) every momentum buffer. */
  state(): Promise<TrainState> {
    return this.replicated.state();
  }

  /** Every replica is given the whole state and keeps its momentum shard. */
  async load(state: TrainState): Promise<void> {
    this.replicated.load(state);
  }

  checksum(): string {
    return this.replicated.checksum();
  }

  async close(): Promise<void> {
    this.closeLink();
    disposeModel(this.model);
  }
}
