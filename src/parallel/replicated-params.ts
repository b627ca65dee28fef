/**
 * Parameters replicated over a group of workers, their gradients summed on a
 * ring and their optimizer sharded as in ZeRO stage 1: what data-parallel
 * does for the whole net, the 2-D layout for one tower's parameters (among
 * that tower's replicas), and hybrid for the conv layers (among all workers).
 *
 * Contract (PyTorch DDP's, plus ZeRO-1's), the same on every member:
 *   1. backward hands each gradient to its bucket the moment it exists
 *      (`onGradient`; fc8 first, conv1 last; buckets of `bucketBytes`,
 *      planned from the parameter order, identical everywhere); a full
 *      bucket starts its ring reduce-scatter at once, while backward goes on;
 *   2. after its reduce-scatter a member owns the summed gradient of one
 *      chunk of the bucket: it multiplies by `scale` (1/R for replicas that
 *      each averaged over their own shard; 1 where each member's gradient is
 *      already its part of the global mean, as hybrid's) and takes the SGD
 *      step (weight decay, momentum) for that chunk only; it holds momentum
 *      for that chunk only (1/R of the optimizer state);
 *   3. an all-gather of the updated weight chunks leaves every member with
 *      all new weights, which `finish` loads into the model.
 * Wire volume per bucket of L floats: (R−1)/R·L of gradients plus (R−1)/R·L
 * of weights, the same 2(R−1)/R·L as a plain ring all-reduce.
 *
 * The weights also live on the host, flat per bucket: the all-gather's
 * target and the checksum's input (compared by the coordinator). `state` and
 * `load` are collectives too: `state` all-gathers the momentum shards, so
 * every member can answer with the whole optimizer state; `load` keeps this
 * member's shard.
 *
 * bf16 on the wire (cfg.wire). Invariant: every member ends every step with
 * bit-identical weights (the checksums compare them). A value that travels
 * as bf16 is rounded, so whoever sends it must use the rounded value too.
 * Per bucket of L floats, chunk [lo, hi) owned by this member:
 *   gradients  reduce-scatter in bf16, each hop adding into float32
 *              (ring-allreduce.ts); the owner's summed chunk [hi − lo] is
 *              float32 and used by the owner alone: no one need agree with it.
 *   update     the owner takes the SGD step on float32 (weights and momentum
 *              [hi − lo], never rounded) into a scratch copy, and writes the
 *              step Δ = w_new − w into its chunk of the gradient buffer [L]
 *              (free now: bf16 frames go out of the ring's own buffers).
 *   all-gather of Δ in bf16: the ring rounds the owner's chunk of Δ in place
 *              as it sends it, so after it every member, the owner included,
 *              holds the same bf16 values of every chunk's Δ, and adds them
 *              into its float32 weights: w ← w + Δ̃, the same float32 sum of
 *              the same inputs everywhere.
 * Why the update, not the weights: weights sent as bf16 would make the
 * working weights bf16 values (relative error 2^-9 of |w| each step, a
 * step smaller than half a bf16 ulp of its weight lost), and forward on
 * rounded weights moves the gradients at initialization by up to 25%
 * (measured on the test net: fc6, where the batch's terms cancel). Rounding
 * Δ instead costs 2^-9 of |Δ| (≈ lr·|g|, orders below |w|), keeps the
 * weights float32 everywhere (so they are the master weights, and a
 * checkpoint is exact with no extra gather), and sends the same bytes.
 * With fp32 the owner steps its chunk of the weights in place and the
 * all-gather sends the weights themselves.
 */
import * as tf from '@tensorflow/tfjs';
import type { PlainTensor } from '../checkpoint/checkpoint.js';
import type { WireType } from '../config/choices.js';
import { copyInto, readFloats } from '../kernels/read.js';
import { sgdUpdateRange, type SgdOptions } from '../model/sgd.js';
import { addInto } from '../wire/bf16.js';
import { chunkRange, ownedChunk, planBuckets, type Bucket, type RingAllReduce } from '../wire/ring-allreduce.js';
import type { StepTimeline } from './step-timing.js';
import { checksumOf } from './strategy.js';

export interface ReplicatedOptions {
  sgd: SgdOptions;
  wire: WireType;
  bucketBytes: number;
  /** what the summed gradient is multiplied by before the update (1/R, or 1: see the header) */
  scale: number;
}

