/**
 * The bytes each worker sends per step in each way of training, from the
 * layer shapes alone, exact to the byte for every rank: the data-parallel
 * ring chunk by chunk (with the implementation's own bucket plan and chunk
 * ranges), the split's activations forward and gradients backward at each
 * cross link (each tower's own part, so uneven towers differ by rank), and
 * hybrid's ring over the trunk plus its dense layers' exchanges. The
 * step-time model (predict.ts) reuses the buckets and exchanges defined here;
 * its (N−1)/N forms are the mean of these over the ranks.
 * Pure functions of numbers.
 *
 * Modes: see predict.ts. Ranks: data and hybrid 0..N−1; model r·T + t, the
 * row r (replica) holding towers 0..T−1. Units: bytes; "floats" are values,
 * 4 bytes each on an fp32 wire and 2 on a bf16 one (`wire`, default fp32):
 * every bucket and every link sends the same values either way, so bf16 is
 * exactly half. Micro-batches split the same rows into pieces and never
 * change the bytes.
 */
import { paramName, parameterShapes } from '../model/build.js';
import { shapesOf } from '../model/shapes.js';
import { isWeighted, splitUnits, type ModelSpec } from '../model/spec.js';
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

/** The ways of training predicted here, declared here so that a forecast covers hybrid whichever modes the runtime's Mode lists. */
export type PredictMode = 'single' | 'data' | 'model' | 'hybrid';

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
function rankOf(what: string, rank: number, world: number): void {
  if (!Number.isInteger(rank) || rank < 0 || rank >= world) throw new Error(`${what} rank: expected 0..${world - 1}, got ${rank}`);
}
/** B samples in equal shards, one per worker (or row): the runtime refuses a batch that does not divide. */
function equalShards(what: string, batch: number, shards: number): void {
  positiveInteger('batch', batch);
  if (batch % shards !== 0) throw new Error(`${what}: expected a batch divisible by ${shards}, got ${batch}`);
}

// ---------------------------------------------------------------------------
// Gradient buckets and the ring (data mode, hybrid's trunk, model mode's replicas)
// ---------------------------------------------------------------------------

/** The layer a parameter belongs to: `conv1.t0.kernel` → `conv1`. */
export const layerOfParam = (name: string): string => name.slice(0, name.indexOf('.'));

/**
 * The buckets a data-parallel replica plans: the parameters in the order
 * backward produces their gradients (the model's fixed order reversed, so
 * fc8 first, conv1 last), grouped by planBuckets exactly as
 * DataParallelReplica does. `keep` restricts them to some parameters, by
 * name (hybrid all-reduces only the trunk's gradients, a model-parallel
 * replica only its tower's).
 */
export function gradientBuckets(spec: ModelSpec, bucketBytes: number, keep: (param: string) => boolean = () => true): Bucket[] {
  positive('bucketBytes', bucketBytes);
  const params = [...parameterShapes(spec)]
    .filter(([name]) => keep(name))
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
  rankOf('data-parallel', rank, world);
  return bucketBytesSent(gradientBuckets(spec, bucketBytes), world, rank, wire);
}


// ---------------------------------------------------------------------------
// Activation exchanges (model mode, and the head of hybrid)
// ---------------------------------------------------------------------------

/**
 * One tensor the workers of a split exchange every step: a layer's input,
 * each worker's part sent to the others forward (and, if `backward`, the
 * others' parts of its gradient sent back to them), or the logits.
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
 * A one-tower net (d2l) is not run split, but the forecast (predict.ts's
 * modelMs) still prices splitting it N ways: then every weighted layer after
 * the first reads all of the previous one.
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

/** Index of the first dense layer: hybrid's boundary between its trunk (data-parallel) and its head (split by units). */
export function firstDense(spec: ModelSpec): number {
  const i = spec.layers.findIndex((l) => l.kind === 'dense');
  if (i < 1) throw new Error(`hybrid: expected conv layers followed by dense layers in ${spec.arch}, got the first dense layer at ${i}`);
  return i;
}

/**
 * Hybrid's exchanges: every dense layer's input, then the logits.
 *   fc6 input x6 [B, F] (F = the flatten's C·H·W, all towers): worker k
 *     holds its B/N samples' rows; forward it sends them to every other
 *     worker, backward each other worker's rows of dL/dx6 (its partial sum
 *     over k's units of fc6) go back to that worker.
 *   fc7 input h6 [B, H6], fc8 input h7 [B, H7]: worker k holds its columns
 *     (splitUnits(H, N)[k] units of the previous dense layer) for the whole
 *     batch; forward to every other worker, the others' columns of the
 *     gradient back to them.
 *   logits [B, C]: forward only, as in model mode.
 * Averaged over the workers, each sends (N−1)/N of the tensor per direction.
 */
export function hybridExchanges(spec: ModelSpec): Exchange[] {
  const out: Exchange[] = [];
  spec.layers.forEach((l, i) => {
    if (l.kind === 'dense') out.push({ link: l.name, index: i, floatsPerSample: outputFloats(spec, i - 1), backward: true });
  });
  return [...out, logitsExchange(spec)];
}

