/**
 * splitnet's composed wasm kernels against the cpu backend's reference kernels
 * and against numerical gradients. Tolerance: 1e-5 relative to the largest
 * entry. Both sides are float32 sums of at most a few thousand products in
 * different orders; their rounding differences stay around 1e-7 relative.
 */
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { onBackend, pseudoRandom, relError, setupBackends } from './helpers/backends.js';
import { planMatMul } from '../src/kernels/batch-matmul.js';
import { composedKernelSet } from '../src/kernels/register.js';

type Pad = 'same' | 'valid' | number;
interface ConvCase { x: [number, number, number, number]; w: [number, number, number, number]; stride: number; pad: Pad }

const CASES: ConvCase[] = [
  { x: [1, 5, 5, 1], w: [3, 3, 1, 1], stride: 1, pad: 'valid' },
  { x: [2, 9, 9, 3], w: [3, 3, 3, 4], stride: 1, pad: 'same' },
  { x: [3, 8, 7, 2], w: [3, 3, 2, 5], stride: 1, pad: 1 },
  { x: [1, 11, 11, 2], w: [5, 5, 2, 3], stride: 2, pad: 'valid' },
  { x: [2, 10, 7, 3], w: [3, 2, 3, 2], stride: 2, pad: 'same' },
  { x: [2, 13, 13, 1], w: [4, 4, 1, 3], stride: 2, pad: 2 },
  { x: [1, 23, 23, 1], w: [11, 11, 1, 5], stride: 4, pad: 1 },
  { x: [2, 27, 25, 3], w: [11, 11, 3, 4], stride: 4, pad: 'valid' },
  { x: [2, 15, 15, 2], w: [3, 3, 2, 2], stride: 4, pad: 'same' },
];

const name = (c: ConvCase) => `x[${c.x}] w[${c.w}] stride ${c.stride} pad ${c.pad}`;

/** Gradients of sum(conv(x, w) * r) w.r.t. x and w: r makes every output matter differently. */
function convGrads(c: ConvCase): { dx: Float32Array; dw: Float32Array; shapes: number[][] } {
  return tf.tidy(() => {
    const x = tf.tensor4d(pseudoRandom(c.x.reduce((a, b) => a * b), 1), c.x);
    const w = tf.tensor4d(pseudoRandom(c.w.reduce((a, b) => a * b), 2), c.w);
    const yShape = tf.conv2d(x, w, c.stride, c.pad).shape;
    const r = tf.tensor(pseudoRandom(yShape.reduce((a, b) => a * b), 3), yShape);
    const f = (xx: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(xx as tf.Tensor4D, ww as tf.Tensor4D, c.stride, c.pad), r));
    const [gx, gw] = tf.grads(f)([x, w]);
    return { dx: gx!.dataSync() as Float32Array, dw: gw!.dataSync() as Float32Array, shapes: [gx!.shape, gw!.shape] };
  });
}

beforeAll(setupBackends);

