import { findDataDir, loadSplit } from './fashion-mnist.js';
import type { TrainConfig } from '../config/train.js';

/** Samples a run uses of each split, and how many the data set has. */
export interface RunDataCounts {
  train: number;
  test: number;
  /** what the data set holds (train/test above are these, cut to --train-samples / --test-samples) */
  available: { train: number; test: number };
}

/**
 * How many training and test samples a run has, without keeping the images:
 * the coordinator needs the step count; the workers load the data. Reading
 * both splits whole (images against labels, sizes against headers, label
 * range: ~0.3 s) checks that the data set is there and sound before any
 * worker starts: a bad file is bad input here, not a worker's failure.
 */
export function loadRunDataCounts(cfg: TrainConfig): RunDataCounts {
  const limit = (n: number, l: number) => (l > 0 ? Math.min(n, l) : n);
  if (cfg.data === 'synthetic') {
    // Generated on demand: as many as asked for.
    const train = cfg.trainSamples || 6_000;
    const test = cfg.testSamples || 1_000;
    return { train, test, available: { train, test } };
  }
  const dir = findDataDir(cfg.dataDir);
  const available = { train: loadSplit(dir, 'train').count, test: loadSplit(dir, 't10k').count };
  return { train: limit(available.train, cfg.trainSamples), test: limit(available.test, cfg.testSamples), available };
}
