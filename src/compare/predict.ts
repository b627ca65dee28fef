/**
 * How long a step of each way of training should take, before it runs, from
 * per-layer compute times measured in one process and a measured link (the
 * bytes it moves come from predict-bytes.ts); and the forecast beyond this
 * machine.
 * Pure functions of numbers: nothing here builds tensors, opens sockets or
 * reads files.
 *
 * Modes:
 *   single - one process, the whole batch.
 *   data   - N replicas, ZeRO-1 over a ring (src/parallel/data-parallel.ts).
 *   model  - the 2012 split (src/parallel/model-parallel.ts), R × T workers:
 *            the net divided into T ≥ 2 towers (--towers), one worker each,
 *            in R replicas (rows) that each train B/R samples and all-reduce
 *            each tower's gradients over a ring of its R copies. At each
 *            cross link a worker sends its tower's part of the input to the
 *            other T−1 towers of its row forward and their parts of the
 *            gradient back. The step time here prices one row (R = 1) of
 *            T = N/R towers (the forecast's N workers in one row, R = 1), every
 *            worker at the mean over the row's ranks, with each tower's
 *            ring over its R replicas after backward (R > 1, the net's own
 *            towers); a one-tower net (d2l), never run split, is priced as
 *            if its layers were divided N ways.
 *   hybrid - Krizhevsky 2014, "One weird trick for parallelizing
 *            convolutional neural networks" (src/parallel/hybrid.ts), N
 *            workers: every worker holds the whole trunk (the conv layers,
 *            all towers) for its B/N samples, its gradients on a ring over
 *            all N; the dense layers (the head) are divided N ways by units
 *            and run on all B samples, their inputs exchanged between the
 *            workers forward and their gradients backward.
 * predict-bytes.ts counts each rank's bytes exactly; the time here uses the
 * mean over the ranks ((N−1)/N of each exchanged tensor), which is what
 * those exact counts average to.
 *
 * Units: ms for time, bytes for volume, bytes per second for bandwidth;
 * "floats" are float32 values (4 bytes).
 */
import { parameterShapes } from '../model/build.js';
import { shapesOf } from '../model/shapes.js';
import { isWeighted, type LayerSpec, type ModelSpec } from '../model/spec.js';
import type { Bucket } from '../wire/ring-allreduce.js';
import {
  chunkFloats, firstDense, FLOAT_BYTES, gradientBuckets, hybridExchanges, isTrunkParam, layerOfParam, modelExchanges,
  nonNegative, positive, positiveInteger, product, sum, towerBuckets, type Exchange, type PredictMode,
} from './predict-bytes.js';
import type { ForecastPoint, LayerTiming, LinkMeasure } from './types.js';
import type { StepOverheads } from './types.js';
import { WIRE_BYTES } from '../wire/bf16.js';
import type { WireType } from '../config/choices.js';

const MS_PER_S = 1000;

// ---------------------------------------------------------------------------
// Step time
// ---------------------------------------------------------------------------

export interface StepInputs {
  /** per-layer compute of one step in one process at `measuredBatch`, named as the spec's layers */
  layers: LayerTiming[];
  /** the same at a smaller batch (`halfBatch`), when measured: separates each layer's fixed cost from its per-sample cost */
  layersAtHalfBatch?: LayerTiming[];
  /** the batch `layersAtHalfBatch` was timed at (default: half of `measuredBatch`) */
  halfBatch?: number;
  link: LinkMeasure;
  /** workers (ignored by single) */
  world: number;
  /** global batch of the step to predict */
  batch: number;
  /** the batch `layers` were timed at */
  measuredBatch: number;
  spec: ModelSpec;
  /** the ring's bucket size (data, hybrid) */
  bucketBytes: number;
  /** the SGD update's cost per parameter it updates, ms (default 0: the update is left out) */
  optimizerMsPerParam?: number;
  /** a step's host work besides its layers (profile-overheads.ts), already slowed like the layers; default: none */
  overheads?: StepOverheads;
  /** how values travel (default fp32): bf16 sends every bucket and exchange in half the bytes */
  wire?: WireType;
  /** model: rows of world/replicas towers (the net's own towers when above 1), each training batch/replicas samples; default 1 */
  replicas?: number;
}

