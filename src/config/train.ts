import { z } from 'zod';
import { UsageError } from '../errors.js';
import { describeIssue } from './describe-issue.js';
import { ARCHS, BACKEND_CHOICES, RESIZE_MAPPINGS, WIRE_TYPES } from './choices.js';

/**
 * Everything that defines a training run. It is saved inside every checkpoint
 * and a resumed run continues with it. Unknown keys and wrong types are
 * refused with the key's name.
 */
export const TrainConfigSchema = z.strictObject({
  arch: z.enum(ARCHS),
  /** weights: absent = the architecture's own (the paper's N(0, 0.01) for original, Xavier for d2l) */
  init: z.enum(['paper-normal', 'xavier-uniform']).optional(),
  width: z.number().positive().max(16),
  /**
   * towers the original net's kernels are divided between (the 2012 split
   * generalised); absent = the architecture's own: 2 for original, 1 for d2l.
   * A config saved before this key existed resumes with that default.
   */
  towers: z.number().int().min(1).max(64).optional(),
  resolution: z.number().int().min(1),
  channels: z.union([z.literal(1), z.literal(3)]),
  /** global batch */
  batch: z.number().int().min(1),
  epochs: z.number().int().min(1),
  lr: z.number().positive(),
  momentum: z.number().min(0).max(0.999),
  weightDecay: z.number().min(0),
  /** the learning rate is multiplied by lrDecay at the start of each of these epochs (0-based) */
  lrDecayEpochs: z.array(z.number().int().min(1)),
  lrDecay: z.number().positive().max(1),
  seed: z.number().int().min(0).max(2 ** 31 - 1),
  augment: z.boolean(),
  /** use only the first N training / test samples (0: all) */
  trainSamples: z.number().int().min(0),
  testSamples: z.number().int().min(0),
  /** 'fashion-mnist' or 'synthetic' (generated, for benchmarks) */
  data: z.enum(['fashion-mnist', 'synthetic']),
  dataDir: z.string().optional(),
  checkpointEvery: z.number().int().min(0),
  evalBatch: z.number().int().min(1),
  backend: z.enum(BACKEND_CHOICES),
  /**
   * WebGPU's adapter: 'software' (llvmpipe, only when asked for), 'hardware',
   * an index or a name fragment. Unset: a worker opens its configured device,
   * one process the first hardware adapter.
   */
  adapter: z.string().trim().min(1).optional(),
  /**
   * How images are resized from 28 px: 'half-pixel' centres, as torchvision's
   * Resize (d2l) and PyTorch's interpolate(align_corners=False) map them;
   * 'legacy' is tf.image.resizeBilinear's default mapping, which runs saved
   * before this key existed were trained with (and resume with).
   */
  resize: z.enum(RESIZE_MAPPINGS),
  /**
   * How tensors travel between workers: 'bf16' halves the bytes of gradient
   * buckets, the weight all-gather and the split's activations and their
   * gradients (wire/bf16.ts); master weights and momentum stay float32. It
   * changes the run's numbers, so a resume keeps it. A config saved before
   * this key existed sent float32, and resumes so (the default).
   */
  wire: z.enum(WIRE_TYPES).default('fp32'),
});

export type TrainConfig = z.infer<typeof TrainConfigSchema>;

/**
 * The default run: what `npm start` trains on a 2-core machine in a few
 * minutes. Momentum 0.9 because with d2l's plain SGD a narrow AlexNet sits at
 * chance for the whole first epoch.
 */
export const CPU_DEFAULTS: TrainConfig = {
  arch: 'd2l',
  width: 0.25,
  resolution: 67,
  channels: 1,
  batch: 64,
  epochs: 1,
  lr: 0.02,
  momentum: 0.9,
  weightDecay: 5e-4,
  lrDecayEpochs: [],
  lrDecay: 0.1,
  seed: 1,
  augment: false,
  trainSamples: 0,
  testSamples: 0,
  data: 'fashion-mnist',
  checkpointEvery: 200,
  evalBatch: 256,
  backend: 'auto',
  resize: 'half-pixel',
  wire: 'fp32',
};

/** The seed's full recipe (d2l §8.1), for a GPU box. */
export const D2L_RECIPE: Partial<TrainConfig> = {
  arch: 'd2l', width: 1, resolution: 224, batch: 128, epochs: 10, lr: 0.01, momentum: 0, weightDecay: 0,
};

/** Validates a whole config; the message names the first bad key. */
export function parseTrainConfig(raw: unknown, where = 'config'): TrainConfig {
  const r = TrainConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  throw new UsageError(describeIssue(where, r.error.issues[0]!));
}

/** Learning rate in an epoch: lr × lrDecay^(number of decay epochs reached). */
export function learningRate(cfg: TrainConfig, epoch: number): number {
  return cfg.lr * cfg.lrDecay ** cfg.lrDecayEpochs.filter((e) => epoch >= e).length;
}