/** Floats a worker of N sends per sample for an exchange, averaged over the N: (N−1)/N of the tensor per direction. */
const meanExchangeFloatsPerSample = (x: Exchange, world: number): number =>
  (x.backward ? 2 : 1) * ((world - 1) / world) * x.floatsPerSample;

/**
 * Floats a worker of a row of `world` towers sends per sample at each cross
 * link, averaged over the row: forward its part of the layer's input to each
 * other tower, backward the others' parts of that input's gradient, plus its
 * part of the logits forward. With towers of equal width (the 2012 net on 2)
 * every worker sends exactly this: 2 × one tower's output at conv3, fc6,
 * fc7, fc8, and classes/2 for the logits.
 */
export function crossLinkFloatsPerSample(spec: ModelSpec, world = 2): { links: Array<{ link: string; floats: number }>; total: number } {
  positiveInteger('model-parallel world', world);
  const links = modelExchanges(spec).map((x) => ({ link: x.link, floats: meanExchangeFloatsPerSample(x, world) }));
  return { links, total: sum(links.map((l) => l.floats)) };
}

/**
 * Floats one member of a group sends for one exchange of a tensor divided
 * between the group in `parts` (floats each, one per member, in member
 * order): forward its own part to each of the others; if `backward`, each
 * other member's part of the gradient back to that member.
 */
function partFloats(parts: readonly number[], own: number, backward: boolean): number {
  const mine = parts[own]!;
  return (parts.length - 1) * mine + (backward ? sum(parts) - mine : 0);
}

/** A worker's ring buckets (if it has a ring) and its exchanges, buckets first. */
function ringAndLinks(ring: BytesPerStep | undefined, links: Record<string, number>): BytesPerStep {
  const sentByLink = { ...ring?.sentByLink, ...links };
  return { bytesSentPerStep: sum(Object.values(sentByLink)), sentByLink };
}

/** The names of tower t's parameters (`conv1.t2.kernel`, `conv1.t2.bias`, …): what its replicas all-reduce. */
function towerParamNames(spec: ModelSpec, t: number): Set<string> {
  return new Set(spec.layers.filter(isWeighted).flatMap((l) => [paramName(spec, l.name, t, 'kernel'), paramName(spec, l.name, t, 'bias')]));
}

/** The buckets tower t's replicas all-reduce (model mode with replicas): its gradients only, planned as data mode plans all of them. */
export function towerBuckets(spec: ModelSpec, bucketBytes: number, tower: number): Bucket[] {
  const mine = towerParamNames(spec, tower);
  return gradientBuckets(spec, bucketBytes, (p) => mine.has(p));
}

/**
 * Bytes worker `rank` = r·T + t of the model-parallel grid sends per step:
 * `replicas` (R) rows of T = spec.towers workers, row r training samples
 * [r·B/R, (r+1)·B/R) (b = B/R rows), worker t of a row holding tower t.
 *   each cross link L (conv3, fc6, fc7, fc8 in the 2012 net): forward its
 *     tower's part of L's input, [b, tw(L−1, t)], to each of the T−1 others;
 *     backward each other tower t' its part [b, tw(L−1, t')] of the gradient
 *   'logits': its part of the last layer's output, [b, tw(last, t)], to each
 *     of the T−1 others, forward only
 *   'bucket k' (R > 1): the ring over the R replicas of tower t (group rank
 *     r) of tower t's gradients only, planned as data mode plans all of them
 * (tw(i, t): floats per sample of tower t's output of layer i.) Towers differ
 * by a kernel or unit where T does not divide a layer, and so may their bytes.
 */
export function modelParallelBytes(
  spec: ModelSpec, world: number, batch: number, bucketBytes: number, rank = 0, wire: WireType = 'fp32', replicas = 1,
): BytesPerStep {
  const towers = spec.towers;
  if (towers < 2) throw new Error(`model-parallel: expected a net of 2 or more towers (--towers divides the original net), got the ${spec.arch} net of ${towers}`);
  positiveInteger('model-parallel replicas', replicas);
  if (world !== replicas * towers) {
    throw new Error(`model-parallel: expected ${replicas} replica${replicas === 1 ? '' : 's'} × ${towers} towers = ${replicas * towers} workers, got ${world}`);
  }
  rankOf('model-parallel', rank, world);
  equalShards(`model-parallel over ${replicas} replica${replicas === 1 ? '' : 's'}`, batch, replicas);
  const rows = batch / replicas;
  const row = Math.floor(rank / towers);
  const tower = rank % towers;
  const shapes = shapesOf(spec);
  const links: Record<string, number> = {};
  for (const x of modelExchanges(spec)) {
    const parts = shapes[x.index - 1]!.towers.map((s) => rows * product(s.output));
    links[x.link] = partFloats(parts, tower, x.backward) * WIRE_BYTES[wire];
  }
  const ring = replicas > 1 ? bucketBytesSent(towerBuckets(spec, bucketBytes, tower), replicas, row, wire) : undefined;
  return ringAndLinks(ring, links);
}