/**
 * A spec layer with its measured compute at `measuredBatch` (0 for layers the
 * timing leaves out), and the part of it that does not shrink with the work
 * (kernel launches, per-call overheads, weight-sized passes): known when the
 * layer was also timed at half the batch, else 0 (purely proportional).
 */
interface TimedLayer {
  layer: LayerSpec;
  forwardMs: number;
  backwardMs: number;
  forwardFixedMs: number;
  backwardFixedMs: number;
}

/** A layer's forward at `scale` of the timed work: fixed + (timed − fixed)·scale. */
const fwd = (l: TimedLayer, scale: number): number => l.forwardFixedMs + (l.forwardMs - l.forwardFixedMs) * scale;
const bwd = (l: TimedLayer, scale: number): number => l.backwardFixedMs + (l.backwardMs - l.backwardFixedMs) * scale;

/**
 * The batch-independent part of a time measured at batch B (t_B) and at a
 * smaller batch b (t_b), from t(x) = a + c·x through both points:
 * a = (t_b·B − t_B·b) / (B − b), kept within [0, t_B] (timing noise can put
 * t_b above t_B or below t_B·b/B). With b = B nothing separates them: 0.
 */
function fixedPart(full: number, small: number, B: number, b: number): number {
  if (b >= B) return 0;
  return Math.min(full, Math.max(0, (small * B - full * b) / (B - b)));
}

/**
 * The spec's layers, in order, with the times measured for them. Layers
 * without weights may be missing (a timer may fold pooling into the conv
 * before it); a weighted layer may not, since its gradients' bucket waits
 * for it, and a timing for a layer the spec lacks means another net was timed.
 */
function timedLayers(spec: ModelSpec, timings: LayerTiming[], smaller: LayerTiming[], B: number, b: number): TimedLayer[] {
  const half = new Map(smaller.map((t) => [t.name, t]));
  const shapes = shapesOf(spec);
  const byName = new Map<string, LayerTiming>();
  for (const t of timings) {
    if (byName.has(t.name)) throw new Error(`layer timings: '${t.name}' appears twice`);
    if (!shapes.some((s) => s.layer.name === t.name)) {
      throw new Error(`layer timing '${t.name}': expected a layer of the ${spec.arch} net (${spec.layers.map((l) => l.name).join(', ')})`);
    }
    nonNegative(`layer timing '${t.name}' forwardMs`, t.forwardMs);
    nonNegative(`layer timing '${t.name}' backwardMs`, t.backwardMs);
    byName.set(t.name, t);
  }
  return shapes.map((s) => {
    const t = byName.get(s.layer.name);
    if (t === undefined) {
      if (isWeighted(s.layer)) throw new Error(`layer timings: expected a timing for ${s.layer.name} (it owns weights), got none`);
      return { layer: s.layer, forwardMs: 0, backwardMs: 0, forwardFixedMs: 0, backwardFixedMs: 0 };
    }
    const params = s.params;
    if (t.params !== params) throw new Error(`layer timing '${t.name}': ${t.params} parameters, expected ${params} (all towers): was another net timed?`);
    const h = half.get(t.name);
    return {
      layer: s.layer, forwardMs: t.forwardMs, backwardMs: t.backwardMs,
      forwardFixedMs: h ? fixedPart(t.forwardMs, h.forwardMs, B, b) : 0, backwardFixedMs: h ? fixedPart(t.backwardMs, h.backwardMs, B, b) : 0,
    };
  });
}

/** One message of `bytes` over the link: latency, then bytes at the link's bandwidth. */
export function transferMs(bytes: number, link: LinkMeasure): number {
  return link.latencyMs + (bytes / link.bandwidth) * MS_PER_S;
}

const totalParams = (spec: ModelSpec): number => sum([...parameterShapes(spec).values()].map(product));

