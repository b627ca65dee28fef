import { keyHash, uniformAt } from '../model/keyed-random.js';
import { SIDE, type LabeledImages, type Split } from './fashion-mnist.js';

/**
 * Stand-in images for benchmarks and tests: each class is a bright bar at its
 * own position plus keyed noise, so a net can learn it, and nothing is read
 * from disk.
 */
export function syntheticImages(split: Split, count: number, seed: number): LabeledImages {
  const images = new Uint8Array(count * SIDE * SIDE);
  const labels = new Uint8Array(count);
  const stream = keyHash(seed, `synthetic/${split}`);
  for (let i = 0; i < count; i++) {
    const label = Math.floor(uniformAt(stream, 2 * i) * 10);
    labels[i] = label;
    const base = i * SIDE * SIDE;
    for (let p = 0; p < SIDE * SIDE; p++) {
      const row = Math.floor(p / SIDE);
      const bar = row >= 2 + label * 2.4 && row < 5 + label * 2.4 ? 160 : 0;
      images[base + p] = Math.min(255, bar + Math.floor(uniformAt(stream, (i + 1) * 1024 + p) * 96));
    }
  }
  return { split, count, images, labels };
}
