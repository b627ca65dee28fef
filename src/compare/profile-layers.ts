/**
 * Per-layer compute time of one training step in this process: the input of
 * the step-time prediction (src/compare/predict.ts). The whole net (every
 * tower) runs here on a synthetic batch; each layer's forward and backward is
 * timed between the engine's per-layer hooks.
 */
import * as tf from '@tensorflow/tfjs';
import type { TrainConfig } from '../config/train.js';
import { specOf } from '../model/alexnet.js';
import { buildModel, disposeModel } from '../model/build.js';
import { lossAndGrads } from '../model/engine.js';
import { Sgd } from '../model/sgd.js';
import { shapesOf } from '../model/shapes.js';
import type { LayerTiming } from './types.js';

/**
 * Steps timed after WARMUP_STEPS untimed ones (kernels' first runs compile or
 * allocate, and V8 tiers up the engine's code over the first few); the
 * median of each layer is kept. Measured on 2 cores: with one untimed step
 * and three timed, the sum of the layers varied by ±15% between compare runs.
 */
const WARMUP_STEPS = 2;
const TIMED_STEPS = 5;

/**
 * Waits until the GPU has run everything asked of it so far: tfjs-webgpu
 * batches commands, so its pending encoder is submitted first, then the
 * device's queue is awaited. (Reading a fresh small tensor would not do: its
 * values stay on the host and come back at once.)
 */
export async function gpuIdle(): Promise<void> {
  const b = tf.backend() as unknown as {
    ensureCommandEncoderReady?: () => void; endComputePassEncoder?: () => void; submitQueue?: () => void; device?: GPUDevice;
  };
  // The order tfjs-webgpu itself uses before a readback: an encoder, its pass ended, submitted.
  b.ensureCommandEncoderReady?.();
  b.endComputePassEncoder?.();
  b.submitQueue?.();
  await b.device?.queue.onSubmittedWorkDone();
}

/** The middle value (the mean of the two middle ones for an even count). */
export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

export interface LayerProfile {
  layers: LayerTiming[];
  /** the SGD update of every parameter, ms (median) */
  optimizerMs: number;
}

/** Times every layer of `cfg`'s net at `cfg.batch` (or `batch`). */
export async function profileLayers(cfg: TrainConfig, batch = cfg.batch): Promise<LayerProfile> {
  const spec = specOf(cfg);
  const model = buildModel(spec, { seed: cfg.seed });
  const [c, h, w] = spec.input;
  const x = tf.randomUniform([batch, h, w, c], 0, 1, 'float32', cfg.seed) as tf.Tensor4D;
  const y = tf.tensor1d(Array.from({ length: batch }, (_, i) => i % spec.classes), 'int32');
  // Backends that compute asynchronously (WebGPU) are made to finish each layer before its time is taken.
  const synchronous = ['wasm', 'cpu', 'tensorflow'].includes(tf.getBackend());
  const finish = synchronous ? async () => {} : gpuIdle;
  const opt = new Sgd({ lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
  const optimizerMs: number[] = [];
  const times = new Map<string, { forward: number[]; backward: number[] }>(spec.layers.map((l) => [l.name, { forward: [], backward: [] }]));
  try {
    for (let step = 0; step < WARMUP_STEPS + TIMED_STEPS; step++) {
      let last = performance.now();
      const onLayer = async (layer: string, phase: 'forward' | 'backward') => {
        await finish();
        const now = performance.now();
        if (step >= WARMUP_STEPS) times.get(layer)![phase].push(now - last);
        last = now;
      };
      const { loss, grads } = await lossAndGrads(model, x, y, { dropout: { seed: cfg.seed, step, firstSample: 0 }, onLayer });
      const u0 = performance.now();
      opt.apply(model.params, grads);
      await finish();
      if (step >= WARMUP_STEPS) optimizerMs.push(performance.now() - u0);
      tf.dispose([loss, ...grads.values()]);
    }
  } finally {
    tf.dispose([x, y]);
    disposeModel(model);
    opt.dispose();
  }
  const shapes = shapesOf(spec);
  const layers = spec.layers.map((layer, i) => {
    const t = times.get(layer.name)!;
    return {
      name: layer.name,
      forwardMs: t.forward.length ? median(t.forward) : 0,
      // layers before the first weighted one have no backward (the image needs no gradient)
      backwardMs: t.backward.length ? median(t.backward) : 0,
      params: shapes[i]!.params,
      outputFloats: shapes[i]!.outputShape.reduce((a, b) => a * b, 1),
    };
  });
  return { layers, optimizerMs: median(optimizerMs) };
}
