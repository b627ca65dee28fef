import { findDataDir, FILES, dataFile } from './fashion-mnist.js';
import { parseIdx, readIdxBytes } from './idx.js';
import type { TrainConfig } from '../config/train.js';

/**
 * How many training and test samples a run has, without keeping the images:
 * the coordinator needs the step count; the workers load the data.
 */
export function loadRunDataCounts(cfg: TrainConfig): { train: number; test: number } {
  const limit = (n: number, l: number) => (l > 0 ? Math.min(n, l) : n);
  if (cfg.data === 'synthetic') return { train: cfg.trainSamples || 6_000, test: cfg.testSamples || 1_000 };
  const dir = findDataDir(cfg.dataDir);
  const count = (name: string) => parseIdx(name, readIdxBytes(dataFile(dir, name)!), 1).dims[0]!;
  return { train: limit(count(FILES.train.labels), cfg.trainSamples), test: limit(count(FILES.t10k.labels), cfg.testSamples) };
}
