/**
 * No training step, evaluation, checkpoint or state transfer reads a backend
 * tensor synchronously: with tfjs's synchronous read made to throw (as it
 * throws for GPU data on WebGPU in Node), single, data-parallel and
 * model-parallel training all run to the end, evaluation and checkpoints
 * included. The workers get the same trap through a preloaded module.
 */
import * as tf from '@tensorflow/tfjs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { setupBackends } from './helpers/backends.js';
import { localCluster } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const TRAP = fileURLToPath(new URL('./fixtures/forbid-sync-read.mjs', import.meta.url));
const workerEnv = { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${TRAP}`.trim() };
const CONFIG: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
  trainSamples: 16, testSamples: 8, evalBatch: 8, augment: true, checkpointEvery: 1,
};
const quiet = { log: () => {}, progress: false } as const;

describe('training with synchronous reads forbidden', () => {
  const engine = tf.engine();
  const readSync = engine.readSync;
  beforeAll(async () => {
    await setupBackends();
    engine.readSync = () => { throw new Error('synchronous read of a backend tensor'); };
  });
  afterAll(() => { engine.readSync = readSync; });

  it('the trap works: dataSync throws in this process and in a process that preloads it', () => {
    expect(() => tf.scalar(1).dataSync()).toThrow('synchronous read of a backend tensor');
    const probe = "import * as tf from '@tensorflow/tfjs'; try { tf.scalar(1).dataSync(); console.log('read'); } catch (e) { console.log('refused: ' + e.message); }";
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', probe], { env: { ...process.env, ...workerEnv }, encoding: 'utf8' });
    expect(out).toContain('refused: synchronous read of a backend tensor');
  });

  it('single mode: 2 steps, evaluation and checkpoints', async () => {
    const r = await train({ config: CONFIG, outDir: tempDir(), ...quiet });
    expect(r.finished).toBe(true);
    expect(r.losses).toHaveLength(2);
    expect(r.epochs[0]!.samples).toBe(8);
  });

  it('data-parallel over 2 workers: 2 steps, evaluation and checkpoints', async () => {
    const cluster = await localCluster(2, { checksumEvery: 1 });
    const r = await train({ config: CONFIG, outDir: tempDir(), mode: 'data', cluster, workerEnv, ...quiet });
    expect(r.finished).toBe(true);
    expect(r.losses).toHaveLength(2);
    expect(r.epochs[0]!.samples).toBe(8);
  });

  it('model-parallel over 2 workers, 2 micro-batches: 2 steps, evaluation and checkpoints', async () => {
    const cluster = await localCluster(2);
    const r = await train({
      config: { ...CONFIG, arch: 'original', channels: 3, init: 'xavier-uniform' }, outDir: tempDir(), mode: 'model', microBatches: 2,
      cluster, workerEnv, ...quiet,
    });
    expect(r.finished).toBe(true);
    expect(r.losses).toHaveLength(2);
    expect(r.epochs[0]!.samples).toBe(8);
  });
});