/** The index of a largest chunk (chunkRange's floors make the sizes differ by at most one float). */
function largestChunk(size: number, world: number): number {
  let best = 0;
  for (let c = 1; c < world; c++) if (chunkFloats(size, world, c) > chunkFloats(size, world, best)) best = c;
  return best;
}

/**
 * One bucket's collective on the link, ms: 2(N−1) ring rounds, in each of
 * which every worker sends one chunk to its successor at once (a round lasts
 * as long as the largest chunk, ceil(size/N) floats), and between the halves
 * the SGD step of the owned chunk (ZeRO-1; the slowest replica's, the largest).
 */
function ringBucketMs(size: number, world: number, link: LinkMeasure, optimizerMsPerParam: number): number {
  const largest = chunkFloats(size, world, largestChunk(size, world));
  return 2 * (world - 1) * transferMs(largest * FLOAT_BYTES, link) + optimizerMsPerParam * largest;
}

/**
 * Backward through `layers` (in forward order) from `startMs`, each layer's
 * backward scaled by `scale`, with the ring overlapped: a bucket may start
 * once backward has passed every layer it holds gradients of; buckets go over
 * the link one after another in order (fc8's first); returns when both
 * backward and the last bucket's all-gather are done.
 */
function backwardWithRing(
  layers: TimedLayer[], startMs: number, scale: number,
  buckets: Bucket[], world: number, link: LinkMeasure, optimizerMsPerParam: number,
): number {
  const gradReadyMs = new Map<string, number>();
  let t = startMs;
  for (const l of [...layers].reverse()) {
    t += bwd(l, scale);
    gradReadyMs.set(l.layer.name, t);
  }
  const backwardEndMs = t;
  let linkFreeMs = startMs;
  for (const b of buckets) {
    const readyMs = Math.max(...b.params.map((p) => gradReadyMs.get(layerOfParam(p.name))!));
    linkFreeMs = Math.max(readyMs, linkFreeMs) + ringBucketMs(b.size, world, link, optimizerMsPerParam);
  }
  return Math.max(backwardEndMs, linkFreeMs);
}

/** An exchange over `world` workers at global batch `batch`: N−1 sends (one to each other worker) of 1/N of the tensor, the mean part. */
function exchangeMs(x: Exchange, world: number, batch: number, link: LinkMeasure): number {
  return (world - 1) * transferMs((x.floatsPerSample * batch * FLOAT_BYTES) / world, link);
}

/**
 * Forward then backward through `layers` with the exchanges in between, not
 * overlapped with compute (one micro-batch: the next layer needs what comes).
 * `exchanges` are keyed by the index of the layer that reads them.
 */
function splitLayersMs(
  layers: Array<TimedLayer & { index: number }>, exchanges: Exchange[], scale: number, world: number, batch: number, link: LinkMeasure,
): number {
  const at = new Map(exchanges.map((x) => [x.index, x]));
  let t = 0;
  for (const l of layers) t += (at.has(l.index) ? exchangeMs(at.get(l.index)!, world, batch, link) : 0) + fwd(l, scale);
  for (const x of exchanges) if (!layers.some((l) => l.index === x.index)) t += exchangeMs(x, world, batch, link); // the logits
  for (const l of [...layers].reverse()) {
    const x = at.get(l.index);
    t += bwd(l, scale) + (x?.backward ? exchangeMs(x, world, batch, link) : 0);
  }
  return t;
}

/**
 * Building a batch of `samples`: a fixed part and a per-sample part, from
 * the pipeline timed at the measured batch and at half of it.
 */
function inputMs(i: Required<StepInputs>, samples: number): number {
  const o = i.overheads;
  const fixed = fixedPart(o.inputMs, o.inputMsAtHalfBatch, i.measuredBatch, i.halfBatch);
  return fixed + (o.inputMs - fixed) * (samples / i.measuredBatch);
}

/** The split's host work at its cross links: every float of each gathered tensor read out or made a tensor, both ways. */
function moveMs(exchanges: Exchange[], batch: number, i: Required<StepInputs>): number {
  return sum(exchanges.map((x) => x.floatsPerSample * batch)) * i.overheads.moveMsPerFloat;
}

