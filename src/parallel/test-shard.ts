import { SIDE, type LabeledImages } from '../data/fashion-mnist.js';

const PIXELS = SIDE * SIDE;

/** Part `part` of `parts` of the test set (replicas or rows evaluate their own part; the coordinator adds them up). */
export function testShard(t: LabeledImages, part: number, parts: number): LabeledImages {
  const n = t.count;
  const begin = Math.floor((part * n) / parts);
  const end = Math.floor(((part + 1) * n) / parts);
  return { ...t, count: end - begin, images: t.images.subarray(begin * PIXELS, end * PIXELS), labels: t.labels.subarray(begin, end) };
}