describe('Conv2DBackpropFilter and Conv2DBackpropInput on wasm (composed)', () => {
  it('are registered by initBackend', () => {
    expect(composedKernelSet('wasm')).toBe('all');
    expect(tf.getKernel('Conv2DBackpropFilter', 'wasm')).toBeDefined();
  });

  for (const c of CASES) {
    it(`match the cpu backend: ${name(c)}`, async () => {
      const wasm = await onBackend('wasm', () => convGrads(c));
      const cpu = await onBackend('cpu', () => convGrads(c));
      expect(wasm.shapes).toEqual([c.x, c.w]);
      expect(wasm.shapes).toEqual(cpu.shapes);
      expect(relError(wasm.dw, cpu.dw)).toBeLessThan(1e-5);
      expect(relError(wasm.dx, cpu.dx)).toBeLessThan(1e-5);
    });
  }

  it('match central differences on x[1,6,6,2] w[3,3,2,2] stride 2 pad same', async () => {
    const c: ConvCase = { x: [1, 6, 6, 2], w: [3, 3, 2, 2], stride: 2, pad: 'same' };
    const { dx, dw } = await onBackend('wasm', () => convGrads(c));
    // f is linear in each argument, so a central difference is exact up to
    // float32 rounding of f itself (|f| ~ 10, eps 1e-2 -> error ~1e-3).
    const numeric = (which: 'x' | 'w') => onBackend('wasm', () => {
      const xs = pseudoRandom(72, 1);
      const ws = pseudoRandom(36, 2);
      const out: number[] = [];
      const target = which === 'x' ? xs : ws;
      const f = () => tf.tidy(() => {
        const x = tf.tensor4d(xs, c.x);
        const w = tf.tensor4d(ws, c.w);
        const y = tf.conv2d(x, w, c.stride, c.pad);
        const r = tf.tensor(pseudoRandom(y.size, 3), y.shape);
        return tf.sum(tf.mul(y, r)).dataSync()[0]!;
      });
      const eps = 1e-2;
      for (let i = 0; i < target.length; i++) {
        const v = target[i]!;
        target[i] = v + eps; const up = f();
        target[i] = v - eps; const down = f();
        target[i] = v;
        out.push((up - down) / (2 * eps));
      }
      return out;
    });
    expect(relError(dx, await numeric('x'))).toBeLessThan(1e-3);
    expect(relError(dw, await numeric('w'))).toBeLessThan(1e-3);
  });

  it("throws when dataFormat is not 'NHWC'", async () => {
    await onBackend('wasm', () => {
      const x = tf.zeros([1, 2, 5, 5]) as tf.Tensor4D;
      const dy = tf.zeros([1, 2, 3, 3]) as tf.Tensor4D;
      expect(() => tf.engine().runKernel('Conv2DBackpropFilter', { x, dy }, {
        strides: 1, pad: 'valid', dataFormat: 'NCHW', dimRoundingMode: undefined, filterShape: [3, 3, 2, 2],
      } as never)).toThrow(/expected dataFormat 'NHWC', got 'NCHW'/);
      expect(() => tf.engine().runKernel('Conv2DBackpropInput', { dy, filter: tf.zeros([3, 3, 2, 2]) }, {
        strides: 1, pad: 'valid', dataFormat: 'NCHW', dimRoundingMode: undefined, inputShape: [1, 2, 5, 5],
      } as never)).toThrow(/expected dataFormat 'NHWC', got 'NCHW'/);
    });
  });

  it('leave no tensor behind', async () => {
    await onBackend('wasm', () => {
      const before = tf.memory().numTensors;
      const bytes = tf.memory().numBytes;
      convGrads(CASES[4]!);
      expect(tf.memory().numTensors).toBe(before);
      expect(tf.memory().numBytes).toBe(bytes);
    });
  });
});

describe('BatchMatMul on wasm (1×1 convolutions)', () => {
  const shapes: Array<[number, number, number]> = [[1, 1, 1], [3, 5, 7], [32, 40, 24], [2, 130, 3]];
  for (const [m, k, n] of shapes) {
    for (const [ta, tb] of [[false, false], [false, true], [true, false], [true, true]] as const) {
      it(`matches the cpu backend: [${m}×${k}]·[${k}×${n}] transposeA=${ta} transposeB=${tb}`, async () => {
        const run = () => tf.tidy(() => {
          const a = tf.tensor2d(pseudoRandom(m * k, 4), ta ? [k, m] : [m, k]);
          const b = tf.tensor2d(pseudoRandom(k * n, 5), tb ? [n, k] : [k, n]);
          const c = tf.matMul(a, b, ta, tb);
          return { shape: c.shape, data: c.dataSync() as Float32Array };
        });
        const wasm = await onBackend('wasm', run);
        const cpu = await onBackend('cpu', run);
        expect(wasm.shape).toEqual([m, n]);
        expect(relError(wasm.data, cpu.data)).toBeLessThan(1e-5);
      });
    }
  }

  it('keeps batched products (rank 3, batch 2) correct through tfjs kernel', async () => {
    const run = () => tf.tidy(() => {
      const a = tf.tensor3d(pseudoRandom(2 * 3 * 4, 6), [2, 3, 4]);
      const b = tf.tensor3d(pseudoRandom(2 * 4 * 5, 7), [2, 4, 5]);
      return tf.matMul(a, b).dataSync() as Float32Array;
    });
    expect(relError(await onBackend('wasm', run), await onBackend('cpu', run))).toBeLessThan(1e-5);
  });

  it('throws when the inner dimensions differ, naming both shapes', async () => {
    await onBackend('wasm', () => {
      const a = tf.zeros([3, 4]);
      const b = tf.zeros([5, 6]);
      expect(() => tf.engine().runKernel('BatchMatMul', { a, b }, { transposeA: true, transposeB: false } as never))
        .toThrow(/inner dimensions differ: op\(a\) is \[4, 3\], op\(b\) is \[5, 6\]/);
    });
  });

  it('plans the dense layer products so the big weight matrix is never packed', () => {
    // fc7 of d2l: x [32,4096], W [4096,4096], dy [32,4096]
    expect(planMatMul(32, 4096, 4096, false, false).cast).toBe('transposed'); // y = x·W
    expect(planMatMul(32, 4096, 4096, false, true).cast).toBe('transposed'); // dx = dy·Wᵀ: W is read in place
    expect(planMatMul(4096, 32, 4096, true, false).cast).toBe('direct'); // dW = xᵀ·dy: small filter dy
  });
});

