/**
 * Each layer kind as a forward / backward pair over explicit tensors, the way
 * cuda-convnet's fprop/bprop and llm.c's *_forward/*_backward run a net: the
 * forward keeps what the backward needs (its input and output), the backward
 * takes dL/dy and returns dL/dx and the parameter gradients. Nothing is
 * recorded on a tape and nothing is recomputed.
 *
 * The backward of every kind is built from the same tfjs kernels, in the same
 * order, as tfjs's own gradient of the forward op (fused conv2d / matMul with
 * bias and ReLU, LRN, max pooling, reshape, the dropout product), so the
 * gradients equal `tf.grads` of the same network.
 *
 * Layout is NHWC: maps are [B, H, W, C], flat activations [B, F]; conv
 * weights [KH, KW, Cin, Cout], dense weights [in, out]. Every function here is
 * synchronous and allocation-exact: it returns new tensors and disposes its
 * intermediates; the caller owns what comes back.
 */
import * as tf from '@tensorflow/tfjs';
import { Conv2DBackpropFilter, Conv2DBackpropInput, LRNGrad, MaxPoolGrad, type NamedAttrMap } from '@tensorflow/tfjs-core';
import { dropoutMask, type DropoutKey } from './dropout.js';
import type { LayerSpec } from './spec.js';

/** What one layer of one tower kept from its forward pass. */
export interface Saved {
  /** the layer's input (for a cross link: all towers' outputs concatenated) */
  x: tf.Tensor;
  /** the layer's output */
  y: tf.Tensor;
  /** dropout: the mask the forward multiplied by [B, units] */
  mask?: tf.Tensor;
}

export interface LayerParams { kernel: tf.Tensor; bias: tf.Tensor }

export interface LayerGrads {
  /** dL/dx, absent when the caller said it is not needed (the first weighted layer) */
  dx?: tf.Tensor;
  kernel?: tf.Tensor;
  bias?: tf.Tensor;
  /** dense with its weight gradients deferred: dL/d(pre-activation) [B, out], for kernel = xᵀ·dz and bias = Σ dz later */
  dz?: tf.Tensor;
}

const run = (kernel: string, inputs: Record<string, tf.Tensor>, attrs: object): tf.Tensor =>
  tf.engine().runKernel(kernel, inputs as unknown as tf.NamedTensorMap, attrs as unknown as NamedAttrMap) as tf.Tensor;

/** conv and dense pad: 0 is 'valid', as tfjs names it. */
const convPad = (pad: number): number | 'valid' => (pad === 0 ? 'valid' : pad);

/**
 * y = layer(x). `params` for conv/dense, `dropout` for dropout masks keyed on
 * the unit's index in the whole layer (this part's first unit and the total).
 */
export function layerForward(
  layer: LayerSpec, x: tf.Tensor, params: LayerParams | undefined,
  dropout: { key: DropoutKey; firstUnit: number; totalUnits: number } | undefined,
): { y: tf.Tensor; mask?: tf.Tensor } {
  switch (layer.kind) {
    case 'conv':
      return {
        y: tf.fused.conv2d({
          x: x as tf.Tensor4D, filter: params!.kernel as tf.Tensor4D, strides: layer.stride, pad: convPad(layer.pad),
          bias: params!.bias, activation: layer.relu ? 'relu' : 'linear',
        }),
      };
    case 'lrn':
      return { y: tf.localResponseNormalization(x as tf.Tensor4D, layer.radius, layer.k, layer.alpha, layer.beta) };
    case 'maxpool':
      return { y: tf.maxPool(x as tf.Tensor4D, layer.size, layer.stride, 'valid') };
    case 'flatten':
      return { y: tf.reshape(x, [x.shape[0]!, -1]) }; // NHWC order: (h, w, c) per tower
    case 'dense':
      return {
        y: tf.fused.matMul({
          a: x as tf.Tensor2D, b: params!.kernel as tf.Tensor2D, bias: params!.bias, activation: layer.relu ? 'relu' : 'linear',
        }),
      };
    case 'dropout': {
      if (dropout === undefined || layer.rate === 0) return { y: tf.clone(x) };
      const [rows, units] = x.shape as [number, number];
      const mask = dropoutMask(dropout.key, layer.name, rows, units, dropout.firstUnit, dropout.totalUnits, layer.rate);
      return { y: tf.mul(x, mask), mask };
    }
    default: {
      const never: never = layer;
      throw new Error(`layerForward: unknown layer ${JSON.stringify(never)}`);
    }
  }
}

