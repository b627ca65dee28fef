import * as tf from '@tensorflow/tfjs';
import { keyHash, uniformAt } from './keyed-random.js';

/**
 * Which randomness a forward pass uses. A unit's dropout decision is a pure
 * function of (seed, step, layer, sample's position in the global batch, unit's
 * index across all towers), so a model-parallel tower or a data-parallel shard
 * draws the same mask as the whole model in one process.
 */
export interface DropoutKey {
  seed: number;
  step: number;
  /** position in the global batch of this process's first sample (data-parallel shards) */
  firstSample: number;
}

/** [rows, units] of 0 or 1/(1-rate) (inverted dropout: no rescaling at test time). */
export function dropoutMask(
  key: DropoutKey,
  layer: string,
  rows: number,
  units: number,
  /** this part's units within the layer's: [firstUnit, firstUnit + units) of `total` (a tower's, or a shard's) */
  firstUnit: number,
  total: number,
  rate: number,
): tf.Tensor2D {
  const stream = keyHash(key.seed, `${layer}@${key.step}`);
  const keep = 1 / (1 - rate);
  const mask = new Float32Array(rows * units);
  for (let b = 0; b < rows; b++) {
    const base = (key.firstSample + b) * total + firstUnit;
    for (let j = 0; j < units; j++) mask[b * units + j] = uniformAt(stream, base + j) >= rate ? keep : 0;
  }
  return tf.tensor2d(mask, [rows, units]);
}
