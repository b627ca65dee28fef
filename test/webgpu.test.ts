/**
 * The WebGPU backend (Dawn) on Mesa's llvmpipe, the software adapter CI has,
 * against wasm: each layer's forward and backward, a few training steps of a
 * tiny AlexNet, and both parallel modes with two workers on WebGPU.
 *
 * Tolerances, measured here and then given a margin: WebGPU's shaders sum in
 * other orders than XNNPACK (tiled convolutions and matmuls, parallel
 * reductions), so each value differs by float32 rounding, ~1e-7 relative per
 * sum. Layers: 1e-5 relative to the largest value (measured ≤ 3e-7).
 * Training: 1e-4 on weights after 4 SGD steps with momentum (rounding
 * carried through the steps; measured ≤ 3e-6); a wrong kernel is off by
 * orders of magnitude more.
 *
 * llvmpipe is slow (a shader is compiled per new shape): the nets are tiny.
 */
import * as tf from '@tensorflow/tfjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/backend.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { specOf } from '../src/model/alexnet.js';
import { buildModel, disposeModel } from '../src/model/build.js';
import { layerBackward, layerForward } from '../src/model/layers.js';
import type { LayerSpec } from '../src/model/spec.js';
import { train } from '../src/run/loop.js';
import { closeWebGpu } from '../src/webgpu.js';
import { onBackend, pseudoRandom, relError } from './helpers/backends.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const LAYER_TOLERANCE = 1e-5;
const TRAIN_TOLERANCE = 1e-4;

const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

beforeAll(async () => {
  await initBackend('wasm');
  const gpu = await initBackend('webgpu', { kind: 'software' });
  expect(gpu.adapter?.software).toBe(true);
  await tf.setBackend('wasm');
});
afterAll(() => { closeWebGpu(); });

/** Every output of one layer's forward and backward, as plain arrays, on `backend`. */
async function layerOutputs(backend: 'wasm' | 'webgpu', layer: LayerSpec, xShape: number[], kernelShape?: number[]) {
  return onBackend(backend, async () => {
    const x = tf.tensor(pseudoRandom(xShape.reduce((a, b) => a * b), 1), xShape);
    const params = kernelShape && {
      kernel: tf.tensor(pseudoRandom(kernelShape.reduce((a, b) => a * b), 2).map((v) => v * 0.3), kernelShape),
      bias: tf.tensor(pseudoRandom(kernelShape.at(-1)!, 3).map((v) => v * 0.1)),
    };
    const { y } = layerForward(layer, x, params, undefined);
    const dy = tf.tensor(pseudoRandom(y.size, 4), y.shape);
    const g = layerBackward(layer, { x, y }, dy, params, true);
    const read = async (t: tf.Tensor | undefined) => (t === undefined ? undefined : Float32Array.from(await t.data()));
    const out = { y: await read(y), dx: await read(g.dx), kernel: await read(g.kernel), bias: await read(g.bias) };
    tf.dispose([x, y, dy, g.dx, g.kernel, g.bias, params?.kernel, params?.bias].filter((t): t is tf.Tensor => t !== undefined));
    return out;
  });
}

const LAYERS: { name: string; layer: LayerSpec; x: number[]; kernel?: number[] }[] = [
  { name: 'conv 5×5 stride 2 + bias + ReLU', layer: { kind: 'conv', name: 'conv', units: 8, kernel: 5, stride: 2, pad: 2, link: 'local', relu: true, biasInit: 0 }, x: [2, 13, 13, 3], kernel: [5, 5, 3, 8] },
  { name: 'conv 3×3 stride 1, no ReLU', layer: { kind: 'conv', name: 'conv', units: 6, kernel: 3, stride: 1, pad: 1, link: 'local', relu: false, biasInit: 0 }, x: [2, 9, 9, 4], kernel: [3, 3, 4, 6] },
  { name: 'local response normalization', layer: { kind: 'lrn', name: 'lrn', radius: 2, k: 2, alpha: 1e-4, beta: 0.75 }, x: [2, 7, 7, 8] },
  { name: 'max pool 3×3 stride 2', layer: { kind: 'maxpool', name: 'pool', size: 3, stride: 2 }, x: [2, 11, 11, 5] },
  { name: 'dense + bias + ReLU', layer: { kind: 'dense', name: 'fc', units: 24, link: 'local', relu: true, biasInit: 0 }, x: [6, 40], kernel: [40, 24] },
];