/** Whether a parameter is the trunk's: hybrid's data-parallel layers, those before the first dense one (every tower's convs). */
export function isTrunkParam(spec: ModelSpec): (param: string) => boolean {
  const trunk = new Set(spec.layers.slice(0, firstDense(spec)).map((l) => l.name));
  return (param) => trunk.has(layerOfParam(param));
}

/**
 * Bytes hybrid worker `rank` (k of N) sends per step: the trunk's gradients
 * on the ring over all N ('bucket k', planned like data mode's but over the
 * trunk's parameters only), plus the head's exchanges (hybridExchanges):
 *   first dense layer ('fc6'): its B/N samples' features [B/N, F] to each of
 *     the N−1 others forward, each other worker's rows [B/N, F] of the
 *     gradient back: 2(N−1)·B/N·F floats
 *   each later dense layer L: its units u_k of the previous dense layer's
 *     output, [B, u_k], to each of the N−1 others forward, the others' units
 *     [B, u_j] of the gradient back: (N−1)·B·u_k + B·(U − u_k)
 *   'logits': [B, u_k] of the last dense layer to each of the N−1 others
 * where u_k = splitUnits(U, N)[k] of a dense layer's U units (over all
 * towers: the head's division ignores spec.towers).
 */
export function hybridBytes(spec: ModelSpec, world: number, batch: number, bucketBytes: number, rank = 0, wire: WireType = 'fp32'): BytesPerStep {
  positiveInteger('hybrid world', world);
  rankOf('hybrid', rank, world);
  equalShards(`hybrid over ${world} workers`, batch, world);
  const dense = spec.layers.flatMap((l, i) => (l.kind === 'dense' ? [{ index: i, name: l.name, units: l.units }] : []));
  const narrowest = dense.reduce((a, d) => (d.units < a.units ? d : a));
  if (world > narrowest.units) {
    throw new Error(`hybrid: expected at most ${narrowest.units} workers (${narrowest.name} has ${narrowest.units} units, one or more per worker), got ${world}`);
  }
  const links: Record<string, number> = {};
  for (const x of hybridExchanges(spec)) {
    // The dense layer whose units are this input's columns; none before the first: its input is divided by samples.
    const owner = dense.filter((d) => d.index < x.index).at(-1);
    const parts = owner === undefined
      ? Array.from({ length: world }, () => (batch / world) * x.floatsPerSample)
      : splitUnits(owner.units, world).map((u) => batch * u);
    links[x.link] = partFloats(parts, rank, x.backward) * WIRE_BYTES[wire];
  }
  const ring = bucketBytesSent(gradientBuckets(spec, bucketBytes, isTrunkParam(spec)), world, rank, wire);
  return ringAndLinks(ring, links);
}

/** Which worker to predict, and (model) how many replicas of the towers there are. */
export interface PredictOptions {
  /** default 0 */
  rank?: number;
  /** model mode's rows of spec.towers workers (default 1); every other mode has none */
  replicas?: number;
}

/**
 * Bytes worker `opts.rank` sends per step in `mode` on a `wire` wire (single:
 * none), exact to the byte: what that worker measures.
 */
export function predictBytes(
  mode: PredictMode, spec: ModelSpec, world: number, batch: number, bucketBytes: number, wire: WireType = 'fp32', opts: PredictOptions = {},
): BytesPerStep {
  const { rank = 0, replicas } = opts;
  if (mode !== 'model' && replicas !== undefined && replicas !== 1) {
    throw new Error(`${mode}: expected no replicas (only model mode replicates its towers), got ${replicas}`);
  }
  switch (mode) {
    case 'single':
      if (world !== 1) throw new Error(`single: expected 1 worker, got ${world}`);
      rankOf('single', rank, world);
      return { bytesSentPerStep: 0, sentByLink: {} };
    case 'data':
      positiveInteger('data-parallel world', world);
      equalShards(`data-parallel over ${world} workers`, batch, world);
      return dataParallelBytes(spec, world, bucketBytes, rank, wire);
    case 'model': return modelParallelBytes(spec, world, batch, bucketBytes, rank, wire, replicas);
    case 'hybrid': return hybridBytes(spec, world, batch, bucketBytes, rank, wire);
  }
}

/** predictBytes for every rank, 0..world−1 (model: rank r·T + t is replica r's tower t). */
export function predictBytesByRank(
  mode: PredictMode, spec: ModelSpec, world: number, batch: number, bucketBytes: number, wire: WireType = 'fp32', replicas?: number,
): BytesPerStep[] {
  positiveInteger('world', world);
  return Array.from({ length: world }, (_, rank) => predictBytes(mode, spec, world, batch, bucketBytes, wire, { rank, ...(replicas === undefined ? {} : { replicas }) }));
}
