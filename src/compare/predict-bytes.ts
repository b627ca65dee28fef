/**
 * The bytes each worker sends per step in each way of training, from the
 * layer shapes alone: the data-parallel ring chunk by chunk (with the
 * implementation's own bucket plan and chunk ranges), and the split's
 * activations forward and gradients backward at each cross link. The
 * step-time model (predict.ts) reuses the buckets and exchanges defined here.
 * Pure functions of numbers.
 *
 * Modes: see predict.ts. Units: bytes; "floats" are values, 4 bytes each on
 * an fp32 wire and 2 on a bf16 one (`wire`, default fp32): every bucket and
 * every link sends the same values either way, so bf16 is exactly half.
 */
import type { Mode } from '../run/loop.js';
import { parameterShapes } from '../model/build.js';
import { shapesOf } from '../model/shapes.js';
import { isWeighted, type ModelSpec } from '../model/spec.js';
import { chunkRange, planBuckets, type Bucket } from '../wire/ring-allreduce.js';
import { WIRE_BYTES } from '../wire/bf16.js';
import type { WireType } from '../config/choices.js';

/** Bytes of one float32 value (an fp32 wire's values; WIRE_BYTES has both). */
export const FLOAT_BYTES = 4;

/** What a mode predicts, in the shape of ModeMeasure['predicted'] (less the step time). */
export interface BytesPerStep {
  /** bytes one worker sends per training step */
  bytesSentPerStep: number;
  /** the same, by ring bucket ('bucket 0', …) or by cross link ('conv3', …, 'logits') */
  sentByLink: Record<string, number>;
}

export type PredictMode = Mode | 'hybrid';

export const product = (xs: readonly number[]): number => xs.reduce((a, b) => a * b, 1);
const mod = (a: number, n: number): number => ((a % n) + n) % n;

