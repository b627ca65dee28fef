import { findDataDir, FILES, dataFile } from './fashion-mnist.js';
import { parseIdx, readIdxBytes } from './idx.js';
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
 * the label files' headers also checks that the data set is there and whole
 * before anything starts.
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
  const count = (name: string) => {
    const path = dataFile(dir, name)!;
    return parseIdx(path, readIdxBytes(path), 1).dims[0]!;
  };
  const available = { train: count(FILES.train.labels), test: count(FILES.t10k.labels) };
  return { train: limit(available.train, cfg.trainSamples), test: limit(available.test, cfg.testSamples), available };
}