describe('WebGPU on the software adapter', () => {
  for (const { name, layer, x, kernel } of LAYERS) {
    it(`${name}: output and gradients match wasm (relative error < ${LAYER_TOLERANCE})`, async () => {
      const want = await layerOutputs('wasm', layer, x, kernel);
      const got = await layerOutputs('webgpu', layer, x, kernel);
      for (const key of ['y', 'dx', 'kernel', 'bias'] as const) {
        expect(got[key] === undefined, key).toBe(want[key] === undefined);
        if (want[key] === undefined) continue;
        const err = relError(got[key]!, want[key]!);
        console.log(`${name} ${key}: ${err.toExponential(2)} (max |value| ${Math.max(...want[key]!.map(Math.abs)).toExponential(2)})`);
        expect(err, key).toBeLessThan(LAYER_TOLERANCE);
      }
    });
  }

  const CONFIG: TrainConfig = {
    ...CPU_DEFAULTS, data: 'synthetic', width: 1 / 16, resolution: 67, batch: 8, epochs: 1,
    trainSamples: 32, testSamples: 16, lr: 0.02, momentum: 0.9, weightDecay: 5e-4, checkpointEvery: 0,
  };
  const SPLIT: TrainConfig = { ...CONFIG, arch: 'original', channels: 3, init: 'xavier-uniform' };
  const quiet = { log: () => {}, progress: false } as const;

  /**
   * Worst relative error of the updates (final minus initial weights), not
   * of the weights: a few small steps barely move the weights, so comparing
   * weights would hide a wrong gradient behind the initial values.
   */
  function worstUpdateError(got: Map<string, Float32Array>, want: Map<string, Float32Array>, config: TrainConfig): number {
    const model = buildModel(specOf(config), { seed: config.seed });
    let worst = 0;
    for (const [name, w] of want) {
      const w0 = model.params.get(name)!.dataSync() as Float32Array; // the wasm backend: reads synchronously
      worst = Math.max(worst, relError(got.get(name)!.map((v, i) => v - w0[i]!), w.map((v, i) => v - w0[i]!)));
    }
    disposeModel(model);
    return worst;
  }

  it(`four SGD steps of a tiny AlexNet end with wasm's weights (relative error < ${TRAIN_TOLERANCE})`, async () => {
    const ref = await train({ config: { ...CONFIG, backend: 'wasm' }, outDir: tempDir(), ...quiet });
    const gpu = await train({ config: { ...CONFIG, backend: 'webgpu', adapter: 'software' }, outDir: tempDir(), ...quiet });
    expect(tf.getBackend()).toBe('webgpu');
    expect(gpu.losses.every(Number.isFinite)).toBe(true);
    expect(gpu.losses).toHaveLength(4);
    gpu.losses.forEach((l, i) => expect(l, `loss of step ${i}`).toBeCloseTo(ref.losses[i]!, 4));
    await tf.setBackend('wasm');
    const err = worstUpdateError(gpu.params, ref.params, CONFIG);
    console.log(`webgpu vs wasm after 4 steps: worst relative error of the weight updates ${err.toExponential(2)}`);
    expect(err).toBeLessThan(TRAIN_TOLERANCE);
    expect(gpu.epochs[0]!.accuracy).toBeCloseTo(ref.epochs[0]!.accuracy, 6);
  });

  for (const [mode, config] of [['data', CONFIG], ['model', SPLIT]] as const) {
    it(`${mode}-parallel with both workers on WebGPU (sharing the adapter) matches one process on wasm`, async () => {
      const ref = await train({ config: { ...config, backend: 'wasm' }, outDir: tempDir(), ...quiet });
      const cluster = await localCluster(2);
      const workers = cluster.workers.map((w) => ({ ...w, device: 'llvmpipe', shared: true }));
      const events: string[] = [];
      const r = await train({
        config: { ...config, backend: 'webgpu' }, outDir: tempDir(), mode, cluster: { ...cluster, workers }, workers, ...quiet,
        onEvent: spawned.watch(), log: (line: string) => events.push(line),
      });
      expect(r.finished).toBe(true);
      expect(r.mode).toBe(mode);
      for (const pid of spawned.pids) expect(alive(pid), `worker pid ${pid}`).toBe(false);
      expect(events.join('\n')).toMatch(/webgpu/);
      r.losses.forEach((l, i) => expect(l, `loss of step ${i}`).toBeCloseTo(ref.losses[i]!, 4));
      const err = worstUpdateError(r.params, ref.params, config);
      console.log(`${mode}-parallel on webgpu vs one process on wasm: worst relative error of the weight updates ${err.toExponential(2)}`);
      expect(err).toBeLessThan(TRAIN_TOLERANCE);
    });
  }
});
