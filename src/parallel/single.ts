/**
 * The whole network in this process: the fallback with fewer than two
 * devices and the reference every parallel mode is tested against.
 *
 * A step: the batch's forward and backward (model/engine.ts), then the SGD
 * update. No exchange, so no await in the step but the loss read.
 */
import * as tf from '@tensorflow/tfjs';
import type { TrainState } from '../checkpoint/checkpoint.js';
import { loadModelState, readModelState } from '../checkpoint/model-state.js';
import type { TrainConfig } from '../config/train.js';
import { specOf } from '../model/alexnet.js';
import { TrainBatches, type RunData } from '../data/run-data.js';
import { readScalar } from '../kernels/read.js';
import { buildModel, disposeModel, type Model } from '../model/build.js';
import { lossAndGrads, type PassOptions } from '../model/engine.js';
import { Sgd } from '../model/sgd.js';
import { evaluate } from './evaluate.js';
import { StepTimeline } from './step-timing.js';
import type { EvalResult, StepInput, StepResult, Strategy } from './strategy.js';

/** Where a step's time went: filled by trainStep when given. */
export interface StepTimes { backwardEndMs: number; optimizerMs: number; backendBytes: number }

/** One SGD step of `model` on x [B, H, W, C], labels [B]: the batch's loss (before the update). */
export async function trainStep(model: Model, opt: Sgd, x: tf.Tensor4D, labels: tf.Tensor1D, opts: PassOptions = {}, times?: StepTimes): Promise<number> {
  const { loss, grads } = await lossAndGrads(model, x, labels, opts);
  const t1 = performance.now();
  if (times) times.backendBytes = tf.memory().numBytes;
  opt.apply(model.params, grads);
  if (times) { times.backwardEndMs = t1; times.optimizerMs = performance.now() - t1; }
  tf.dispose([...grads.values()]);
  const value = await readScalar(loss);
  loss.dispose();
  return value;
}

export class SingleStrategy implements Strategy {
  readonly model: Model;
  private readonly opt: Sgd;
  private readonly batches: TrainBatches;

  constructor(private readonly cfg: TrainConfig, private readonly data: RunData) {
    this.model = buildModel(specOf(cfg), { seed: cfg.seed });
    this.opt = new Sgd({ lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
    this.batches = new TrainBatches(data, cfg);
  }

  async step(s: StepInput): Promise<StepResult> {
    const timeline = new StepTimeline();
    const { t0 } = timeline;
    const { x, y } = this.batches.batch(s.epoch, s.step);
    timeline.span('compute', 'input batch', t0, performance.now());
    try {
      // Dropout is keyed by the global step: a resumed run draws the same masks.
      this.opt.opts.lr = s.lr;
      const times: StepTimes = { backwardEndMs: t0, optimizerMs: 0, backendBytes: 0 };
      const pass: PassOptions = { dropout: { seed: this.cfg.seed, step: s.globalStep, firstSample: 0 }, layerSpans: timeline.layers() };
      const loss = await trainStep(this.model, this.opt, x, y, pass, times);
      const wall = performance.now() - t0;
      timeline.span('compute', 'forward + backward', t0, times.backwardEndMs);
      timeline.span('optimizer', 'sgd', times.backwardEndMs, times.backwardEndMs + times.optimizerMs);
      return {
        loss, samples: this.cfg.batch, computeMs: wall, waitMs: 0, bytesSent: 0, tensors: tf.memory().numTensors,
        detail: timeline.detail({ sendMs: 0, optimizerMs: times.optimizerMs, bytesReceived: 0, sentByLink: {}, backendBytes: times.backendBytes }),
      };
    } finally {
      tf.dispose([x, y]);
    }
  }

  evaluate(): Promise<EvalResult> {
    return evaluate(this.model, this.data.test, { resolution: this.cfg.resolution, channels: this.cfg.channels, resize: this.cfg.resize, batch: this.cfg.evalBatch });
  }

  state(): Promise<TrainState> {
    return readModelState(this.model, this.opt);
  }

  async load(state: TrainState): Promise<void> {
    loadModelState(this.model, this.opt, state);
  }

  async close(): Promise<void> {
    this.opt.dispose();
    disposeModel(this.model);
  }
}