export class ReplicatedParams {
  readonly buckets: Bucket[];
  private readonly where = new Map<string, { bucket: number; offset: number; size: number }>();
  /** all weights, flat per bucket */
  private readonly weights: Float32Array[];
  /**
   * one gradient buffer per bucket. Its chunks go out zero-copy; reusing it
   * next step is safe because the coordinator starts a step only once every
   * worker has finished the last, so every frame of it has arrived.
   */
  private readonly gradBuffers: Float32Array[];
  /** momentum of this member's chunk of each bucket (none for plain SGD) */
  private readonly momentum: Float32Array[] | undefined;
  /** [begin, end) of this member's chunk of each bucket */
  private readonly owned: Array<[number, number]>;
  /** bf16 wire: the SGD step's result for one owned chunk, [max(hi − lo)], reused bucket after bucket (the step is synchronous) */
  private readonly stepped: Float32Array | undefined;
  /** collective sequence: the same count on every member */
  private seq = 0;
  // this step's bookkeeping
  private filled: number[] = [];
  private copies: Array<Array<Promise<void>>> = [];
  private reductions: Array<Promise<void>> = [];
  private lr = 0;
  private overlap = true;
  private timeline: StepTimeline | undefined;
  /** the chunk updates' time this step, ms (they run inside the bucket reductions) */
  optimizerMs = 0;

  private constructor(private readonly params: Map<string, tf.Variable>, private readonly ring: RingAllReduce, private readonly o: ReplicatedOptions) {
    // Backward produces gradients in reverse parameter order: bucket them that way.
    this.buckets = planBuckets([...params].reverse().map(([name, v]) => ({ name, size: v.size })), o.bucketBytes);
    for (const b of this.buckets) for (const p of b.params) this.where.set(p.name, { bucket: b.index, offset: p.offset, size: p.size });
    this.weights = this.buckets.map((b) => new Float32Array(b.size));
    this.gradBuffers = this.buckets.map((b) => new Float32Array(b.size));
    const { rank, world } = ring;
    this.owned = this.buckets.map((b) => chunkRange(b.size, world, ownedChunk(rank, world)));
    this.momentum = o.sgd.momentum === 0 ? undefined : this.owned.map(([lo, hi]) => new Float32Array(hi - lo));
    this.stepped = o.wire === 'bf16' ? new Float32Array(Math.max(0, ...this.owned.map(([lo, hi]) => hi - lo))) : undefined;
    this.ring.configure(this.buckets.map((b) => b.size));
  }

  /** `params` (in the model's order) replicated over `ring`'s group; reads their initial values to the host. */
  static async open(params: Map<string, tf.Variable>, ring: RingAllReduce, o: ReplicatedOptions): Promise<ReplicatedParams> {
    const r = new ReplicatedParams(params, ring, o);
    for (const [name, v] of params) {
      const at = r.where.get(name)!;
      r.weights[at.bucket]!.set(await readFloats(v), at.offset);
    }
    return r;
  }

  /** the ring's sends by bucket, per step */
  get traffic(): RingAllReduce['traffic'] {
    return this.ring.traffic;
  }

  /** Starts a step's collective: gradients will come through `onGradient`; `overlap` starts each bucket as soon as it is full. */
  begin(lr: number, overlap: boolean, timeline: StepTimeline): void {
    this.filled = this.buckets.map(() => 0);
    this.copies = this.buckets.map(() => []);
    this.reductions = [];
    this.lr = lr;
    this.overlap = overlap;
    this.timeline = timeline;
    this.optimizerMs = 0;
    this.ring.begin(this.seq++, this.o.wire);
  }

  /** A parameter's gradient, the moment backward produced it; `g` must stay alive until `finish`. */
  onGradient(name: string, g: tf.Tensor): void {
    const at = this.where.get(name)!;
    const pending = copyInto(g, this.gradBuffers[at.bucket]!, at.offset);
    if (pending) this.copies[at.bucket]!.push(pending);
    this.filled[at.bucket]! += at.size;
    if (this.overlap && this.filled[at.bucket] === this.buckets[at.bucket]!.size) this.startBucket(at.bucket);
  }

  private startBucket(b: number): void {
    const r = this.reduceBucket(b);
    r.catch(() => {}); // awaited in finish; a failure while backward still runs must not go unhandled meanwhile
    this.reductions[b] = r;
  }

