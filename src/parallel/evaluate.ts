import * as tf from '@tensorflow/tfjs';
import { makeBatch } from '../data/batches.js';
import type { LabeledImages } from '../data/fashion-mnist.js';
import { readFloats } from '../kernels/read.js';
import type { Model } from '../model/build.js';
import { predict, type CrossLinks } from '../model/engine.js';
import { softmaxCrossEntropy } from '../model/layers.js';
import type { EvalResult } from './strategy.js';
import type { ResizeMapping } from '../config/choices.js';

export interface EvaluateOptions {
  resolution: number;
  channels: number;
  resize: ResizeMapping;
  batch: number;
  /** model-parallel: the cross links of test batch b (both towers walk the test set together) */
  links?: (batchIndex: number) => CrossLinks;
  /** the logits of test batch b when they are not the model's alone (hybrid: the trunk here, the head over the workers) */
  predict?: (x: tf.Tensor4D, batchIndex: number) => Promise<tf.Tensor2D>;
}

/** Correct predictions and summed loss over all of `data`, without dropout. */
export async function evaluate(model: Model, data: LabeledImages, opts: EvaluateOptions): Promise<EvalResult> {
  let correct = 0;
  let lossSum = 0;
  for (let start = 0, b = 0; start < data.count; start += opts.batch, b++) {
    const samples = Array.from({ length: Math.min(opts.batch, data.count - start) }, (_, i) => start + i);
    const { x, y } = makeBatch(data, samples, { resolution: opts.resolution, channels: opts.channels, resize: opts.resize });
    try {
      const logits = opts.predict ? await opts.predict(x, b) : await predict(model, x, opts.links?.(b));
      // [hits, mean loss] in one read
      const both = tf.tidy(() => tf.stack([
        tf.cast(tf.sum(tf.cast(tf.equal(tf.argMax(logits, 1), y), 'int32')), 'float32'),
        softmaxCrossEntropy(logits, y, false).loss,
      ]));
      logits.dispose();
      const read = await readFloats(both);
      both.dispose();
      correct += Math.round(read[0]!);
      lossSum += read[1]! * samples.length;
    } finally {
      tf.dispose([x, y]);
    }
  }
  return { correct, lossSum, samples: data.count };
}
