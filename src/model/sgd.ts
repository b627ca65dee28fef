import * as tf from '@tensorflow/tfjs';

export interface SgdOptions {
  lr: number;
  /** 0 is d2l's plain SGD; the 2012 paper used 0.9 */
  momentum: number;
  /** L2 coefficient added to the gradient (the paper: 5e-4) */
  weightDecay: number;
}

/**
 * SGD with momentum and weight decay, PyTorch's formulation (so a checkpoint's
 * momentum buffers mean the same thing there):
 *   g' = g + wd * w;   v = momentum * v + g';   w = w - lr * v
 * With momentum 0 no buffer is kept.
 */
export class Sgd {
  readonly velocity = new Map<string, tf.Variable>();

  constructor(public opts: SgdOptions) {}

  apply(params: Map<string, tf.Variable>, grads: Record<string, tf.Tensor>): void {
    const { lr, momentum, weightDecay } = this.opts;
    tf.tidy(() => {
      for (const [name, w] of params) {
        const g0 = grads[name];
        if (g0 === undefined) throw new Error(`Sgd.apply: no gradient for parameter ${name}`);
        const g = weightDecay === 0 ? g0 : tf.add(g0, tf.mul(w, weightDecay));
        let step: tf.Tensor = g;
        if (momentum !== 0) {
          let v = this.velocity.get(name);
          if (v === undefined) {
            v = tf.variable(tf.zerosLike(w), false);
            this.velocity.set(name, v);
          }
          v.assign(tf.add(tf.mul(v, momentum), g));
          step = v;
        }
        w.assign(tf.sub(w, tf.mul(step, lr)));
      }
    });
  }

  dispose(): void {
    for (const v of this.velocity.values()) v.dispose();
    this.velocity.clear();
  }
}
