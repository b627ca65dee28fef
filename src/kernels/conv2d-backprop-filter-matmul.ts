import {
  type Conv2DBackpropFilterAttrs,
  type KernelBackend,
  type NamedAttrMap,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import { filterGradientWindow } from './conv2d-backprop-filter.js';
import { KernelScope, padOrCrop } from './kernel-scope.js';

/**
 * Conv2DBackpropFilter as matrix products, for backends whose BatchMatMul is
 * their fastest program (WebGPU: a tiled matmul in workgroup memory; tfjs
 * 4.22's own WebGPU filter gradient is a naive shader, one invocation per
 * filter element looping over B·OH·OW in order).
 *
 *   dW[kh,kw,ci,co] = sum_{b,oh,ow} xPad[b, oh*s+kh, ow*s+kw, ci] · dy[b,oh,ow,co]
 *
 * For one filter tap (kh, kw) this is Xtapᵀ · dY, where Xtap [N, Ci] is the
 * strided window of xPad that tap reads (N = B·OH·OW) and dY is dy as
 * [N, Co]. All taps side by side are the im2col matrix, and dW one product:
 *   xPad [B,Hp,Wp,Ci] -> KH·KW strided slices [B,OH,OW,Ci] -> concat on channels [B,OH,OW,KH·KW·Ci]
 *   -> reshape [1, N, KH·KW·Ci]                                                       (im2col)
 *   dy [B,OH,OW,Co] -> reshape [1, N, Co]
 *   MatMul(transposeA) -> [1, KH·KW·Ci, Co] -> reshape [KH,KW,Ci,Co]  (rows tap-major, channel-minor)
 * Where Ci is at least a matmul tile (ONE_MATRIX_BELOW_CI), the taps are
 * instead a batch of KH·KW products [N, Ci]ᵀ·[N, Co] (stacked on a new
 * leading axis, dY shared by all): measured 7.7–10.9× tfjs's shader on
 * conv2–conv5 at 224 px, batch 32 (llvmpipe). Below it, per-tap products
 * of a few rows tile badly (conv1 on grey images, Ci = 1, 67 px, batch 8:
 * 184 ms per tap against 46 ms as one matrix).
 * The im2col matrix holds KH·KW·N·Ci floats (conv2 of d2l AlexNet at batch 32:
 * 25 × 21,632 × 96 = 52 M, 208 MB); taps are therefore taken in groups whose
 * columns stay under PATCH_BUDGET floats, each group one product, the
 * groups' rows concatenated.
 */
const PATCH_BUDGET = 2 ** 24; // floats (64 MiB) per im2col group
/** Input channels below which all taps are one matrix rather than a batch of per-tap products: the 32-row tile of tfjs's matmul. */
const ONE_MATRIX_BELOW_CI = 32;

export function conv2DBackpropFilterViaMatMul(args: {
  inputs: { x: TensorInfo; dy: TensorInfo };
  backend: KernelBackend;
  attrs: Conv2DBackpropFilterAttrs;
  backendName: string;
}): TensorInfo {
  const { inputs: { x, dy }, backend, attrs, backendName } = args;
  const { info, top, left, usedRows, usedCols } = filterGradientWindow(x, attrs);
  const { batchSize: b, inChannels: ci, outChannels: co, outHeight: oh, outWidth: ow, filterHeight: kh, filterWidth: kw } = info;
  const { strideHeight: sh, strideWidth: sw } = info;
  const n = b * oh * ow;

  const scope = new KernelScope(backend, backendName);
  try {
    const xPad = padOrCrop(scope, x, [[0, 0], [top, usedRows - info.inHeight - top], [left, usedCols - info.inWidth - left], [0, 0]]); // [B, usedRows, usedCols, Ci]
    const dY = scope.run('Reshape', { x: dy }, { shape: [1, n, co] }); // [1, N, Co]
    const taps = kh * kw;
    const perGroup = Math.max(1, Math.min(taps, Math.floor(PATCH_BUDGET / (n * ci))));
    const groups: TensorInfo[] = [];
    for (let first = 0; first < taps; first += perGroup) {
      const slices: TensorInfo[] = [];
      for (let t = first; t < Math.min(taps, first + perGroup); t++) {
        const r = Math.floor(t / kw);
        const c = t % kw;
        // Tap (r, c) reads rows r, r+s, …, r+(OH-1)s and the same for columns: [B, OH, OW, Ci].
        const tap = scope.run('StridedSlice', { x: xPad }, {
          begin: [0, r, c, 0], end: [b, r + (oh - 1) * sh + 1, c + (ow - 1) * sw + 1, ci], strides: [1, sh, sw, 1],
          beginMask: 0, endMask: 0, ellipsisMask: 0, newAxisMask: 0, shrinkAxisMask: 0,
        } as unknown as NamedAttrMap);
        slices.push(tap);
      }
      const g = slices.length;
      // One matrix: [B,OH,OW,g·Ci] -> [1, N, g·Ci]. Per tap: g × [N, Ci] stacked -> [g, N, Ci].
      const oneMatrix = ci < ONE_MATRIX_BELOW_CI;
      const joined = g === 1 ? slices[0]! : scope.run('Concat', slices.map((t) => (oneMatrix ? t : scope.run('Reshape', { x: t }, { shape: [1, n, ci] }))) as unknown as Record<string, TensorInfo>, { axis: oneMatrix ? 3 : 0 });
      const patches = scope.run('Reshape', { x: joined }, { shape: oneMatrix ? [1, n, g * ci] : [g, n, ci] });
      // Transposed times [1, N, Co] (broadcast over the taps): [1, g·Ci, Co] or [g, Ci, Co] -> either way g·Ci rows of Co.
      const product = scope.run('BatchMatMul', { a: patches, b: dY }, { transposeA: true, transposeB: false });
      groups.push(scope.run('Reshape', { x: product }, { shape: [1, g * ci, co] }));
    }
    const all = groups.length === 1 ? groups[0]! : scope.run('Concat', groups as unknown as Record<string, TensorInfo>, { axis: 1 }); // [1, KH·KW·Ci, Co]
    return scope.keep(scope.run('Reshape', { x: all }, { shape: [kh, kw, ci, co] }));
  } finally {
    scope.dispose();
  }
}