export function positiveInteger(what: string, v: number): void {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${what}: expected a positive integer, got ${v}`);
}
export function positive(what: string, v: number): void {
  if (!(v > 0)) throw new Error(`${what}: expected a positive number, got ${v}`);
}
export function nonNegative(what: string, v: number): void {
  if (!(v >= 0)) throw new Error(`${what}: expected a number ≥ 0, got ${v}`);
}

// ---------------------------------------------------------------------------
// Gradient buckets and the ring (data mode, and the conv half of hybrid)
// ---------------------------------------------------------------------------

/** The layer a parameter belongs to: `conv1.t0.kernel` → `conv1`. */
export const layerOfParam = (name: string): string => name.slice(0, name.indexOf('.'));

/**
 * The buckets a data-parallel replica plans: the parameters in the order
 * backward produces their gradients (the model's fixed order reversed, so
 * fc8 first, conv1 last), grouped by planBuckets exactly as
 * DataParallelReplica does. `keep` restricts them to some layers (hybrid
 * all-reduces only the conv layers' gradients).
 */
export function gradientBuckets(spec: ModelSpec, bucketBytes: number, keep: (layer: string) => boolean = () => true): Bucket[] {
  positive('bucketBytes', bucketBytes);
  const params = [...parameterShapes(spec)]
    .filter(([name]) => keep(layerOfParam(name)))
    .map(([name, shape]) => ({ name, size: product(shape) }));
  return planBuckets(params.reverse(), bucketBytes);
}

/** Floats in chunk c of a bucket of `size` floats split over `world` workers (ring-allreduce's chunkRange). */
export function chunkFloats(size: number, world: number, c: number): number {
  const [begin, end] = chunkRange(size, world, c);
  return end - begin;
}

/**
 * Bytes worker `rank` sends for one bucket: in reduce-scatter round r it
 * sends chunk (rank − r) mod N, in all-gather round r chunk (rank + 1 − r)
 * mod N (RingAllReduce.sendChunk), N − 1 rounds each. Over the two halves
 * that is every chunk twice but the two it only receives, about
 * 2(N−1)/N × size floats; exactly size floats for N = 2.
 */
export function ringBytesSent(size: number, world: number, rank: number, wire: WireType = 'fp32'): number {
  let floats = 0;
  for (let round = 0; round < world - 1; round++) {
    floats += chunkFloats(size, world, mod(rank - round, world)); // reduce-scatter
    floats += chunkFloats(size, world, mod(rank + 1 - round, world)); // all-gather
  }
  return floats * WIRE_BYTES[wire];
}

function bucketBytesSent(buckets: Bucket[], world: number, rank: number, wire: WireType): BytesPerStep {
  const sentByLink: Record<string, number> = {};
  for (const b of buckets) sentByLink[`bucket ${b.index}`] = ringBytesSent(b.size, world, rank, wire);
  return { bytesSentPerStep: sum(Object.values(sentByLink)), sentByLink };
}

export const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

/**
 * Bytes one data-parallel worker sends per step, total and by bucket
 * ('bucket 0' holds fc8's gradients). Exact to the byte for worker `rank`:
 * chunk sizes differ by one float when N does not divide a bucket, so for
 * N > 2 ranks may differ by a few bytes; their mean is 2(N−1)/N × paramBytes.
 */
export function dataParallelBytes(spec: ModelSpec, world: number, bucketBytes: number, rank = 0, wire: WireType = 'fp32'): BytesPerStep {
  positiveInteger('data-parallel world', world);
  if (!Number.isInteger(rank) || rank < 0 || rank >= world) throw new Error(`data-parallel rank: expected 0..${world - 1}, got ${rank}`);
  return bucketBytesSent(gradientBuckets(spec, bucketBytes), world, rank, wire);
}

// ---------------------------------------------------------------------------
// Activation exchanges (model mode, and the fc half of hybrid)
// ---------------------------------------------------------------------------

/**
 * One tensor the workers of a split exchange every step: a layer's input
 * gathered from all workers forward (and, if `backward`, its gradient
 * reduce-scattered back), or the logits.
 */
export interface Exchange {
  /** the layer that reads it ('conv3', 'fc6', …) or 'logits' */
  link: string;
  /** index in spec.layers of the layer that reads it; spec.layers.length for the logits */
  index: number;
  /** floats per sample of the whole tensor (all towers): C·H·W of the previous layer for conv3, its flat size for fc6 */
  floatsPerSample: number;
  /** the logits' gradient is not exchanged: every worker computes the same loss from all logits */
  backward: boolean;
}

/** Floats per sample of layer i's output, all towers together. */
function outputFloats(spec: ModelSpec, i: number): number {
  return product(shapesOf(spec)[i]!.outputShape);
}

function logitsExchange(spec: ModelSpec): Exchange {
  return { link: 'logits', index: spec.layers.length, floatsPerSample: outputFloats(spec, spec.layers.length - 1), backward: false };
}

/**
 * Where the model-parallel split talks: the layers that read every tower's
 * output ('cross': conv3, fc6, fc7, fc8 in the 2012 net), then the logits.
 * A one-tower net (d2l) has no towers to keep apart: split N ways, every
 * weighted layer after the first reads all of the previous one.
 */
export function modelExchanges(spec: ModelSpec): Exchange[] {
  const firstWeighted = spec.layers.findIndex(isWeighted);
  const out: Exchange[] = [];
  spec.layers.forEach((l, i) => {
    if (!isWeighted(l) || i === 0 || i <= firstWeighted) return;
    if (spec.towers === 1 || l.link === 'cross') out.push({ link: l.name, index: i, floatsPerSample: outputFloats(spec, i - 1), backward: true });
  });
  return [...out, logitsExchange(spec)];
}

/** Index of the first dense layer: hybrid's boundary between data-parallel and model-parallel layers. */
export function firstDense(spec: ModelSpec): number {
  const i = spec.layers.findIndex((l) => l.kind === 'dense');
  if (i < 1) throw new Error(`hybrid: expected conv layers followed by dense layers in ${spec.arch}, got the first dense layer at ${i}`);
  return i;
}

/**
 * Hybrid's exchanges: every dense layer's input, then the logits.
 *   fc6 input x6 [B, D] (D = pool5's C·H·W, all towers): each worker holds
 *     its B/N samples; forward all-gathers them (ring, N−1 rounds of
 *     [B/N, D]), backward reduce-scatters dL/dx6 [B, D] — each worker's
 *     partial sum over its 1/N of fc6's units — back to the samples' owners.
 *   fc7 input h6 [B, H6], fc8 input h7 [B, H7]: each worker holds its H/N
 *     units of the whole batch; all-gather forward, reduce-scatter backward.
 *   logits [B, C]: all-gathered forward only, as in model mode.
 * Every exchange sends (N−1)/N of the tensor per worker per direction.
 */
export function hybridExchanges(spec: ModelSpec): Exchange[] {
  const out: Exchange[] = [];
  spec.layers.forEach((l, i) => {
    if (l.kind === 'dense') out.push({ link: l.name, index: i, floatsPerSample: outputFloats(spec, i - 1), backward: true });
  });
  return [...out, logitsExchange(spec)];
}

/** Floats one worker sends per sample for an exchange: (N−1)/N of the tensor per direction. */
const exchangeFloatsPerSample = (x: Exchange, world: number): number =>
  (x.backward ? 2 : 1) * ((world - 1) / world) * x.floatsPerSample;

/**
 * Floats one worker sends per sample at each cross link of the model-parallel
 * split over `world` workers (2 is what the implementation runs): forward its
 * slice of the layer's gathered input, backward the others' slices of that
 * input's gradient (the same size), plus its share of the logits forward.
 * For the 2012 net on 2 workers: 2 × one tower's output at conv3, fc6, fc7,
 * fc8, and classes/2 for the logits.
 */
export function crossLinkFloatsPerSample(spec: ModelSpec, world = 2): { links: Array<{ link: string; floats: number }>; total: number } {
  positiveInteger('model-parallel world', world);
  const links = modelExchanges(spec).map((x) => ({ link: x.link, floats: exchangeFloatsPerSample(x, world) }));
  return { links, total: sum(links.map((l) => l.floats)) };
}

function exchangeBytesSent(exchanges: Exchange[], world: number, batch: number, wire: WireType): BytesPerStep {
  const sentByLink: Record<string, number> = {};
  for (const x of exchanges) sentByLink[x.link] = exchangeFloatsPerSample(x, world) * batch * WIRE_BYTES[wire];
  return { bytesSentPerStep: sum(Object.values(sentByLink)), sentByLink };
}

/**
 * Bytes one model-parallel worker sends per step at global batch `batch`:
 * crossLinkFloatsPerSample × batch × 4 (2 on a bf16 wire), by link
 * ('conv3', 'fc6', 'fc7', 'fc8', 'logits' for the 2012 net).
 */
export function modelParallelBytes(spec: ModelSpec, batch: number, world = 2, wire: WireType = 'fp32'): BytesPerStep {
  positiveInteger('batch', batch);
  positiveInteger('model-parallel world', world);
  return exchangeBytesSent(modelExchanges(spec), world, batch, wire);
}

/** The conv (data-parallel) half of hybrid: the layers before the first dense one. */
export const convLayerNames = (spec: ModelSpec): Set<string> => new Set(spec.layers.slice(0, firstDense(spec)).map((l) => l.name));

/**
 * Bytes one hybrid worker sends per step: the conv gradients' ring buckets
 * ('bucket k', planned like data mode's but over the conv parameters only)
 * plus hybrid's activation exchanges ('fc6', 'fc7', 'fc8', 'logits').
 */
export function hybridBytes(spec: ModelSpec, world: number, batch: number, bucketBytes: number, rank = 0, wire: WireType = 'fp32'): BytesPerStep {
  positiveInteger('hybrid world', world);
  positiveInteger('batch', batch);
  const conv = convLayerNames(spec);
  const ring = bucketBytesSent(gradientBuckets(spec, bucketBytes, (l) => conv.has(l)), world, rank, wire);
  const fc = exchangeBytesSent(hybridExchanges(spec), world, batch, wire);
  return { bytesSentPerStep: ring.bytesSentPerStep + fc.bytesSentPerStep, sentByLink: { ...ring.sentByLink, ...fc.sentByLink } };
}

/** Bytes one worker sends per step in `mode` (single: none) on a `wire` wire. */
export function predictBytes(mode: PredictMode, spec: ModelSpec, world: number, batch: number, bucketBytes: number, wire: WireType = 'fp32'): BytesPerStep {
  switch (mode) {
    case 'single': return { bytesSentPerStep: 0, sentByLink: {} };
    case 'data': return dataParallelBytes(spec, world, bucketBytes, 0, wire);
    case 'model': return modelParallelBytes(spec, batch, world, wire);
    case 'hybrid': return hybridBytes(spec, world, batch, bucketBytes, 0, wire);
  }
}
