/**
 * The reference for the engine's equivalence tests: the same network as one
 * tfjs autodiff graph (tf.grads / tf.variableGrads differentiate it).
 */
import * as tf from '@tensorflow/tfjs';
import { paramName, type Model } from '../../src/model/build.js';
import { dropoutMask, type DropoutKey } from '../../src/model/dropout.js';
import type { LayerSpec } from '../../src/model/spec.js';

export interface ForwardOptions {
  /** present when training: dropout is applied with masks drawn from this key */
  dropout?: DropoutKey;
  /** wraps each parameter where it is used: data-parallel training hooks its gradient */
  paramHook?: (name: string, v: tf.Variable) => tf.Tensor;
  /**
   * Model-parallel: this process owns some towers only. At a cross link (and
   * for the logits) `gather` returns all towers' outputs concatenated on
   * `axis`, in tower order, given this process's own output.
   */
  gather?: (link: string, own: tf.Tensor, axis: number, replicatedDownstream: boolean) => tf.Tensor;
}

/** One tower's activation: [B, H, W, C] maps, or [B, F] after flatten. */
type Acts = tf.Tensor[];

function param(model: Model, layer: string, tower: number, kind: 'kernel' | 'bias', opts: ForwardOptions): tf.Tensor {
  const name = paramName(model.spec, layer, tower, kind);
  const v = model.params.get(name);
  if (v === undefined) throw new Error(`forward: this process does not own parameter ${name}`);
  return opts.paramHook ? opts.paramHook(name, v) : v;
}

/** The input each tower's layer reads: its own tower's output, or all towers' concatenated. */
function layerInputs(model: Model, layer: LayerSpec, acts: Acts, first: boolean, opts: ForwardOptions): Acts {
  if (first || !('link' in layer) || layer.link === 'local' || model.spec.towers === 1) return acts;
  const axis = acts[0]!.rank - 1; // channels (NHWC) or features
  if (model.towers.length < model.spec.towers) {
    // the other tower lives in another process: exchange over the network
    return [opts.gather!(layer.name, acts[0]!, axis, false)];
  }
  const all = tf.concat(acts, axis);
  return acts.map(() => all);
}

/**
 * The whole network in one process: x [B, H, W, C] -> logits [B, classes].
 * Towers run one after the other; at a 'cross' link each reads the
 * concatenation of all towers' outputs, which is exactly what the
 * model-parallel split all-gathers over the network.
 */
export function forward(model: Model, x: tf.Tensor4D, opts: ForwardOptions = {}): tf.Tensor2D {
  const { spec } = model;
  if (model.towers.length !== spec.towers && (opts.gather === undefined || model.towers.length !== 1)) {
    throw new Error(`forward: needs all ${spec.towers} towers in this process, or one and a gather, has [${model.towers}]`);
  }
  const [c, h, w] = spec.input;
  if (x.rank !== 4 || x.shape[1] !== h || x.shape[2] !== w || x.shape[3] !== c) {
    throw new Error(`forward: expected input [B, ${h}, ${w}, ${c}] (NHWC), got [${x.shape}]`);
  }
  let acts: Acts = model.towers.map(() => x);
  let first = true;
  for (const layer of spec.layers) {
    const inputs = layerInputs(model, layer, acts, first, opts);
    acts = inputs.map((a, i) => applyLayer(model, layer, a, model.towers[i]!, opts));
    if (layer.kind === 'conv' || layer.kind === 'dense') first = false;
  }
  if (model.towers.length < spec.towers) {
    // Every process computes the same loss from all logits: the loss's gradient is
    // not summed across processes (replicatedDownstream).
    return opts.gather!('logits', acts[0]!, 1, true) as tf.Tensor2D;
  }
  return (acts.length === 1 ? acts[0]! : tf.concat(acts, 1)) as tf.Tensor2D;
}

function applyLayer(model: Model, layer: LayerSpec, a: tf.Tensor, tower: number, opts: ForwardOptions): tf.Tensor {
  switch (layer.kind) {
    case 'conv':
      return tf.fused.conv2d({
        x: a as tf.Tensor4D,
        filter: param(model, layer.name, tower, 'kernel', opts) as tf.Tensor4D,
        strides: layer.stride,
        pad: layer.pad === 0 ? 'valid' : layer.pad,
        bias: param(model, layer.name, tower, 'bias', opts),
        activation: layer.relu ? 'relu' : 'linear',
      });
    case 'lrn':
      return tf.localResponseNormalization(a as tf.Tensor4D, layer.radius, layer.k, layer.alpha, layer.beta);
    case 'maxpool':
      return tf.maxPool(a as tf.Tensor4D, layer.size, layer.stride, 'valid');
    case 'flatten':
      return tf.reshape(a, [a.shape[0]!, -1]); // NHWC order: (h, w, c) per tower
    case 'dense':
      return tf.fused.matMul({
        a: a as tf.Tensor2D,
        b: param(model, layer.name, tower, 'kernel', opts) as tf.Tensor2D,
        bias: param(model, layer.name, tower, 'bias', opts),
        activation: layer.relu ? 'relu' : 'linear',
      });
    case 'dropout': {
      if (opts.dropout === undefined || layer.rate === 0) return a;
      const [rows, units] = a.shape as [number, number];
      return tf.mul(a, dropoutMask(opts.dropout, layer.name, rows, units, tower * units, units * model.spec.towers, layer.rate));
    }
    default: {
      const never: never = layer;
      throw new Error(`forward: unknown layer ${JSON.stringify(never)}`);
    }
  }
}
