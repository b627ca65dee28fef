/**
 * The single-device loop end to end on generated data: golden losses (a
 * regression guard, llm.c style), resume == never stopped, no tensor leak.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { tempDir } from './helpers/idx-files.js';

const TINY: TrainConfig = {
  ...CPU_DEFAULTS,
  backend: 'wasm',
  data: 'synthetic',
  width: 1 / 8,
  resolution: 67,
  batch: 16,
  epochs: 2,
  trainSamples: 64, // 4 steps per epoch
  testSamples: 32,
  lr: 0.02,
  augment: true,
  checkpointEvery: 0,
};

const quiet = { log: () => {}, progress: false } as const;

/**
 * Losses of the first 8 steps of TINY, recorded from this implementation on
 * the wasm backend. Tolerance 1e-4 absolute: the step is deterministic on one
 * machine (single-threaded XNNPACK), the slack only covers another CPU's SIMD
 * rounding; a real change to the math moves these by far more.
 */
const GOLDEN = JSON.parse(readFileSync(new URL('./golden/single-d2l-tiny.json', import.meta.url), 'utf8')) as { losses: number[] };

describe('the single-device training loop', () => {
  it('reproduces the golden per-step losses', async () => {
    const r = await train({ config: TINY, outDir: tempDir(), ...quiet });
    expect(r.finished).toBe(true);
    expect([r.mode, r.world]).toEqual(['single', 1]);
    expect(r.losses).toHaveLength(8);
    expect(r.stats).toHaveLength(8);
    r.losses.forEach((l, i) => expect(l, `step ${i}`).toBeCloseTo(GOLDEN.losses[i]!, 4));
    expect(r.epochs.map((e) => e.samples)).toEqual([32, 32]);
  });

  it('a run stopped after 3 steps and resumed ends with the weights of one that never stopped', async () => {
    const straight = await train({ config: TINY, outDir: tempDir(), ...quiet });
    const dir = tempDir();
    const first = await train({ config: TINY, outDir: dir, maxSteps: 3, ...quiet });
    expect(first.finished).toBe(false);
    expect(first.position).toEqual({ epoch: 0, step: 3, globalStep: 3 });
    // The resumed run takes its config from the checkpoint, not from here.
    const resumed = await train({ config: { ...TINY, lr: 99 }, outDir: dir, resume: true, ...quiet });
    expect(resumed.finished).toBe(true);
    expect([...first.losses, ...resumed.losses]).toEqual(straight.losses);
    for (const [name, w] of straight.params) expect(resumed.params.get(name), name).toEqual(w);
    // The interrupted epoch's train loss averages its 3 steps before the stop too (their sum is in the checkpoint).
    expect(resumed.epochs.map((e) => e.trainLoss)).toEqual(straight.epochs.map((e) => e.trainLoss));
    const lines = readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; trainLoss?: number });
    expect(lines.filter((l) => l.type === 'step')).toHaveLength(8);
    expect(lines.filter((l) => l.type === 'resume')).toHaveLength(1);
    expect(lines.filter((l) => l.type === 'epoch').map((l) => l.trainLoss)).toEqual(straight.epochs.map((e) => e.trainLoss));
  });

  it('leaves no tensor behind', async () => {
    const before = tf.memory().numTensors;
    await train({ config: { ...TINY, epochs: 1 }, outDir: tempDir(), ...quiet });
    expect(tf.memory().numTensors).toBe(before);
  });
});
