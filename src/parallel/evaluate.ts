import * as tf from '@tensorflow/tfjs';
import { makeBatch, type BatchOptions } from '../data/batches.js';
import type { LabeledImages } from '../data/fashion-mnist.js';
import type { Model } from '../model/build.js';
import { forward } from '../model/forward.js';
import { crossEntropy } from '../model/step.js';

export interface Evaluation {
  accuracy: number;
  loss: number;
  samples: number;
}

/**
 * Accuracy and mean loss over the first `limit` samples (0: all), without
 * dropout. `logits` replaces the forward pass (a model-parallel tower
 * exchanges with the other tower under a key per batch).
 */
export function evaluate(
  model: Model, data: LabeledImages,
  opts: BatchOptions & { batch: number; limit: number; logits?: (x: tf.Tensor4D, batchIndex: number) => tf.Tensor2D },
): Evaluation {
  const n = opts.limit > 0 ? Math.min(opts.limit, data.count) : data.count;
  let correct = 0;
  let lossSum = 0;
  for (let start = 0, b = 0; start < n; start += opts.batch, b++) {
    const samples = Array.from({ length: Math.min(opts.batch, n - start) }, (_, i) => start + i);
    const { x, y } = makeBatch(data, samples, { resolution: opts.resolution, channels: opts.channels });
    const [hits, loss] = tf.tidy(() => {
      const logits = opts.logits ? opts.logits(x, b) : forward(model, x);
      const hit = tf.sum(tf.cast(tf.equal(tf.argMax(logits, 1), y), 'int32'));
      return [hit.dataSync()[0]!, crossEntropy(logits, y).dataSync()[0]!];
    });
    correct += hits;
    lossSum += loss * samples.length;
    tf.dispose([x, y]);
  }
  return { accuracy: correct / n, loss: lossSum / n, samples: n };
}
