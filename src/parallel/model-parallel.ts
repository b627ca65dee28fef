/**
 * One tower of the 2012 split (the worker side of --mode model).
 *
 * Worker k owns tower k's weights only. Its forward pass runs its tower's
 * layers; at each cross link (pooled conv2 -> conv3, pooled conv5 -> fc6,
 * fc6 -> fc7, fc7 -> fc8) and for the logits it sends its output to the other
 * worker the moment it exists and receives the other's: an all-gather in
 * tower order. In the backward pass the gradient with respect to a gathered
 * input is split by tower; the other tower's slice goes back to it, and the
 * slice that comes back is added to this tower's own. Both workers compute
 * the same loss from all logits, whose gradient is therefore not summed.
 * Each updates only its own weights. Tower-local links never touch the network.
 *
 * The exchanges are custom ops inside one tfjs autodiff call, so nothing is
 * recomputed: the peer link blocks the thread until the tensor arrives.
 */
import * as tf from '@tensorflow/tfjs';
import type { Model } from '../model/build.js';
import type { DropoutKey } from '../model/dropout.js';
import { forward, type ForwardOptions } from '../model/forward.js';
import type { PeerExchange } from '../wire/exchange.js';
import type { Sgd } from '../model/sgd.js';
import { crossEntropy } from '../model/step.js';

/** All-gather of one tower's output with the other's, differentiable; `prefix()` names the exchange. */
export function makeGather(ex: PeerExchange, rank: number, prefix: () => string): NonNullable<ForwardOptions['gather']> {
  return (link, own, axis, replicatedDownstream) => {
    const op = tf.customGrad(((x: tf.Tensor) => {
      const key = `${prefix()}/${link}`;
      ex.send(`${key}/fwd`, x.dataSync() as Float32Array);
      const theirs = tf.tensor(ex.receive(`${key}/fwd`, x.size), x.shape);
      const value = tf.concat(rank === 0 ? [x, theirs] : [theirs, x], axis);
      const gradFunc = (dy: tf.Tensor) => {
        const [d0, d1] = tf.split(dy, 2, axis);
        const mine = rank === 0 ? d0! : d1!;
        if (replicatedDownstream) return mine;
        ex.send(`${key}/bwd`, (rank === 0 ? d1! : d0!).dataSync() as Float32Array);
        return tf.add(mine, tf.tensor(ex.receive(`${key}/bwd`, mine.size), mine.shape));
      };
      return { value, gradFunc };
    }) as unknown as Parameters<typeof tf.customGrad>[0]);
    return op(own);
  };
}

export interface TowerStep {
  loss: number;
  computeMs: number;
}

export class ModelParallelTower {
  private prefix = '';
  readonly gather: NonNullable<ForwardOptions['gather']>;

  constructor(private readonly model: Model, private readonly opt: Sgd, readonly ex: PeerExchange, readonly rank: number) {
    this.gather = makeGather(ex, rank, () => this.prefix);
  }

  /**
   * One SGD step on the global batch x [B, H, W, C] (both workers get all of
   * it), in `micro` micro-batches whose gradients are averaged.
   */
  step(x: tf.Tensor4D, labels: tf.Tensor1D, globalStep: number, dropout: DropoutKey, micro: number): TowerStep {
    const t0 = performance.now();
    const batch = x.shape[0];
    if (batch % micro !== 0) throw new Error(`batch ${batch} does not split into ${micro} micro-batches`);
    const size = batch / micro;
    const vars = [...this.model.params.values()];
    const sums: Record<string, tf.Tensor> = {};
    let lossSum = 0;
    for (let m = 0; m < micro; m++) {
      this.prefix = `${globalStep}/${m}`;
      const [xm, ym] = micro === 1 ? [x, labels] : [tf.slice(x, m * size, size), tf.slice(labels, m * size, size)];
      const { value, grads } = tf.variableGrads(() => crossEntropy(forward(this.model, xm as tf.Tensor4D, {
        dropout: { ...dropout, firstSample: dropout.firstSample + m * size }, gather: this.gather,
      }), ym as tf.Tensor1D), vars);
      lossSum += value.dataSync()[0]!;
      for (const [name, v] of this.model.params) {
        const g = grads[v.name]!;
        const prev = sums[name];
        sums[name] = prev === undefined ? g : tf.tidy(() => tf.add(prev, g));
        if (prev !== undefined) tf.dispose([prev, g]);
      }
      tf.dispose(value);
      if (micro > 1) tf.dispose([xm, ym]);
    }
    const averaged = micro === 1 ? sums : Object.fromEntries(Object.entries(sums).map(([n, g]) => [n, tf.tidy(() => tf.div(g, micro))]));
    this.opt.apply(this.model.params, averaged);
    tf.dispose(Object.values(sums));
    if (micro > 1) tf.dispose(Object.values(averaged));
    return { loss: lossSum / micro, computeMs: performance.now() - t0 };
  }

  /** The forward pass for evaluation, exchanging under `eval…` keys. */
  logits(x: tf.Tensor4D, key: string): tf.Tensor2D {
    this.prefix = key;
    return forward(this.model, x, { gather: this.gather });
  }
}
