/**
 * What a worker's step costs besides its layers, timed in this process
 * before any mode runs: the step-time model (predict.ts) adds these to the
 * layers' compute. Found by reading the traces of 2-worker runs, where the
 * layer spans of a step sum to well under its compute:
 *
 *   input   building the step's batch (gather, resize, normalise: makeBatch):
 *           each worker builds its own, the whole batch in the split (every
 *           tower sees every image), its shard in data-parallel;
 *   move    a tensor's bytes between the backend and the wire, on the main
 *           thread: at each cross link of the split the own part is read
 *           out, the peer's part made a tensor and both concatenated
 *           (forward), the gradient split, read out, and the peer's added
 *           (backward); per float moved;
 *   ring    data-parallel's host side: each gradient copied out of the
 *           backend, a received chunk added in, the new weights written back
 *           into the model; per parameter.
 *
 * Each is the median of a few repetitions, after one untimed run.
 */
import type { StepOverheads } from './types.js';
import * as tf from '@tensorflow/tfjs';
import type { TrainConfig } from '../config/train.js';
import { TrainBatches } from '../data/run-data.js';
import { syntheticImages } from '../data/synthetic.js';
import { readFloats } from '../kernels/read.js';
import { median } from './profile-layers.js';

const REPEATS = 5;


async function timeMs(run: () => Promise<void> | void): Promise<number> {
  await run(); // first run: compiles, allocates
  const ms: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const t0 = performance.now();
    await run();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

/** The input pipeline on generated images (the same resize and normalisation as Fashion-MNIST's). */
function inputTimer(cfg: TrainConfig, batch: number): () => void {
  const data = { train: syntheticImages('train', Math.max(batch, 64), cfg.seed), test: syntheticImages('t10k', 8, cfg.seed), source: 'synthetic' };
  const batches = new TrainBatches(data, { ...cfg, batch });
  return () => {
    const { x, y } = batches.batch(0, 0);
    tf.dispose([x, y]);
  };
}

/**
 * One cross link's host work for a [batch, floats/2] part, both ways, as
 * model-parallel.ts does it; per float of the gathered tensor.
 */
async function moveMsPerFloat(batch: number): Promise<number> {
  const half = 4096;
  const own = tf.randomUniform([batch, half]);
  const grad = tf.randomUniform([batch, 2 * half]);
  try {
    const ms = await timeMs(async () => {
      const theirs = tf.tensor(await readFloats(own), own.shape); // read out, and the peer's part made a tensor
      const all = tf.concat([own, theirs], 1);
      const [d0, d1] = tf.split(grad, 2, 1) as [tf.Tensor, tf.Tensor];
      const back = tf.tensor(await readFloats(d1), d1.shape);
      const sum = tf.add(d0, back);
      await readFloats(sum); // the next layer reads it: finished
      tf.dispose([theirs, all, d0, d1, back, sum]);
    });
    return ms / (batch * 2 * half);
  } finally {
    tf.dispose([own, grad]);
  }
}

/** Data-parallel's host side for one parameter tensor, per parameter (copy out, add a chunk, write back). */
async function ringMsPerParam(): Promise<number> {
  const size = 2 ** 20;
  const v = tf.variable(tf.randomUniform([size]));
  const g = tf.randomUniform([size]);
  const flat = new Float32Array(size);
  const chunk = new Float32Array(size / 2);
  try {
    const ms = await timeMs(async () => {
      flat.set(await readFloats(g));
      for (let i = 0; i < chunk.length; i++) flat[i]! += chunk[i]!;
      const t = tf.tensor(flat, [size]);
      v.assign(t);
      t.dispose();
    });
    return ms / size;
  } finally {
    tf.dispose([v, g]);
  }
}

export async function profileOverheads(cfg: TrainConfig, batch: number, halfBatch: number): Promise<StepOverheads> {
  return {
    inputMs: await timeMs(inputTimer(cfg, batch)),
    inputMsAtHalfBatch: await timeMs(inputTimer(cfg, halfBatch)),
    moveMsPerFloat: await moveMsPerFloat(batch),
    ringMsPerParam: await ringMsPerParam(),
  };
}
