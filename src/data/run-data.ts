import * as tf from '@tensorflow/tfjs';
import { epochOrder, makeBatch } from './batches.js';
import { findDataDir, loadSplit, type LabeledImages } from './fashion-mnist.js';
import { syntheticImages } from './synthetic.js';
import type { TrainConfig } from '../config/train.js';

export interface RunData {
  train: LabeledImages;
  test: LabeledImages;
  source: string;
}

/** Keeps the first `limit` samples (0: all). */
function head(d: LabeledImages, limit: number): LabeledImages {
  if (limit <= 0 || limit >= d.count) return d;
  return { split: d.split, count: limit, images: d.images.subarray(0, limit * 28 * 28), labels: d.labels.subarray(0, limit) };
}

export function loadRunData(cfg: TrainConfig): RunData {
  if (cfg.data === 'synthetic') {
    return {
      train: syntheticImages('train', cfg.trainSamples || 6_000, cfg.seed),
      test: syntheticImages('t10k', cfg.testSamples || 1_000, cfg.seed),
      source: 'synthetic images',
    };
  }
  const dir = findDataDir(cfg.dataDir);
  return {
    train: head(loadSplit(dir, 'train'), cfg.trainSamples),
    test: head(loadSplit(dir, 't10k'), cfg.testSamples),
    source: `Fashion-MNIST from ${dir}`,
  };
}

/**
 * The training batches of a run, addressed by (epoch, step): samples
 * [step·B, (step+1)·B) of the epoch's keyed order, or the part
 * [first, first+count) of them that a data-parallel shard takes.
 */
export class TrainBatches {
  private order: { epoch: number; samples: Uint32Array } = { epoch: -1, samples: new Uint32Array(0) };
  readonly stepsPerEpoch: number;

  constructor(private readonly data: RunData, private readonly cfg: TrainConfig) {
    this.stepsPerEpoch = Math.floor(data.train.count / cfg.batch);
    if (this.stepsPerEpoch === 0) throw new Error(`batch ${cfg.batch} is larger than the ${data.train.count} training samples`);
  }

  /** The step's samples [first, first+count), as indices into the training set. */
  private samples(epoch: number, step: number, first: number, count: number): Uint32Array {
    if (step >= this.stepsPerEpoch) throw new Error(`step ${step} of epoch ${epoch}: an epoch has ${this.stepsPerEpoch}`);
    if (this.order.epoch !== epoch) this.order = { epoch, samples: epochOrder(this.data.train.count, this.cfg.seed, epoch) };
    const begin = step * this.cfg.batch + first;
    return this.order.samples.subarray(begin, begin + count);
  }

  /** Only the labels [count] int32 of those samples (no images built); the caller disposes them. */
  labels(epoch: number, step: number, first = 0, count = this.cfg.batch): tf.Tensor1D {
    const labels = this.data.train.labels;
    return tf.tensor1d(Int32Array.from(this.samples(epoch, step, first, count), (i) => labels[i]!), 'int32');
  }

  /** x [count, R, R, C] float32 and labels [count] int32; the caller disposes both. */
  batch(epoch: number, step: number, first = 0, count = this.cfg.batch): { x: tf.Tensor4D; y: tf.Tensor1D } {
    const { cfg } = this;
    return makeBatch(this.data.train, this.samples(epoch, step, first, count), {
      resolution: cfg.resolution, channels: cfg.channels, resize: cfg.resize,
      ...(cfg.augment ? { augment: { seed: cfg.seed, epoch } } : {}),
    });
  }
}
