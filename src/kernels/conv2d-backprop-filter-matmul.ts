import {
  backend_util,
  type Conv2DBackpropFilterAttrs,
  type KernelBackend,
  type NamedAttrMap,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
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
 * [N, Co]. All KH·KW taps at once are one batched product:
 *   xPad [B,Hp,Wp,Ci] -> KH·KW strided slices [B,OH,OW,Ci] -> stack [KH·KW, N, Ci]   (im2col)
 *   dy [B,OH,OW,Co] -> reshape [1, N, Co]                                            (shared by every tap)
 *   BatchMatMul(transposeA) -> [KH·KW, Ci, Co] -> reshape [KH,KW,Ci,Co]
 * The im2col buffer holds KH·KW·N·Ci floats (conv2 of d2l AlexNet at batch 32:
 * 25 × 21,632 × 96 = 52 M, 208 MB); taps are therefore sliced in groups whose
 * stack stays under PATCH_BUDGET floats, each group one batched product.
 */
const PATCH_BUDGET = 2 ** 24; // floats (64 MiB) per im2col group

export function conv2DBackpropFilterViaMatMul(args: {
  inputs: { x: TensorInfo; dy: TensorInfo };
  backend: KernelBackend;
  attrs: Conv2DBackpropFilterAttrs;
  backendName: string;
}): TensorInfo {
  const { inputs: { x, dy }, backend, attrs, backendName } = args;
  const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs;
  if (dataFormat !== 'NHWC') {
    throw new Error(`Conv2DBackpropFilter: expected dataFormat 'NHWC', got '${dataFormat}'`);
  }
  const info = backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number], filterShape, strides, 1, pad, dimRoundingMode,
  );
  const { batchSize: b, inChannels: ci, outChannels: co, outHeight: oh, outWidth: ow, filterHeight: kh, filterWidth: kw } = info;
  const { strideHeight: sh, strideWidth: sw } = info;
  const { top, left } = info.padInfo;
  const n = b * oh * ow;
  // The rows and columns the forward pass read: [top pad, last window's end].
  const usedRows = (oh - 1) * sh + kh;
  const usedCols = (ow - 1) * sw + kw;

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
        slices.push(scope.run('Reshape', { x: tap }, { shape: [1, n, ci] }));
      }
      // [g, N, Ci]ᵀ · [1, N, Co] -> [g, Ci, Co]: one product per tap, dY broadcast over them.
      const patches = slices.length === 1 ? slices[0]! : scope.run('Concat', slices as unknown as Record<string, TensorInfo>, { axis: 0 });
      groups.push(scope.run('BatchMatMul', { a: patches, b: dY }, { transposeA: true, transposeB: false }));
    }
    const all = groups.length === 1 ? groups[0]! : scope.run('Concat', groups as unknown as Record<string, TensorInfo>, { axis: 0 }); // [KH·KW, Ci, Co]
    return scope.keep(scope.run('Reshape', { x: all }, { shape: [kh, kw, ci, co] }));
  } finally {
    scope.dispose();
  }
}
