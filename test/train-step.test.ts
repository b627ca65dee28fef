/**
 * A whole training step of a small AlexNet on wasm (with splitnet's kernels)
 * against the same step on the cpu backend. Tolerance 1e-4 relative per
 * parameter gradient: the two backends sum thousands of float32 products in
 * different orders through eight layers, so each layer adds ~1e-6 of rounding.
 */
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { alexnet } from '../src/model/alexnet.js';
import { buildModel, disposeModel } from '../src/model/build.js';
import { Sgd } from '../src/model/sgd.js';
import { lossAndGrads } from '../src/model/engine.js';
import { trainStep } from '../src/parallel/single.js';
import { onBackend, pseudoRandom, relError, setupBackends } from './helpers/backends.js';

beforeAll(setupBackends);

async function stepOn(arch: 'd2l' | 'original') {
  const spec = arch === 'd2l'
    ? alexnet({ arch, width: 1 / 16, resolution: 67 })
    : alexnet({ arch, width: 1 / 16, resolution: 67, classes: 10 });
  const [c, h, w] = spec.input;
  const m = buildModel(spec, { seed: 3 });
  const x = tf.tensor4d(pseudoRandom(4 * h * w * c, 11).map((v) => (v + 1) / 2), [4, h, w, c]);
  const y = tf.tensor1d([0, 3, 7, 9], 'int32');
  const { loss, grads } = await lossAndGrads(m, x, y, { dropout: { seed: 3, step: 0, firstSample: 0 } });
  const out = { loss: (await loss.data())[0]!, grads: {} as Record<string, Float32Array> };
  for (const [name, g] of grads) out.grads[name] = (await g.data()).slice() as Float32Array;
  tf.dispose([x, y, loss, ...grads.values()]);
  disposeModel(m);
  return out;
}

describe('a training step on wasm', () => {
  for (const arch of ['d2l', 'original'] as const) {
    it(`matches the cpu backend: ${arch}, width 1/16, 67×67, batch 4 (loss and every gradient)`, async () => {
      const wasm = await onBackend('wasm', () => stepOn(arch));
      const cpu = await onBackend('cpu', () => stepOn(arch));
      expect(Math.abs(wasm.loss - cpu.loss)).toBeLessThan(1e-5);
      expect(Object.keys(wasm.grads).sort()).toEqual(Object.keys(cpu.grads).sort());
      for (const [name, g] of Object.entries(wasm.grads)) {
        expect.soft(relError(g, cpu.grads[name]!), name).toBeLessThan(1e-4);
      }
    });
  }

  it('lowers the loss on a fixed batch and leaks no tensor', async () => {
    const spec = alexnet({ arch: 'd2l', width: 1 / 8, resolution: 67 });
    const m = buildModel(spec, { seed: 1 });
    const opt = new Sgd({ lr: 0.05, momentum: 0.9, weightDecay: 5e-4 });
    const x = tf.randomUniform([8, 67, 67, 1], 0, 1, 'float32', 2) as tf.Tensor4D;
    const y = tf.tensor1d([0, 1, 2, 3, 4, 5, 6, 7], 'int32');
    const losses: number[] = [];
    const live: number[] = [];
    for (let step = 0; step < 16; step++) {
      // no dropout: the same batch must be fitted, not regularized
      losses.push(await trainStep(m, opt, x, y));
      live.push(tf.memory().numTensors);
    }
    // A deep net at xavier init starts slowly: ~2.30 -> ~2.17 in 16 steps.
    expect(losses[15]!).toBeLessThan(losses[0]! * 0.97);
    for (let i = 1; i < 16; i++) expect(losses[i]!).toBeLessThanOrEqual(losses[i - 1]! + 1e-3);
    // after the first step creates the momentum buffers, the count stays flat
    expect(new Set(live.slice(1)).size).toBe(1);
    opt.dispose();
    disposeModel(m);
    tf.dispose([x, y]);
  });
});