/** single: the batch, then Σ (forward + backward) × B/B₀, plus the update of every parameter. */
function singleMs(layers: TimedLayer[], i: Required<StepInputs>): number {
  const scale = i.batch / i.measuredBatch;
  return inputMs(i, i.batch) + sum(layers.map((l) => fwd(l, scale) + bwd(l, scale))) + i.optimizerMsPerParam * totalParams(i.spec);
}

/**
 * data: one replica's forward on B/N samples, then its backward with the
 * ring overlapped (backwardWithRing over all parameters' buckets):
 *   step = max(backward end, last bucket's all-gather end)
 *   bucket k: start_k = max(ready_k, end_{k−1}),
 *             end_k = start_k + 2(N−1)·(latency + ceil(L_k/N)·4 / bandwidth) + optimizer·ceil(L_k/N)
 *   ready_k = when backward has passed every layer bucket k holds (fc8's first)
 */
function dataMs(layers: TimedLayer[], i: Required<StepInputs>): number {
  const scale = i.batch / i.world / i.measuredBatch;
  const forwardMs = inputMs(i, i.batch / i.world) + sum(layers.map((l) => fwd(l, scale)));
  return backwardWithRing(layers, forwardMs, scale, gradientBuckets(i.spec, i.bucketBytes), i.world, i.link, i.optimizerMsPerParam) +
    i.overheads.ringMsPerParam * totalParams(i.spec);
}

/**
 * model, R rows (`replicas`) of T = N/R towers, each row on b = B/R samples:
 * every worker computes its tower, 1/T of every layer, on its row's batch
 * (layer time × b/B₀ / T), and waits at each cross link, forward and
 * backward, for (T−1)·(latency + (floats per sample)·b/T·4 / bandwidth) —
 * its tower's part to each other tower of its row, at the mean part; for
 * T = 2 one send of the link's bytes. Then R = 1: it updates its P/T
 * parameters; R > 1: its tower's buckets go round the ring of the tower's R
 * replicas once backward is done (model-parallel.ts does not overlap them),
 * each bucket's owned chunk updated between the halves (ZeRO-1); the step
 * waits for the slowest tower's ring.
 */
function modelMs(layers: TimedLayer[], i: Required<StepInputs>): number {
  const replicas = i.replicas;
  const towers = i.world / replicas;
  const rowBatch = i.batch / replicas;
  const scale = rowBatch / i.measuredBatch / towers;
  const indexed = layers.map((l, index) => ({ ...l, index }));
  const exchanges = modelExchanges(i.spec);
  const params = totalParams(i.spec);
  const updateMs = replicas === 1
    ? i.optimizerMsPerParam * params / towers
    : Math.max(...Array.from({ length: towers }, (_, t) => sum(towerBuckets(i.spec, i.bucketBytes, t).map((b) => ringBucketMs(b.size, replicas, i.link, i.optimizerMsPerParam))))) +
      i.overheads.ringMsPerParam * params / towers;
  return inputMs(i, rowBatch) + splitLayersMs(indexed, exchanges, scale, towers, rowBatch, i.link) + moveMs(exchanges, rowBatch, i) + updateMs;
}

/**
 * hybrid (Krizhevsky 2014), N workers, global batch B, B₀ the timed batch:
 *   conv forward on B/N samples:                 Σ_conv fwd × (B/N)/B₀
 *   fc forward on all B, 1/N of each fc's units:  Σ_fc fwd × B/B₀ / N
 *     + before fc6: x6 [B, D], B/N rows each      (N−1)·(lat + B/N·D·4/bw)
 *     + before fc7, fc8: h [B, H], H/N units each (N−1)·(lat + B/N·H·4/bw)
 *     + the logits [B, C]                         (N−1)·(lat + B/N·C·4/bw)
 *     (each worker's part to each other worker, at the mean part)
 *   fc backward, the same compute and the same exchanges (the others'
 *     parts of the gradient back to them) but none for the logits
 *   conv backward on B/N samples, with the conv gradients' buckets on the
 *     ring overlapped as in data mode (backwardWithRing); the link is free
 *     for them only once the fc exchanges are over
 *   + the update of the conv chunks (inside the ring) and of this worker's
 *     1/N of the fc parameters: optimizer × P_fc / N
 */
