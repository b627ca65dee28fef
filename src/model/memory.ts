/**
 * The memory one process needs to train a net, estimated from the layer
 * shapes before anything is built, and the limit it is checked against. A
 * too-large --resolution or --width is refused with how much it would need
 * instead of dying mid-step (wasm: "memory access out of bounds" once its
 * heap is full; every backend: "Invalid typed array length" past 2^32
 * elements).
 */
import { totalmem } from 'node:os';
import { autoEndsOnWasm } from '../backend.js';
import type { TrainConfig } from '../config/train.js';
import { UsageError } from '../errors.js';
import { shapesOf } from './shapes.js';
import type { ModelSpec } from './spec.js';

const F32 = 4; // bytes
/** tfjs-backend-wasm 4.22's heap cannot grow past this (its getHeapMax(): 65,536 short of 4 GiB), bytes. */
export const WASM_HEAP_BYTES = 4_294_901_760;
/** Copies of the parameters a training step holds: weights, gradients, momentum, the update's temporary. */
const PARAM_COPIES = 4;
/** The most elements one JavaScript typed array may have (V8 on 64-bit). */
const MAX_TYPED_ARRAY = 2 ** 32;
/**
 * Measured peak over the activations counted below: the wasm heap after two
 * training steps of d2l at width 0.25, batch 64, on 67, 131, 259 and 515 px
 * was 2.48, 2.34, 2.29 and 2.35 times the estimate (the backend's transposes
 * and pads, and the heap's own growth steps). 2.6 covers that; it only
 * decides where a refusal starts.
 */
const OVERHEAD = 2.6;

export interface MemoryNeed {
  /** estimated peak bytes of a training step (the larger of train and evaluation) */
  bytes: number;
  /** elements of the largest single tensor */
  largestTensor: number;
  /** which tensor that is, for the message */
  largestName: string;
}

/**
 * Peak bytes of one training step in one process holding `towers` towers of
 * `spec` (the whole net: spec.towers) on `batch` samples, and of evaluation
 * on `evalBatch`:
 *   train  OVERHEAD × (every layer's output kept for backward [B, ...] + the
 *          largest input + output gradient pair at once) + PARAM_COPIES × weights
 *   eval   OVERHEAD × the largest input + output pair [E, ...] + weights
 */
export function estimateMemory(spec: ModelSpec, batch: number, evalBatch: number, towers: number = spec.towers): MemoryNeed {
  const shapes = shapesOf(spec);
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const input = size(spec.input);
  let kept = input;
  let pair = 0;
  let largest = { n: input, name: 'the input' };
  let prev = input;
  let params = 0;
  const share = towers / spec.towers; // a process holding k of N towers holds about k/N of every layer
  for (const l of shapes) {
    const out = Math.ceil(size(l.outputShape) * share);
    kept += out;
    pair = Math.max(pair, prev + out);
    if (out > largest.n) largest = { n: out, name: `${l.layer.name}'s output` };
    prev = out;
    params += Math.ceil(l.params * share);
  }
  const train = (OVERHEAD * (kept + pair) * batch + PARAM_COPIES * params) * F32;
  const evaluate = (OVERHEAD * pair * evalBatch + params) * F32;
  return {
    bytes: Math.max(train, evaluate),
    largestTensor: largest.n * Math.max(batch, evalBatch),
    largestName: largest.name,
  };
}

/** The samples one process computes at once: the global batch, or its shard (data, hybrid; a row's in model mode with replicas). */
export function perProcessBatch(mode: string, batch: number, workers: number, replicas = 1): number {
  // data: a replica's shard; hybrid: the conv layers' shard (they hold the activations that count); model: a row's shard
  if ((mode === 'data' || mode === 'hybrid') && workers > 0) return Math.ceil(batch / workers);
  return mode === 'model' ? Math.ceil(batch / replicas) : batch;
}

/**
 * Where one process's tensors live and how much fits: wasm's heap when the
 * backend is (or `auto` will be, for a process with or without a GPU) wasm,
 * else this host's memory. A GPU's own memory is not known before its
 * backend opens; there the host's memory is the bound checked here.
 */
export function memoryLimit(backend: TrainConfig['backend'], gpu: boolean): { bytes: number; what: string } {
  const host = { bytes: totalmem(), what: "this host's memory" };
  const wasm = { bytes: Math.min(WASM_HEAP_BYTES, host.bytes), what: "the wasm backend's heap" };
  if (backend === 'wasm' || (backend === 'auto' && autoEndsOnWasm(gpu))) return wasm;
  return host;
}

/** The processes of a run on this host: how many, and whether they are given a GPU. */
export interface ProcessesHere { count: number; gpu: boolean }

const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;

/**
 * Refuses a run whose net cannot fit, before it is built: the message says
 * how much it would need, what holds less, and which knobs shrink it.
 * `batch` is what one process computes at once (perProcessBatch).
 */
export function checkMemory(spec: ModelSpec, cfg: TrainConfig, batch: number, towers: number, here: ProcessesHere): void {
  const need = estimateMemory(spec, batch, cfg.evalBatch, towers);
  const shrink = `lower --resolution (${cfg.resolution}), --width (${cfg.width}), --batch (${cfg.batch}) or --eval-batch (${cfg.evalBatch})`;
  if (need.largestTensor > MAX_TYPED_ARRAY) {
    throw new UsageError(`${spec.arch} AlexNet at ${cfg.resolution}×${cfg.resolution}, width ${cfg.width}: ${need.largestName} would have ` +
      `${need.largestTensor.toExponential(2)} elements, more than one array can hold (2^32): ${shrink}`);
  }
  const limit = memoryLimit(cfg.backend, here.gpu);
  const what = `${spec.arch} AlexNet at ${cfg.resolution}×${cfg.resolution}, width ${cfg.width}, ${batch} samples per process`;
  if (need.bytes > limit.bytes) {
    throw new UsageError(`${what} would need about ${gib(need.bytes)} per process, more than ${limit.what} (${gib(limit.bytes)}): ${shrink}`);
  }
  const host = totalmem();
  if (here.count > 1 && need.bytes * here.count > host) {
    throw new UsageError(`${what} would need about ${gib(need.bytes)} in each of the ${here.count} processes on this host, ` +
      `${gib(need.bytes * here.count)} in all, more than this host's memory (${gib(host)}): ${shrink}, or run fewer workers here`);
  }
}
