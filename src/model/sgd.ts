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
 * With momentum 0 no buffer is kept. The optimizer owns its buffers: they are
 * read and loaded through `buffers()` and `loadBuffer()`.
 */
export class Sgd {
  private readonly velocity = new Map<string, tf.Variable>();

  constructor(public opts: SgdOptions) {}

  apply(params: Map<string, tf.Variable>, grads: Map<string, tf.Tensor>): void {
    const { lr, momentum, weightDecay } = this.opts;
    tf.tidy(() => {
      for (const [name, w] of params) {
        const g0 = grads.get(name);
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

  /** The momentum buffers that exist (a buffer appears with its parameter's first update), by parameter name. */
  buffers(): ReadonlyMap<string, tf.Tensor> {
    return this.velocity;
  }

  /** Sets one parameter's momentum buffer (resuming); ignored for plain SGD. */
  loadBuffer(name: string, data: Float32Array, shape: number[]): void {
    if (this.opts.momentum === 0) return;
    const value = tf.tensor(data, shape);
    const v = this.velocity.get(name);
    if (v === undefined) this.velocity.set(name, tf.variable(value, false));
    else v.assign(value);
    value.dispose(); // a variable holds its own reference to the values
  }

  dispose(): void {
    for (const v of this.velocity.values()) v.dispose();
    this.velocity.clear();
  }
}

/**
 * The same update on host arrays, for the elements [begin, end) that a
 * sharded optimizer owns: `g` holds the summed gradient, scaled here by
 * `gScale` (1/N); `w` and `v` are updated in place (`v` indexed from 0 at
 * `begin`). Every operation is rounded to float32 as tfjs's elementwise
 * kernels round it, so a shard updates exactly as Sgd.apply does.
 */
export function sgdUpdateRange(
  opts: SgdOptions, w: Float32Array, v: Float32Array | undefined, g: Float32Array, begin: number, end: number, gScale: number,
): void {
  const f = Math.fround;
  const lr = f(opts.lr);
  const wd = f(opts.weightDecay);
  const mom = f(opts.momentum);
  const ws = w.subarray(begin, end);
  const gs = g.subarray(begin, end);
  const n = end - begin;
  // One tight loop per case: V8 keeps each monomorphic, ~1 ns an element.
  if (v !== undefined && wd !== 0) {
    for (let i = 0; i < n; i++) {
      const vi = f(f(v[i]! * mom) + f(f(gs[i]! * gScale) + f(ws[i]! * wd)));
      v[i] = vi;
      ws[i] = f(ws[i]! - f(vi * lr));
    }
  } else if (v !== undefined) {
    for (let i = 0; i < n; i++) {
      const vi = f(f(v[i]! * mom) + f(gs[i]! * gScale));
      v[i] = vi;
      ws[i] = f(ws[i]! - f(vi * lr));
    }
  } else if (wd !== 0) {
    for (let i = 0; i < n; i++) ws[i] = f(ws[i]! - f(f(f(gs[i]! * gScale) + f(ws[i]! * wd)) * lr));
  } else {
    for (let i = 0; i < n; i++) ws[i] = f(ws[i]! - f(f(gs[i]! * gScale) * lr));
  }
}