function hybridMs(layers: TimedLayer[], i: Required<StepInputs>): number {
  const split = firstDense(i.spec);
  const conv = layers.slice(0, split);
  const fc = layers.slice(split).map((l, k) => ({ ...l, index: split + k }));
  // conv: B/N samples through the whole layer; fc: all B samples through 1/N
  // of its units. Both are B/(N·B₀) of the timed layer.
  const scale = i.batch / i.world / i.measuredBatch;
  const convForwardMs = inputMs(i, i.batch / i.world) + sum(conv.map((l) => fwd(l, scale)));
  const fcMs = splitLayersMs(fc, hybridExchanges(i.spec), scale, i.world, i.batch, i.link) + moveMs(hybridExchanges(i.spec), i.batch, i);
  const trunk = isTrunkParam(i.spec);
  const buckets = gradientBuckets(i.spec, i.bucketBytes, trunk);
  const endMs = backwardWithRing(conv, convForwardMs + fcMs, scale, buckets, i.world, i.link, i.optimizerMsPerParam);
  const fcParams = sum([...parameterShapes(i.spec)].filter(([n]) => !trunk(n)).map(([, s]) => product(s)));
  return endMs + i.optimizerMsPerParam * fcParams / i.world + i.overheads.ringMsPerParam * (totalParams(i.spec) - fcParams);
}

const NO_OVERHEADS: StepOverheads = { inputMs: 0, inputMsAtHalfBatch: 0, moveMsPerFloat: 0, ringMsPerParam: 0, envelopeMs: 0 };

function checkInputs(i: StepInputs): Required<StepInputs> {
  positiveInteger('world', i.world);
  positive('batch', i.batch);
  positive('measuredBatch', i.measuredBatch);
  nonNegative('link latencyMs', i.link.latencyMs);
  positive('link bandwidth (bytes/s)', i.link.bandwidth);
  const optimizerMsPerParam = i.optimizerMsPerParam ?? 0;
  nonNegative('optimizerMsPerParam', optimizerMsPerParam);
  const halfBatch = i.halfBatch ?? i.measuredBatch / 2;
  positive('halfBatch', halfBatch);
  const overheads = i.overheads ?? NO_OVERHEADS;
  for (const [k, v] of Object.entries(overheads)) nonNegative(`overheads ${k}`, v);
  const replicas = i.replicas ?? 1;
  positiveInteger('replicas', replicas);
  // Rows of the net's own towers: a ring of tower t's replicas needs tower t's parameters.
  if (replicas > 1 && i.world !== replicas * i.spec.towers) {
    throw new Error(`replicas ${replicas}: expected ${replicas} × ${i.spec.towers} towers = ${replicas * i.spec.towers} workers, got ${i.world}`);
  }
  return { ...i, optimizerMsPerParam, layersAtHalfBatch: i.layersAtHalfBatch ?? [], halfBatch, overheads, wire: i.wire ?? 'fp32', replicas };
}

/**
 * Predicted wall time of one training step, ms. Compute is the measured
 * per-layer time scaled with the samples (and, when a layer is split, the
 * units) a worker handles: linearly, or, when the layers were also timed at
 * half the batch, as a fixed cost plus a proportional one; each worker is taken to be as fast as
 * the process the layers were timed in. See singleMs, dataMs, modelMs,
 * hybridMs for each mode's formula. Not modelled: the ring's CPU work
 * (summing chunks), serialization, and, on loopback, the workers sharing one
 * machine's cores.
 */
