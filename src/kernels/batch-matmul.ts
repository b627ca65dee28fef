import {
  type BatchMatMulAttrs,
  type KernelBackend,
  type KernelFunc,
  type NamedAttrMap,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import { transpose2d } from './heap-ops.js';
import { KernelScope } from './kernel-scope.js';

/**
 * BatchMatMul for one matrix pair as a 1×1 convolution on the backend's fast
 * Conv2D. Why: wasm's BatchMatMul runs XNNPACK only when neither operand is
 * transposed; the two products a dense layer's backward pass needs
 * (dy·Wᵀ and xᵀ·dy) fall to a scalar loop at ~1 GFLOP/s.
 *
 * Even the untransposed product is faster this way for a dense layer's forward
 * pass: tfjs's XNNPACK path repacks the [K,N] weights on every call (~8 ns an
 * element), while a blocked transpose costs ~4 ns and then packs only the
 * small activation.
 *
 * A 1×1 convolution of input I [1,1,P,Q] with filter F [1,1,Q,R] is the GEMM
 * I·F -> [P,R]. It reads I in place but repacks F on every call (weights change
 * every step), so the big operand should be I and the small one F. For
 * C = op(A)·op(B) there are two ways to cast it:
 *   direct:     I = op(A) [M,K],  F = op(B) [K,N]          -> C [M,N]
 *   transposed: I = op(B)ᵀ [N,K], F = op(A)ᵀ [K,M]          -> Cᵀ [N,M], transposed back
 * An operand already stored in the needed order costs nothing; otherwise it
 * costs a transpose. We pick the cheaper cast by counting element moves.
 */

// Relative costs per element, measured on wasm (one thread): a blocked JS
// transpose ~4 ns, XNNPACK packing a filter from HWIO ~8 ns.
const TRANSPOSE_COST = 1;
const PACK_COST = 2;

export interface MatMulPlan {
  cast: 'direct' | 'transposed';
  cost: number;
}

/** Chooses the cast for C[M,N] = op(A)[M,K] · op(B)[K,N]. */
export function planMatMul(m: number, k: number, n: number, transposeA: boolean, transposeB: boolean): MatMulPlan {
  const direct =
    (transposeA ? TRANSPOSE_COST * m * k : 0) + // I = op(A) row-major needs A untransposed
    (transposeB ? TRANSPOSE_COST * k * n : 0) +
    PACK_COST * k * n;
  const transposed =
    (transposeB ? 0 : TRANSPOSE_COST * k * n) + // I = op(B)ᵀ row-major is B's storage when transposeB
    (transposeA ? 0 : TRANSPOSE_COST * m * k) +
    PACK_COST * k * m +
    TRANSPOSE_COST * m * n; // Cᵀ back to C
  return direct <= transposed ? { cast: 'direct', cost: direct } : { cast: 'transposed', cost: transposed };
}

export function batchMatMulViaConv(args: {
  inputs: { a: TensorInfo; b: TensorInfo };
  backend: KernelBackend;
  attrs: BatchMatMulAttrs;
  backendName: string;
  fallback: KernelFunc;
}): TensorInfo {
  const { inputs: { a, b }, backend, attrs, backendName, fallback } = args;
  const { transposeA, transposeB } = attrs;
  const aBatch = a.shape.slice(0, -2).reduce((x, y) => x * y, 1);
  const bBatch = b.shape.slice(0, -2).reduce((x, y) => x * y, 1);
  // Batched products and non-float32 keep tfjs's kernel.
  if (aBatch !== 1 || bBatch !== 1 || a.dtype !== 'float32' || b.dtype !== 'float32') {
    return fallback({ inputs: { a, b }, backend, attrs: attrs as unknown as NamedAttrMap }) as TensorInfo;
  }
  const ar = a.shape.length;
  const br = b.shape.length;
  const [aRows, aCols] = [a.shape[ar - 2]!, a.shape[ar - 1]!];
  const [bRows, bCols] = [b.shape[br - 2]!, b.shape[br - 1]!];
  const m = transposeA ? aCols : aRows;
  const k = transposeA ? aRows : aCols;
  const kb = transposeB ? bCols : bRows;
  const n = transposeB ? bRows : bCols;
  if (k !== kb) {
    throw new Error(`BatchMatMul: inner dimensions differ: op(a) is [${m}, ${k}], op(b) is [${kb}, ${n}] ` +
      `(a [${a.shape}], b [${b.shape}], transposeA=${transposeA}, transposeB=${transposeB})`);
  }
  const outShape = [...(ar >= br ? a.shape : b.shape).slice(0, -2), m, n];
  const plan = planMatMul(m, k, n, transposeA, transposeB);
  const scope = new KernelScope(backend, backendName);
  const as2d = (t: TensorInfo, rows: number, cols: number) => scope.run('Reshape', { x: t }, { shape: [rows, cols] });
  const transpose = (t: TensorInfo) => scope.adopt(transpose2d(backend, t));
  const conv1x1 = (input: TensorInfo, p: number, q: number, filter: TensorInfo, r: number) =>
    scope.run('Conv2D', {
      x: scope.run('Reshape', { x: input }, { shape: [1, 1, p, q] }),
      filter: scope.run('Reshape', { x: filter }, { shape: [1, 1, q, r] }),
    }, { strides: [1, 1], pad: 'valid', dataFormat: 'NHWC', dilations: [1, 1], dimRoundingMode: undefined } as unknown as NamedAttrMap);
  try {
    const a2 = as2d(a, aRows, aCols);
    const b2 = as2d(b, bRows, bCols);
    let c: TensorInfo;
    if (plan.cast === 'direct') {
      const inputA = transposeA ? transpose(a2) : a2; // [M,K]
      const filterB = transposeB ? transpose(b2) : b2; // [K,N]
      c = conv1x1(inputA, m, k, filterB, n);
    } else {
      const inputBt = transposeB ? b2 : transpose(b2); // [N,K]
      const filterAt = transposeA ? a2 : transpose(a2); // [K,M]
      const ct = conv1x1(inputBt, n, k, filterAt, m); // [1,1,N,M]
      c = transpose(scope.run('Reshape', { x: ct }, { shape: [n, m] }));
    }
    return scope.keep(scope.run('Reshape', { x: c }, { shape: outShape }));
  } finally {
    scope.dispose();
  }
}
