import { backend_util, type KernelBackend, type MaxPoolGradAttrs, type TensorInfo } from '@tensorflow/tfjs-core';
import { heapOf } from './heap-ops.js';

/**
 * MaxPoolGrad on the wasm heap, in JavaScript.
 *
 * tfjs-backend-wasm 4.22's own MaxPoolGrad sends gradients to the wrong
 * inputs when a window holds several channels: on x [1, 11, 11, 5] with
 * 3×3 windows at stride 2 its dx is 21% off (relative to the largest value)
 * from the cpu backend, the webgpu backend and a direct loop, which agree to
 * 1e-7; with one channel all four agree. Every net here pools 3×3 at stride
 * 2 over many channels, so wasm training took a wrong gradient through every
 * pool until this kernel replaced it.
 *
 * The gradient of y[b, oh, ow, c] = max over its window of x is dy routed to
 * the window's maximum; overlapping windows (3×3 at stride 2 overlap by one
 * row and column) add their contributions:
 *   dx[b, h, w, c] = Σ_{(oh, ow): argmax of window (oh, ow) in channel c is (h, w)} dy[b, oh, ow, c]
 * The first maximum in row-major window order wins a tie, as in tfjs's cpu
 * backend and TensorFlow.
 *
 * Cost: one pass over the windows, channels innermost so every read is
 * contiguous: KH·KW·B·OH·OW·C compares (d2l pool1 at 224 px, batch 128:
 * 9 × 128·26·26·96 ≈ 75 M).
 */
export function maxPoolGradOnHeap(args: { inputs: { dy: TensorInfo; input: TensorInfo }; backend: KernelBackend; attrs: MaxPoolGradAttrs }): TensorInfo {
  const { inputs: { dy, input }, backend, attrs } = args;
  const heap = heapOf(backend);
  if (heap === undefined) throw new Error('maxPoolGradOnHeap: expected the wasm backend (makeOutput, typedArrayFromHeap)');
  if (input.dtype !== 'float32' || dy.dtype !== 'float32') throw new Error(`maxPoolGradOnHeap: expected float32, got input ${input.dtype}, dy ${dy.dtype}`);
  const info = backend_util.computePool2DInfo(
    input.shape as [number, number, number, number], attrs.filterSize, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode,
  );
  const { batchSize: nb, inHeight: H, inWidth: W, inChannels: C, outHeight: OH, outWidth: OW } = info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const { top, left } = info.padInfo;
  const out = heap.makeOutput(input.shape, 'float32'); // may grow the heap: take views after
  const x = heap.typedArrayFromHeap(input); // [B, H, W, C]
  const g = heap.typedArrayFromHeap(dy); // [B, OH, OW, C]
  const dx = heap.typedArrayFromHeap(out); // [B, H, W, C]
  dx.fill(0);
  const best = new Float32Array(C);
  const at = new Int32Array(C);
  for (let b = 0; b < nb; b++) {
    for (let oh = 0; oh < OH; oh++) {
      const h0 = oh * sh - top;
      for (let ow = 0; ow < OW; ow++) {
        const w0 = ow * sw - left;
        best.fill(-Infinity);
        at.fill(-1);
        for (let i = Math.max(0, h0); i < Math.min(H, h0 + kh); i++) {
          for (let j = Math.max(0, w0); j < Math.min(W, w0 + kw); j++) {
            const base = ((b * H + i) * W + j) * C;
            for (let c = 0; c < C; c++) {
              const v = x[base + c]!;
              if (v > best[c]!) { best[c] = v; at[c] = base + c; }
            }
          }
        }
        const gBase = ((b * OH + oh) * OW + ow) * C;
        for (let c = 0; c < C; c++) {
          const k = at[c]!;
          if (k >= 0) dx[k] = dx[k]! + g[gBase + c]!;
        }
      }
    }
  }
  return out;
}
