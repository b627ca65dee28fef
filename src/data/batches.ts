import * as tf from '@tensorflow/tfjs';
import { keyHash, uniformAt } from '../model/keyed-random.js';
import { SIDE, type LabeledImages } from './fashion-mnist.js';
import type { ResizeMapping } from '../config/choices.js';

/** Fashion-MNIST's training-set pixel mean and standard deviation (of x/255). */
export const PIXEL_MEAN = 0.286;
export const PIXEL_STD = 0.353;

export interface BatchOptions {
  /** model input side: images are resized from 28 to this (bilinear) */
  resolution: number;
  /**
   * 'half-pixel': output pixel i samples input (i + 0.5)·28/R − 0.5, as
   * torchvision's Resize (d2l's) does; 'legacy': i·28/R, tfjs's default
   */
  resize: ResizeMapping;
  /** 1, or 3 (the grey channel repeated) */
  channels: number;
  /** random crop (pad 2, crop 28) and horizontal flip, keyed on (seed, epoch, sample) */
  augment?: { seed: number; epoch: number };
}

/**
 * Sample order of an epoch: a Fisher-Yates shuffle driven by keyed uniforms,
 * so (seed, epoch) alone fixes it: a resumed run or another process gets the
 * same order without replaying anything.
 */
export function epochOrder(count: number, seed: number, epoch: number): Uint32Array {
  const order = new Uint32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  const stream = keyHash(seed, `shuffle@${epoch}`);
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(uniformAt(stream, i) * (i + 1));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

const PAD = 2;

/** Copies image `src` into `out` (28×28 floats in [0,1]), cropped/flipped when augmenting. */
function writeImage(data: LabeledImages, src: number, out: Float32Array, at: number, aug?: { stream: number }): void {
  const base = src * SIDE * SIDE;
  if (aug === undefined) {
    for (let p = 0; p < SIDE * SIDE; p++) out[at + p] = data.images[base + p]! / 255;
    return;
  }
  // Shift by (dy, dx) in [-2, 2] (a crop of the zero-padded image) and maybe mirror.
  const dy = Math.floor(uniformAt(aug.stream, 3 * src) * (2 * PAD + 1)) - PAD;
  const dx = Math.floor(uniformAt(aug.stream, 3 * src + 1) * (2 * PAD + 1)) - PAD;
  const flip = uniformAt(aug.stream, 3 * src + 2) < 0.5;
  for (let y = 0; y < SIDE; y++) {
    for (let x = 0; x < SIDE; x++) {
      const sy = y + dy;
      const sxRaw = x + dx;
      const sx = flip ? SIDE - 1 - sxRaw : sxRaw;
      const inside = sy >= 0 && sy < SIDE && sxRaw >= 0 && sxRaw < SIDE;
      out[at + y * SIDE + x] = inside ? data.images[base + sy * SIDE + sx]! / 255 : 0;
    }
  }
}

/**
 * The model input for the given samples: x [B, R, R, C] normalized, labels [B]
 * int32. Gathering and augmentation are plain loops over bytes; the resize and
 * normalization run on the compute backend.
 */
export function makeBatch(data: LabeledImages, samples: ArrayLike<number>, opts: BatchOptions): { x: tf.Tensor4D; y: tf.Tensor1D } {
  const b = samples.length;
  const pixels = new Float32Array(b * SIDE * SIDE);
  const labels = new Int32Array(b);
  const aug = opts.augment === undefined ? undefined : { stream: keyHash(opts.augment.seed, `augment@${opts.augment.epoch}`) };
  for (let i = 0; i < b; i++) {
    const s = samples[i]!;
    if (s < 0 || s >= data.count) throw new Error(`makeBatch: sample ${s} outside 0..${data.count - 1}`);
    writeImage(data, s, pixels, i * SIDE * SIDE, aug);
    labels[i] = data.labels[s]!;
  }
  const x = tf.tidy(() => {
    let t: tf.Tensor4D = tf.tensor4d(pixels, [b, SIDE, SIDE, 1]);
    if (opts.resolution !== SIDE) t = tf.image.resizeBilinear(t, [opts.resolution, opts.resolution], false, opts.resize === 'half-pixel');
    t = tf.div(tf.sub(t, PIXEL_MEAN), PIXEL_STD);
    // Grey repeated to C channels by a broadcast product with ones (exact): wasm's Tile is a
    // per-element loop, ~100 ms for [64, 99, 99, 1] -> 3 channels against ~8 ms for this.
    return opts.channels === 1 ? t : tf.mul(t, tf.ones([1, 1, 1, opts.channels])) as tf.Tensor4D;
  });
  return { x, y: tf.tensor1d(labels, 'int32') };
}
