import {
  backend_util,
  type Conv2DBackpropInputAttrs,
  type KernelBackend,
  type NamedAttrMap,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import { flipSwapFilter } from './heap-ops.js';
import { KernelScope, padOrCrop } from './kernel-scope.js';

/**
 * Conv2DBackpropInput as one forward convolution on the backend's fast Conv2D
 * (wasm's own Conv2DBackpropInput is a plain scalar loop; its Conv2D is XNNPACK).
 *
 *   dx[b,i,j,ci] = sum_{kh,kw,co} dyUp[b, i+top-kh, j+left-kw, co] * W[kh,kw,ci,co]
 *
 * where dyUp is dy with s-1 zeros between its rows and columns (s = the forward
 * stride; for s = 1 it is dy itself). That is a 'valid' stride-1 convolution of
 * dyUp, padded by KH-1-top above, with W flipped in space and in/out swapped:
 *   dy [B,OH,OW,Co] -> (upsample) [B,(OH-1)s+1,(OW-1)s+1,Co] -> pad to [B,H+KH-1,W+KW-1,Co]
 *   W  [KH,KW,Ci,Co] -> reverse(h,w) -> transpose [KH,KW,Co,Ci]
 *   conv2d(valid, stride 1) -> [B,H,W,Ci]
 * For s > 1 the zeros cost s^2 more multiply-adds than needed; AlexNet's only
 * strided convolution is conv1, whose input gradient training never asks for.
 */
export function conv2DBackpropInputViaConv(args: {
  inputs: { dy: TensorInfo; filter: TensorInfo };
  backend: KernelBackend;
  attrs: Conv2DBackpropInputAttrs;
  backendName: string;
}): TensorInfo {
  const { inputs: { dy, filter }, backend, attrs, backendName } = args;
  const { strides, pad, dataFormat, dimRoundingMode, inputShape } = attrs;
  if (dataFormat !== 'NHWC') {
    throw new Error(`Conv2DBackpropInput: expected dataFormat 'NHWC', got '${dataFormat}'`);
  }
  const filterShape = filter.shape as [number, number, number, number];
  const info = backend_util.computeConv2DInfo(inputShape, filterShape, strides, 1, pad, dimRoundingMode);
  const [batch, outH, outW, outC] = dy.shape as [number, number, number, number];
  const sh = info.strideHeight;
  const sw = info.strideWidth;
  const kh = info.filterHeight;
  const kw = info.filterWidth;
  const { top, left } = info.padInfo;

  const scope = new KernelScope(backend, backendName);
  try {
    let dyUp = dy; // [B, outH*sh, outW*sw, Co]: dy's rows land on multiples of the stride
    if (sh > 1 || sw > 1) {
      const spread = scope.run('Reshape', { x: dy }, { shape: [batch, outH, 1, outW, 1, outC] });
      const padded = scope.run('PadV2', { x: spread }, {
        paddings: [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]],
        constantValue: 0,
      } as unknown as NamedAttrMap);
      dyUp = scope.run('Reshape', { x: padded }, { shape: [batch, outH * sh, outW * sw, outC] });
    }
    // Rows of dyUp: outH*sh; wanted: inHeight + kh - 1 with kh-1-top of them above.
    const above = kh - 1 - top;
    const aboveW = kw - 1 - left;
    const dyPadded = padOrCrop(scope, dyUp, [
      [0, 0],
      [above, info.inHeight + kh - 1 - above - outH * sh],
      [aboveW, info.inWidth + kw - 1 - aboveW - outW * sw],
      [0, 0],
    ]); // [B, H+KH-1, W+KW-1, Co]
    const swapped = scope.adopt(flipSwapFilter(backend, filter)); // [KH,KW,Co,Ci], rotated 180°
    return scope.keep(scope.run('Conv2D', { x: dyPadded, filter: swapped }, {
      strides: [1, 1],
      pad: 'valid',
      dataFormat: 'NHWC',
      dilations: [1, 1],
      dimRoundingMode: undefined,
    } as unknown as NamedAttrMap)); // [B,H,W,Ci]
  } finally {
    scope.dispose();
  }
}
