import * as tf from '@tensorflow/tfjs';
import type { Model } from './build.js';
import { forward } from './forward.js';
import type { DropoutKey } from './dropout.js';
import type { Sgd } from './sgd.js';

/** Mean softmax cross-entropy of logits [B, K] against integer labels [B]. */
export function crossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Scalar {
  const oneHot = tf.oneHot(labels, logits.shape[1]);
  return tf.losses.softmaxCrossEntropy(oneHot, logits) as tf.Scalar;
}

/**
 * Loss and the gradient of every parameter the model owns, for one batch.
 * x [B, H, W, C], labels [B] int32. The caller disposes the gradients.
 */
export function lossAndGrads(
  model: Model,
  x: tf.Tensor4D,
  labels: tf.Tensor1D,
  dropout?: DropoutKey,
): { loss: number; grads: Record<string, tf.Tensor> } {
  const vars = [...model.params.values()];
  const { value, grads: byVarName } = tf.variableGrads(
    () => crossEntropy(forward(model, x, dropout === undefined ? {} : { dropout }), labels),
    vars,
  );
  const loss = value.dataSync()[0]!;
  value.dispose();
  // tfjs keys gradients by its own variable names; ours are the map's keys.
  const grads: Record<string, tf.Tensor> = {};
  for (const [name, v] of model.params) grads[name] = byVarName[v.name]!;
  return { loss, grads };
}

/** One SGD step on one batch; returns the batch's loss (before the step). */
export function trainStep(model: Model, opt: Sgd, x: tf.Tensor4D, labels: tf.Tensor1D, dropout?: DropoutKey): number {
  const { loss, grads } = lossAndGrads(model, x, labels, dropout);
  opt.apply(model.params, grads);
  tf.dispose(Object.values(grads));
  return loss;
}
