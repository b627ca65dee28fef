/**
 * What `splitnet compare` measures, predicts and writes (compare.json). The
 * terminal table, report.html and each mode's trace.json are all drawn from
 * this one object.
 */
import type { Mode } from '../run/loop.js';

/**
 * What compare runs: every layout, and 'grid', the layout model with
 * replicas (rows of the net's towers; mode-plan.ts says how many workers each takes).
 */
export const COMPARE_MODES = ['single', 'data', 'model', 'hybrid', 'grid'] as const;
export type CompareMode = (typeof COMPARE_MODES)[number];

/** Bytes one worker sends per step, in all and by link or bucket. */
export interface BytesSent {
  bytesSentPerStep: number;
  sentByLink: Record<string, number>;
}

/** Milliseconds of one step, split by what the process was doing (means over the timed steps). */
export interface StepSplit {
  /** forward and backward kernels (and the data pipeline) */
  compute: number;
  /** handing bytes to the sockets (serializing, copying into frames) */
  send: number;
  /** waiting on a peer: a cross link, or the part of the all-reduce not hidden behind backward */
  wait: number;
  /** the SGD update */
  optimizer: number;
}

/** One span on a worker's timeline, for the Chrome trace. */
export interface Span {
  /** 'compute' | 'send' | 'wait' | 'optimizer' */
  cat: keyof StepSplit;
  /** e.g. 'forward', 'backward', 'conv3 fwd', 'bucket 2 reduce-scatter', 'sgd' */
  name: string;
  /** milliseconds since the run's start on that process's clock */
  startMs: number;
  durMs: number;
  step: number;
}

export interface WorkerMeasure {
  rank: number;
  /** means over the timed steps */
  stepMs: StepSplit;
  bytesSentPerStep: number;
  bytesReceivedPerStep: number;
  /** bytes sent per step by link ('conv3', 'fc6', ...) or bucket ('bucket 0', ...) */
  sentByLink: Record<string, number>;
  /** CPU time of the worker's process per step, all threads (compute, libzmq's I/O threads, the backend's), ms; 0 where not reported */
  cpuMsPerStep: number;
  peakRssBytes: number;
  /** the backend's own tensor memory at its peak (tf.memory().numBytes) */
  peakBackendBytes: number;
  /** what predict-bytes.ts said this rank would send, exact to the byte */
  predicted: BytesSent;
  spans: Span[];
}

export interface ModeMeasure {
  mode: CompareMode;
  /** the layout it trained (grid: model); absent in files from before hybrid and grid were compared */
  layout?: Mode;
  /** model and grid: rows of the net's towers (rank = row · towers + tower) */
  replicas?: number;
  towers?: number;
  /** the link its workers talked over: 'loopback', or the rate their links were shaped to ('1gbit') */
  link: string;
  /** processes that trained */
  world: number;
  /** set when the mode ran in one process for want of devices, with the reason */
  fallback?: string;
  /** set when the mode could not run at all (e.g. model mode on the one-tower d2l net) */
  skipped?: string;
  imagesPerSec: number;
  /** wall time per step as the coordinator saw it, mean */
  stepMs: number;
  workers: WorkerMeasure[];
  /** one loss per step */
  losses: number[];
  testAccuracy: number;
  /**
   * what the models of predict.ts and predict-bytes.ts said before the run:
   * the step time, and the bytes of a worker, as the mean over the ranks
   * (each rank's exact figure is its WorkerMeasure's `predicted`)
   */
  predicted: BytesSent & { stepMs: number };
}

/** Per-layer compute time of one training step in one process (the prediction's input). */
export interface LayerTiming {
  name: string;
  forwardMs: number;
  backwardMs: number;
  /** parameters of the layer (all towers) */
  params: number;
  /** floats of the layer's output per sample (all towers) */
  outputFloats: number;
}

export interface LinkMeasure {
  /** one-way latency of a small message, ms */
  latencyMs: number;
  /** bytes per second for large messages */
  bandwidth: number;
}

export interface ForecastPoint {
  workers: number;
  /** link label: 'loopback (measured)', '10 Gb/s', '100 Gb/s', 'NVLink-class' */
  link: string;
  batch: number;
  /** predicted step time per mode, ms (hybrid: data-parallel conv, model-parallel fc) */
  stepMs: { data: number; model: number; hybrid: number };
  best: 'data' | 'model' | 'hybrid';
}

export interface CompareResult {
  date: string;
  /** the train config every mode ran (arch, width, resolution, batch, seed, steps) */
  config: { arch: string; width: number; resolution: number; batch: number; seed: number; steps: number; backend: string; wire?: string };
  /** loopback, as probed (the forecast's measured link) */
  link: LinkMeasure;
  /** every link the modes ran over, as probed: loopback first, then each shaped one */
  links: Array<LinkMeasure & { name: string }>;
  layers: LayerTiming[];
  /** a step's host work besides its layers, timed in one process (profile-overheads.ts) */
  overheads: StepOverheads;
  /** a worker among 2 in a short data-parallel run before the compared runs (calibrate.ts); absent without cluster modes */
  calibration?: { slowdown: number; envelopeMs: number };
  /** compute slowdown with n processes computing at once on this machine (the prediction's input for n workers here) */
  contention: Array<{ workers: number; slowdown: number }>;
  modes: ModeMeasure[];
  forecast: ForecastPoint[];
  /** the forecast model against every configuration measured: relative error of the predicted step time */
  forecastCheck: Array<{ mode: CompareMode; link: string; workers: number; oversubscribed: boolean; measuredMs: number; predictedMs: number; error: number }>;
}

/** A step's host work besides its layers, measured before the runs (profile-overheads.ts). */
export interface StepOverheads {
  /** building a batch of `batch` samples, ms, and of `halfBatch` (the fixed and per-sample parts follow from the two) */
  inputMs: number;
  inputMsAtHalfBatch: number;
  /** main-thread ms per float that crosses a cross link (read out, made a tensor, concatenated or added) */
  moveMsPerFloat: number;
  /** main-thread ms per parameter of data-parallel's host side (gradient out, chunk added, weight back in) */
  ringMsPerParam: number;
  /** a cluster step's round trip through the coordinator beyond its slowest worker, ms (calibrate.ts; 0 where not measured) */
  envelopeMs?: number;
}