describe('MaxPoolGrad on wasm (splitnet kernel)', () => {
  /** The gradient by its definition: each window's dy goes to the window's first maximum. */
  function byDefinition(x: Float32Array, [nb, h, w, c]: number[], dy: Float32Array, k: number, s: number): Float32Array {
    const oh = Math.floor((h! - k) / s) + 1;
    const ow = Math.floor((w! - k) / s) + 1;
    const dx = new Float32Array(x.length);
    for (let b = 0; b < nb!; b++) for (let i = 0; i < oh; i++) for (let j = 0; j < ow; j++) for (let ch = 0; ch < c!; ch++) {
      let best = -Infinity;
      let at = -1;
      for (let di = 0; di < k; di++) for (let dj = 0; dj < k; dj++) {
        const idx = ((b * h! + i * s + di) * w! + j * s + dj) * c! + ch;
        if (x[idx]! > best) { best = x[idx]!; at = idx; }
      }
      dx[at] = dx[at]! + dy[((b * oh + i) * ow + j) * c! + ch]!;
    }
    return dx;
  }

  it("matches the cpu backend with 'same' padding: windows clipped at every border", async () => {
    const shape: [number, number, number, number] = [2, 10, 9, 3];
    const xs = pseudoRandom(shape.reduce((a, b) => a * b), 21);
    const grad = (name: 'wasm' | 'cpu') => onBackend(name, async () => {
      const x = tf.tensor4d(xs, shape);
      const y = tf.maxPool(x, 3, 2, 'same');
      const dy = tf.tensor(pseudoRandom(y.size, 22), y.shape);
      const dx = tf.grad((v: tf.Tensor) => tf.maxPool(v as tf.Tensor4D, 3, 2, 'same'))(x, dy);
      const out = Float32Array.from(await dx.data());
      tf.dispose([x, y, dy, dx]);
      return out;
    });
    expect(relError(await grad('wasm'), await grad('cpu'))).toBeLessThan(1e-6);
  });

  // tfjs-backend-wasm's own kernel is 9–43% off on the first two shapes.
  for (const shape of [[1, 11, 11, 5], [2, 13, 13, 8], [2, 7, 7, 1]]) {
    it(`routes dy to each overlapping 3×3/2 window's maximum: x [${shape}]`, async () => {
      const xs = pseudoRandom(shape.reduce((a, b) => a * b), 11);
      const got = await onBackend('wasm', async () => {
        const x = tf.tensor4d(xs, shape as [number, number, number, number]);
        const y = tf.maxPool(x, 3, 2, 'valid');
        const dy = tf.tensor(pseudoRandom(y.size, 12), y.shape);
        const dx = tf.grad((v: tf.Tensor) => tf.maxPool(v as tf.Tensor4D, 3, 2, 'valid'))(x, dy);
        const out = { dx: await dx.data() as Float32Array, dy: await dy.data() as Float32Array };
        tf.dispose([x, y, dy, dx]);
        return out;
      });
      expect(relError(got.dx, byDefinition(xs, shape, got.dy, 3, 2))).toBeLessThan(1e-6);
    });
  }
});
