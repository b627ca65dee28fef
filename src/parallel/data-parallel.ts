/**
 * One data-parallel replica's training step (the worker side of --mode data).
 *
 * Sync points, in order, the same on every replica (PyTorch DDP's contract):
 *   1. forward + backward on this replica's shard of the global batch;
 *      gradient hooks copy each parameter's gradient into its bucket as
 *      backward produces it (fc8 first, conv1 last) and, with overlap on,
 *      start the bucket's ring all-reduce as soon as the bucket is full;
 *   2. every bucket's all-reduce completes: all replicas hold the average;
 *   3. the same SGD update on every replica.
 * Replicas start from identical weights and stay identical: the coordinator
 * compares weight checksums.
 */
import * as tf from '@tensorflow/tfjs';
import { copyTensorInto } from '../kernels/heap-ops.js';
import type { Model } from '../model/build.js';
import type { DropoutKey } from '../model/dropout.js';
import { forward } from '../model/forward.js';
import { planBuckets, type Bucket, type RingAllReduce } from '../wire/ring-allreduce.js';
import type { Sgd } from '../model/sgd.js';
import { crossEntropy } from '../model/step.js';

export interface ReplicaStep {
  loss: number;
  computeMs: number;
  /** from the end of backward until every bucket is reduced */
  allreduceWaitMs: number;
}

export class DataParallelReplica {
  readonly buckets: Bucket[];
  /** two gradient buffers per bucket, used on alternate steps: libzmq may still be sending last step's */
  private readonly buffers: Float32Array[][];
  private readonly where = new Map<string, { bucket: number; offset: number; size: number }>();

  constructor(
    private readonly model: Model,
    private readonly opt: Sgd,
    private readonly ring: RingAllReduce,
    bucketBytes: number,
  ) {
    // Backward produces gradients in reverse layer order: bucket them that way.
    const order = [...model.params].reverse().map(([name, v]) => ({ name, size: v.size }));
    this.buckets = planBuckets(order, bucketBytes);
    for (const b of this.buckets) for (const p of b.params) this.where.set(p.name, { bucket: b.index, offset: p.offset, size: p.size });
    this.buffers = [0, 1].map(() => this.buckets.map((b) => new Float32Array(b.size)));
    ring.configure(this.buckets.map((b) => b.size));
  }

  async step(x: tf.Tensor4D, labels: tf.Tensor1D, globalStep: number, dropout: DropoutKey, overlap: boolean): Promise<ReplicaStep> {
    const t0 = performance.now();
    const bufs = this.buffers[globalStep % 2]!;
    const filled = this.buckets.map(() => 0);
    const seen = new Set<string>();
    this.ring.beginStep(globalStep);

    const onGradient = (name: string, dy: tf.Tensor) => {
      const at = this.where.get(name)!;
      if (seen.has(name)) throw new Error(`data-parallel: gradient of ${name} arrived twice in one backward pass`);
      seen.add(name);
      copyTensorInto(dy, tf.backend(), bufs[at.bucket]!, at.offset, () => dy.dataSync() as Float32Array);
      filled[at.bucket]! += at.size;
      if (overlap && filled[at.bucket] === this.buckets[at.bucket]!.size) this.ring.start(at.bucket, bufs[at.bucket]!);
    };
    // Identity in the forward pass; in the backward pass it sees the parameter's whole gradient.
    const hook = (name: string, v: tf.Variable) =>
      tf.customGrad(((w: tf.Tensor) => ({
        value: tf.reshape(w, w.shape), // a new tensor on the same data: no copy
        gradFunc: (dy: tf.Tensor) => { onGradient(name, dy); return dy; },
      })) as unknown as Parameters<typeof tf.customGrad>[0])(v);

    const vars = [...this.model.params.values()];
    const { value, grads } = tf.variableGrads(() => crossEntropy(forward(this.model, x, { dropout, paramHook: hook }), labels), vars);
    const loss = value.dataSync()[0]!;
    tf.dispose([value, ...Object.values(grads)]);
    const backwardEnd = performance.now();
    if (seen.size !== this.model.params.size) {
      throw new Error(`data-parallel: backward produced ${seen.size} of ${this.model.params.size} gradients`);
    }

    if (!overlap) this.buckets.forEach((b) => this.ring.start(b.index, bufs[b.index]!));
    await Promise.all(this.buckets.map((b) => this.ring.finish(b.index, bufs[b.index]!)));
    const reduced = performance.now();

    const averaged: Record<string, tf.Tensor> = {};
    for (const [name, v] of this.model.params) {
      const at = this.where.get(name)!;
      averaged[name] = tf.tensor(bufs[at.bucket]!.subarray(at.offset, at.offset + at.size), v.shape);
    }
    this.opt.apply(this.model.params, averaged);
    tf.dispose(Object.values(averaged));
    return { loss, computeMs: performance.now() - t0 - (reduced - backwardEnd), allreduceWaitMs: reduced - backwardEnd };
  }
}

/** A cheap checksum of every parameter's bytes (FNV-1a over 32-bit words), to catch diverged replicas. */
export function weightChecksum(model: Model): string {
  let h = 0x811c9dc5;
  for (const [, v] of model.params) {
    const words = new Uint32Array((v.dataSync() as Float32Array).buffer);
    for (let i = 0; i < words.length; i++) h = Math.imul(h ^ words[i]!, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}
