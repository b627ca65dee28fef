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