/** dL/dz of z -> relu(z) given its output y: dy where y > 0 (tfjs's fused-activation gradient). */
function throughActivation(relu: boolean, dy: tf.Tensor, y: tf.Tensor): tf.Tensor {
  return relu ? tf.mul(dy, tf.step(y)) : dy;
}

/**
 * dL/dx and the parameter gradients of one layer, given dL/dy. `needDx`
 * false skips the input gradient (conv1's input is the image).
 * `deferDense` returns a dense layer's dz instead of its weight gradients.
 */
export function layerBackward(
  layer: LayerSpec, saved: Saved, dy: tf.Tensor, params: LayerParams | undefined, needDx: boolean, deferDense = false,
): LayerGrads {
  return tf.tidy(() => {
    const { x, y } = saved;
    switch (layer.kind) {
      case 'conv': {
        const dz = throughActivation(layer.relu, dy, y); // [B, OH, OW, Cout]
        const attrs = { strides: layer.stride, pad: convPad(layer.pad), dataFormat: 'NHWC', dimRoundingMode: undefined };
        const kernel = run(Conv2DBackpropFilter, { x, dy: dz }, { ...attrs, filterShape: params!.kernel.shape }); // [KH, KW, Cin, Cout]
        const bias = tf.sum(dz, [0, 1, 2]); // [Cout]
        const dx = needDx ? run(Conv2DBackpropInput, { dy: dz, filter: params!.kernel }, { ...attrs, inputShape: x.shape }) : undefined;
        return dx ? { dx, kernel, bias } : { kernel, bias };
      }
      case 'dense': {
        const dz = throughActivation(layer.relu, dy, y); // [B, out]
        if (deferDense) {
          const dx = needDx ? tf.matMul(dz as tf.Tensor2D, params!.kernel as tf.Tensor2D, false, true) : undefined;
          return dx ? { dx, dz: tf.clone(dz) } : { dz: tf.clone(dz) };
        }
        const kernel = tf.matMul(x as tf.Tensor2D, dz as tf.Tensor2D, true, false); // [in, out] = xᵀ·dz
        const bias = tf.sum(dz, 0); // [out]
        const dx = needDx ? tf.matMul(dz as tf.Tensor2D, params!.kernel as tf.Tensor2D, false, true) : undefined; // [B, in] = dz·Wᵀ
        return dx ? { dx, kernel, bias } : { kernel, bias };
      }
      case 'lrn':
        return { dx: run(LRNGrad, { x, y, dy }, { depthRadius: layer.radius, bias: layer.k, alpha: layer.alpha, beta: layer.beta }) };
      case 'maxpool':
        return { dx: run(MaxPoolGrad, { dy, input: x, output: y }, { filterSize: layer.size, strides: layer.stride, pad: 'valid', dimRoundingMode: undefined }) };
      case 'flatten':
        return { dx: tf.reshape(dy, x.shape) };
      case 'dropout':
        return { dx: saved.mask ? tf.mul(dy, saved.mask) : tf.clone(dy) };
      default: {
        const never: never = layer;
        throw new Error(`layerBackward: unknown layer ${JSON.stringify(never)}`);
      }
    }
  });
}

/**
 * Mean softmax cross-entropy of logits [B, K] against integer labels [B],
 * and its gradient dL/dlogits = (softmax(logits) - onehot) / B: the same
 * kernels as tf.losses.softmaxCrossEntropy and its custom gradient.
 */
export function softmaxCrossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D, withGrad: boolean): { loss: tf.Scalar; dlogits?: tf.Tensor2D } {
  return tf.tidy(() => {
    const [b, k] = logits.shape;
    const onehot = tf.cast(tf.oneHot(labels, k), 'float32');
    const logProbs = tf.sub(logits, tf.logSumExp(logits, [1], true)); // [B, K]
    const loss = tf.div(tf.sum(tf.sum(tf.neg(tf.mul(logProbs, onehot)), [1])), tf.scalar(b)) as tf.Scalar;
    if (!withGrad) return { loss };
    // d(mean)/d(per-sample loss) = 1/B, broadcast per row as tfjs's gradient does.
    const perRow = tf.reshape(tf.div(tf.scalar(1), tf.scalar(b)), [1, 1]);
    const dlogits = tf.mul(perRow, tf.sub(tf.exp(logProbs), onehot)) as tf.Tensor2D;
    return { loss, dlogits };
  });
}
