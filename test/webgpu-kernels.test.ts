/**
 * WebGPU's filter gradient as matrix products (src/kernels/conv2d-backprop-
 * filter-matmul.ts) on every convolution shape of both nets: kernel 11×11
 * stride 4 (pad 1 in d2l, 0 in the 2012 net), 5×5 pad 2, 3×3 pad 1, against
 * the definition (plain loops in float64) and against wasm's composed kernel,
 * on Mesa's llvmpipe. Channels and sides are small (llvmpipe compiles a
 * shader per shape); the strides, pads and kernel sizes are the nets' own.
 *
 * Tolerance 1e-5 relative to the largest value: the products sum B·OH·OW
 * terms in float32 (here ≤ 2·57·57, ~1e-7 relative rounding per term pair);
 * measured ≤ 1e-6. A wrong tap or stride is off by order 1.
 */
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/backend.js';
import { registeredWebGpuFilterGradient } from '../src/kernels/register.js';
import { closeWebGpu } from '../src/webgpu.js';
import { onBackend, pseudoRandom, relError } from './helpers/backends.js';

const TOLERANCE = 1e-5;

beforeAll(async () => {
  await initBackend('wasm');
  const gpu = await initBackend('webgpu', { kind: 'software' });
  expect(gpu.adapter?.software).toBe(true);
  expect(registeredWebGpuFilterGradient()).toBe('matmul');
  await tf.setBackend('wasm');
});
afterAll(() => { closeWebGpu(); });

/** dW by its definition: sum over b, oh, ow of x[b, oh·s+kh−p, ow·s+kw−p, ci] · dy[b, oh, ow, co], in float64. */
function filterGradient(x: Float32Array, xs: number[], dy: Float32Array, ys: number[], k: number, s: number, p: number): Float64Array {
  const [b, h, w, ci] = xs as [number, number, number, number];
  const [, oh, ow, co] = ys as [number, number, number, number];
  const dw = new Float64Array(k * k * ci * co);
  for (let n = 0; n < b; n++) for (let i = 0; i < oh; i++) for (let j = 0; j < ow; j++) {
    for (let r = 0; r < k; r++) for (let c = 0; c < k; c++) {
      const y = i * s + r - p;
      const z = j * s + c - p;
      if (y < 0 || y >= h || z < 0 || z >= w) continue;
      for (let a = 0; a < ci; a++) {
        const xv = x[((n * h + y) * w + z) * ci + a]!;
        for (let o = 0; o < co; o++) dw[((r * k + c) * ci + a) * co + o]! += xv * dy[((n * oh + i) * ow + j) * co + o]!;
      }
    }
  }
  return dw;
}

// [name, input side, in channels, out channels, kernel, stride, pad]: every conv of both nets.
const SHAPES: Array<[string, number, number, number, number, number, number]> = [
  ['d2l conv1 (11×11, stride 4, pad 1)', 67, 1, 6, 11, 4, 1],
  ['original conv1 (11×11, stride 4, pad 0)', 67, 3, 6, 11, 4, 0],
  ['conv2 (5×5, pad 2)', 13, 6, 8, 5, 1, 2],
  ['conv3–conv5 (3×3, pad 1)', 6, 8, 12, 3, 1, 1],
  // Ci ≥ 32: the taps as a batch of products (the other form of the kernel)
  ['conv3–conv5 at ≥ 32 channels (3×3, pad 1, per-tap products)', 5, 40, 12, 3, 1, 1],
  ['conv2 at ≥ 32 channels (5×5, pad 2, per-tap products)', 7, 32, 8, 5, 1, 2],
];

describe('WebGPU Conv2DBackpropFilter as matrix products', () => {
  for (const [name, side, ci, co, k, s, p] of SHAPES) {
    it(`${name}: matches the definition and wasm (relative error < ${TOLERANCE})`, async () => {
      const xs = [2, side, side, ci];
      const o = Math.floor((side + 2 * p - k) / s) + 1;
      const ys = [2, o, o, co];
      const x = pseudoRandom(xs.reduce((a, b) => a * b), 11);
      const dy = pseudoRandom(ys.reduce((a, b) => a * b), 12);
      const grad = (backend: 'wasm' | 'webgpu') => onBackend(backend, async () => {
        const pad = p === 0 ? 'valid' : [[0, 0], [p, p], [p, p], [0, 0]];
        const out = tf.engine().runKernel('Conv2DBackpropFilter', { x: tf.tensor(x, xs), dy: tf.tensor(dy, ys) },
          { strides: [s, s], pad, dataFormat: 'NHWC', dimRoundingMode: undefined, filterShape: [k, k, ci, co] } as never) as tf.Tensor;
        expect(out.shape).toEqual([k, k, ci, co]);
        const v = Float32Array.from(await out.data());
        out.dispose();
        return v;
      });
      const want = filterGradient(x, xs, dy, ys, k, s, p);
      const gpu = await grad('webgpu');
      expect(relError(gpu, want)).toBeLessThan(TOLERANCE);
      expect(relError(gpu, await grad('wasm'))).toBeLessThan(TOLERANCE);
    });
  }
});