export function predictStepMs(mode: PredictMode, inputs: StepInputs): number {
  const checked = checkInputs(inputs);
  if (mode !== 'model' && checked.replicas !== 1) throw new Error(`${mode}: expected no replicas (only model mode replicates its towers), got ${checked.replicas}`);
  // The same values in half the bytes take as long as on a link of twice the bandwidth, same latency
  // (the encode and decode passes, ~2 ns a value on one core, are left out).
  const i = checked.wire === 'bf16' ? { ...checked, link: { ...checked.link, bandwidth: checked.link.bandwidth * (FLOAT_BYTES / WIRE_BYTES.bf16) } } : checked;
  const layers = timedLayers(i.spec, i.layers, i.layersAtHalfBatch, i.measuredBatch, i.halfBatch);
  switch (mode) {
    case 'single': return singleMs(layers, i);
    // A cluster's step also goes through its coordinator (the step out, every reply back).
    case 'data': return dataMs(layers, i) + (i.overheads.envelopeMs ?? 0);
    case 'model': return modelMs(layers, i) + (i.overheads.envelopeMs ?? 0);
    case 'hybrid': return hybridMs(layers, i) + (i.overheads.envelopeMs ?? 0);
  }
}

// ---------------------------------------------------------------------------
// Forecast
// ---------------------------------------------------------------------------

/** 10 Gb/s Ethernet: 1.25e9 bytes/s, 50 µs one way. */
export const LINK_10_GBIT_S: LinkMeasure = { latencyMs: 0.05, bandwidth: 1.25e9 };
/** 100 Gb/s (InfiniBand or RoCE class): 12.5e9 bytes/s, 10 µs one way. */
export const LINK_100_GBIT_S: LinkMeasure = { latencyMs: 0.01, bandwidth: 12.5e9 };
/** a GPU-to-GPU fabric (NVLink class): 300e9 bytes/s, 5 µs one way. */
export const LINK_NVLINK_CLASS: LinkMeasure = { latencyMs: 0.005, bandwidth: 300e9 };

export interface NamedLink { label: string; link: LinkMeasure }

/** The forecast's links: the one measured here, then three reference fabrics. */
export function forecastLinks(measured: LinkMeasure): NamedLink[] {
  return [
    { label: 'loopback (measured)', link: measured },
    { label: '10 Gb/s', link: LINK_10_GBIT_S },
    { label: '100 Gb/s', link: LINK_100_GBIT_S },
    { label: 'NVLink-class', link: LINK_NVLINK_CLASS },
  ];
}

export const FORECAST_WORKERS: readonly number[] = [2, 4, 8, 16];

export type ForecastInputs = Omit<StepInputs, 'world' | 'batch' | 'optimizerMsPerParam' | 'replicas'> & { optimizerMsPerParam: number };

const FORECAST_MODES = ['data', 'model', 'hybrid'] as const;

/**
 * Predicted step times of data, model and hybrid at every (workers, link,
 * batch), in that nesting order, with the fastest marked (ties go to the
 * first of data, model, hybrid). Every worker is assumed as fast as the
 * process the layers were timed in; model mode at N workers is one row of
 * N towers (see the file's comment). Batches need not divide
 * evenly: shards are taken as B/N samples.
 */
export function forecast(
  inputs: ForecastInputs, workers: readonly number[] = FORECAST_WORKERS,
  links: readonly NamedLink[] = forecastLinks(inputs.link), batches: readonly number[] = [inputs.measuredBatch],
): ForecastPoint[] {
  const points: ForecastPoint[] = [];
  for (const world of workers) {
    for (const { label, link } of links) {
      for (const batch of batches) {
        const at = { ...inputs, world, batch, link };
        const stepMs = { data: predictStepMs('data', at), model: predictStepMs('model', at), hybrid: predictStepMs('hybrid', at) };
        const best = FORECAST_MODES.reduce((a, m) => (stepMs[m] < stepMs[a] ? m : a));
        points.push({ workers: world, link: label, batch, stepMs, best });
      }
    }
  }
  return points;
}

/** (predicted − measured) / measured: positive when the model predicts too slow a step. */
export function relativeError(measured: number, predicted: number): number {
  if (!(measured > 0) || !Number.isFinite(measured)) throw new Error(`relativeError: expected a positive finite measured value, got ${measured}`);
  return (predicted - measured) / measured;
}