  /** Every bucket reduced and stepped (those not started yet start now); the weights are not in the model yet. */
  async reduced(): Promise<void> {
    if (this.filled.some((f, b) => f !== this.buckets[b]!.size)) throw new Error(`replicated parameters: backward left buckets unfilled (${this.filled.join(', ')} floats)`);
    for (const b of this.buckets) if (this.reductions[b.index] === undefined) this.startBucket(b.index);
    await Promise.all(this.reductions);
  }

  /**
   * Reduce-scatter a bucket's gradients, step this member's chunk, all-gather
   * the weights (fp32) or the steps, added into every member's weights (bf16).
   */
  private async reduceBucket(b: number): Promise<void> {
    const grads = this.gradBuffers[b]!;
    await Promise.all(this.copies[b]!);
    const [lo, hi] = await this.ring.reduceScatter(b, grads);
    const u0 = performance.now();
    const weights = this.weights[b]!;
    const sgd = { ...this.o.sgd, lr: this.lr };
    if (this.stepped) {
      // The step into scratch, then Δ = w_new − w into the gradient chunk the step has used up (see the header).
      const w = this.stepped.subarray(0, hi - lo);
      w.set(weights.subarray(lo, hi));
      sgdUpdateRange(sgd, w, this.momentum?.[b], grads.subarray(lo, hi), 0, hi - lo, this.o.scale);
      for (let i = 0; i < hi - lo; i++) grads[lo + i] = w[i]! - weights[lo + i]!;
    } else {
      sgdUpdateRange(sgd, weights, this.momentum?.[b], grads, lo, hi, this.o.scale);
    }
    const u1 = performance.now();
    this.optimizerMs += u1 - u0;
    this.timeline?.span('optimizer', `sgd bucket ${b}`, u0, u1);
    if (!this.stepped) return this.ring.allGather(b, weights);
    await this.ring.allGather(b, grads); // every chunk's Δ as the bf16 values every member holds
    addInto(weights, 0, grads);
  }

  /** The host's weights into the model's variables. */
  loadIntoModel(): void {
    for (const [name, v] of this.params) {
      const at = this.where.get(name)!;
      const t = tf.tensor(this.weights[at.bucket]!.subarray(at.offset, at.offset + at.size), v.shape);
      v.assign(t);
      t.dispose();
    }
  }

  /** These parameters and (gathered from all members: a collective) their momentum buffers. */
  async state(): Promise<{ params: PlainTensor[]; momentum: PlainTensor[] }> {
    const params: PlainTensor[] = [];
    const momentum: PlainTensor[] = [];
    let full: Float32Array[] | undefined;
    if (this.momentum) {
      this.ring.begin(this.seq++);
      full = this.buckets.map((b, i) => {
        const f = new Float32Array(b.size);
        f.set(this.momentum![i]!, this.owned[i]![0]);
        return f;
      });
      await Promise.all(full.map((f, i) => this.ring.allGather(i, f)));
    }
    for (const [name, v] of this.params) {
      const at = this.where.get(name)!;
      params.push({ name, shape: v.shape, data: this.weights[at.bucket]!.slice(at.offset, at.offset + at.size) });
      if (full) momentum.push({ name, shape: v.shape, data: full[at.bucket]!.slice(at.offset, at.offset + at.size) });
    }
    return { params, momentum };
  }

  /** Every member is given these parameters whole and keeps its momentum shard; names it does not hold are ignored. */
  load(state: { params: PlainTensor[]; momentum: PlainTensor[] }): void {
    const byName = new Map(state.params.map((p) => [p.name, p]));
    for (const name of this.params.keys()) {
      const p = byName.get(name);
      if (p === undefined) throw new Error(`state has no parameter ${name}`);
      const at = this.where.get(name)!;
      if (p.data.length !== at.size) throw new Error(`state: ${name} has ${p.data.length} values, the model ${at.size}`);
      this.weights[at.bucket]!.set(p.data, at.offset);
    }
    this.loadIntoModel();
    if (!this.momentum) return;
    const flat = this.buckets.map((b) => new Float32Array(b.size)); // absent buffers are zeros, as a fresh optimizer's
    for (const m of state.momentum) {
      const at = this.where.get(m.name);
      if (at === undefined) continue; // another member's (a tower this one does not hold)
      if (m.data.length !== at.size) throw new Error(`state: momentum of ${m.name} has ${m.data.length} values, the parameter ${at.size}`);
      flat[at.bucket]!.set(m.data, at.offset);
    }
    this.owned.forEach(([lo, hi], i) => this.momentum![i]!.set(flat[i]!.subarray(lo, hi)));
  }

  checksum(): string {
    return checksumOf(this.weights);
  }
}
