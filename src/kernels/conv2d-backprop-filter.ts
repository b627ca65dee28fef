import {
  backend_util,
  type Conv2DBackpropFilterAttrs,
  type KernelBackend,
  type NamedAttrMap,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import { KernelScope, padOrCrop } from './kernel-scope.js';

/**
 * Conv2DBackpropFilter as one forward convolution, so that it runs on the
 * backend's fast Conv2D (XNNPACK on wasm, which has no filter-gradient kernel).
 *
 *   dW[kh,kw,ci,co] = sum_{b,oh,ow} xPad[b, oh*s+kh, ow*s+kw, ci] * dy[b,oh,ow,co]
 *
 * Read ci as the batch, b as the input channel and dy as a filter of size
 * [OH, OW] dilated by the forward stride s, and this is a stride-1 convolution:
 *   x  [B,H,W,Ci] -> transpose [Ci,H,W,B] -> pad/crop to [Ci,(OH-1)s+KH,(OW-1)s+KW,B]
 *   dy [B,OH,OW,Co] -> transpose [OH,OW,B,Co]
 *   conv2d(valid, dilation s) -> [Ci,KH,KW,Co] -> transpose [KH,KW,Ci,Co]
 * Cropping to the rows the forward pass read means no output row is wasted.
 */
/**
 * The forward convolution a filter gradient undoes (NHWC only), and the
 * window of x it read: `top`/`left` padding, then `usedRows` × `usedCols`
 * (the last window's end; rows past it never met the filter).
 */
export function filterGradientWindow(x: TensorInfo, attrs: Conv2DBackpropFilterAttrs) {
  const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs;
  if (dataFormat !== 'NHWC') {
    throw new Error(`Conv2DBackpropFilter: expected dataFormat 'NHWC', got '${dataFormat}'`);
  }
  const info = backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number], filterShape, strides, 1, pad, dimRoundingMode,
  );
  return {
    info, top: info.padInfo.top, left: info.padInfo.left,
    usedRows: (info.outHeight - 1) * info.strideHeight + info.filterHeight,
    usedCols: (info.outWidth - 1) * info.strideWidth + info.filterWidth,
  };
}

export function conv2DBackpropFilterViaConv(args: {
  inputs: { x: TensorInfo; dy: TensorInfo };
  backend: KernelBackend;
  attrs: Conv2DBackpropFilterAttrs;
  backendName: string;
}): TensorInfo {
  const { inputs: { x, dy }, backend, attrs, backendName } = args;
  const { info, top, left, usedRows, usedCols } = filterGradientWindow(x, attrs);

  const scope = new KernelScope(backend, backendName);
  try {
    const xT = scope.run('Transpose', { x }, { perm: [3, 1, 2, 0] }); // [Ci,H,W,B]
    const xWindow = padOrCrop(scope, xT, [
      [0, 0],
      [top, usedRows - info.inHeight - top],
      [left, usedCols - info.inWidth - left],
      [0, 0],
    ]); // [Ci, usedRows, usedCols, B]
    const dyT = scope.run('Transpose', { x: dy }, { perm: [1, 2, 0, 3] }); // [OH,OW,B,Co]
    const dW = scope.run('Conv2D', { x: xWindow, filter: dyT }, {
      strides: [1, 1],
      pad: 'valid',
      dataFormat: 'NHWC',
      dilations: [info.strideHeight, info.strideWidth],
      dimRoundingMode: undefined,
    } as unknown as NamedAttrMap); // [Ci,KH,KW,Co]
    return scope.keep(scope.run('Transpose', { x: dW }, { perm: [1, 2, 0, 3] })); // [KH,KW,Ci,Co]
  } finally {
    scope.dispose();
  }
}
