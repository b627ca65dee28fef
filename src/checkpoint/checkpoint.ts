/**
 * A checkpoint is two files in the run directory, committed together by a
 * manifest (manifest.ts: checkpoint.manifest.json names the current pair with
 * each file's size and SHA-256):
 *   checkpoint-<globalStep>-<random>.safetensors
 *       every parameter, and every SGD momentum buffer as `momentum.<name>`,
 *       in PyTorch's names and layouts
 *   checkpoint-<globalStep>-<random>.json
 *       the full training config, the data position (epoch, step), and the
 *       name, size and SHA-256 of the tensor file it belongs to
 * Each file is written durably (durable-write.ts); the manifest is written
 * last, so a full disk or a crash leaves the previous checkpoint current and
 * whole. A run directory of the older format (checkpoint.json and
 * checkpoint.safetensors, no manifest) is still read.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { DataFileError } from '../errors.js';
import type { ModelSpec } from '../model/spec.js';
import { parseTrainConfig, type TrainConfig } from '../config/train.js';
import { fsyncDir, writeFileDurably, WriteError, type WriteFs } from './durable-write.js';
import {
  checkFile, checkpointFiles, LEGACY_STATE_FILE, MANIFEST_FILE, pairNames, readCommitted, removeUncommitted, writeManifest, type Manifest,
} from './manifest.js';
import { encodeSafetensors, parseSafetensors, type NamedTensor } from './safetensors.js';
import { fromTorch, toTorch, torchName } from './torch-layout.js';

export { checkpointFiles, MANIFEST_FILE, type CheckpointFiles } from './manifest.js';
const FORMAT = 'splitnet-checkpoint';
/** v2 names its tensor file and its hash; v1 (the old format, fixed names) only the size. */
const VERSION = 2;
const LEGACY_VERSION = 1;

/** Where in the data a run stands: the next batch to train is `step` of `epoch`. */
export interface Position {
  epoch: number;
  step: number;
  /** steps taken since the start of the run */
  globalStep: number;
}

/**
 * What the epoch record and the summary add up over the steps trained so
 * far: saved with the position, so a resumed epoch reports exactly what the
 * uninterrupted one does (its mean train loss counts the steps before the
 * stop too).
 */
export interface RunTotals {
  /** the current epoch's sum of step losses (float64, in step order) and its step count */
  epochLossSum: number;
  epochSteps: number;
  /** seconds spent in training steps since the run began, over every resume */
  trainSeconds: number;
}

export interface CheckpointState {
  format: typeof FORMAT;
  version: number;
  config: TrainConfig;
  position: Position;
  /** absent in checkpoints written before totals were saved */
  totals?: RunTotals;
  /** the tensor file this state belongs to (the old format's fixed name for v1) */
  tensorsFile: string;
  tensorsBytes: number;
  /** absent in the old format */
  tensorsSha256?: string;
  savedAt: string;
}

/** A checkpoint that could not be written: the message says how far it got and that the previous one is still current. */
export class CheckpointWriteError extends Error {
  override readonly name = 'CheckpointWriteError';
}

/** A parameter (or momentum buffer) in our layout, under our name. */
export interface PlainTensor { name: string; shape: number[]; data: Float32Array }

/** What training state is: every parameter, and the SGD momentum buffers that exist, each under its parameter's name. */
export interface TrainState { params: PlainTensor[]; momentum: PlainTensor[] }

/** The one place the `momentum.<name>` convention lives (checkpoint files and state messages). */
const MOMENTUM = 'momentum.';
export const momentumKey = (name: string): string => `${MOMENTUM}${name}`;

/** A state as one list of named tensors (a message's frames): parameters, then `momentum.<name>`. */
export function flattenState(state: TrainState): PlainTensor[] {
  return [...state.params, ...state.momentum.map((m) => ({ ...m, name: momentumKey(m.name) }))];
}

/**
 * The inverse of flattenState, merging any number of them (a replica sends
 * every parameter, a model-parallel tower half), in the model's parameter
 * order `order`.
 */
export function mergeStates(parts: PlainTensor[][], order: string[]): TrainState {
  const params: PlainTensor[] = [];
  const momentum: PlainTensor[] = [];
  for (const part of parts) {
    for (const t of part) {
      if (t.name.startsWith(MOMENTUM)) momentum.push({ ...t, name: t.name.slice(MOMENTUM.length) });
      else params.push(t);
    }
  }
  const rank = (n: string) => order.indexOf(n);
  params.sort((a, b) => rank(a.name) - rank(b.name));
  momentum.sort((a, b) => rank(a.name) - rank(b.name));
  return { params, momentum };
}

/**
 * Checks a state against the model's parameters before it is trusted (it may
 * come from other processes): every parameter exactly once with its shape,
 * momentum only for parameters, with their shapes. Throws with the reason.
 */
export function checkState(state: TrainState, shapes: Map<string, number[]>): void {
  const check = (t: PlainTensor, what: string, seen: Set<string>) => {
    const shape = shapes.get(t.name);
    if (shape === undefined) throw new Error(`${what} ${t.name} is not a parameter of this model`);
    if (seen.has(t.name)) throw new Error(`${what} ${t.name} appears twice`);
    seen.add(t.name);
    const size = shape.reduce((a, b) => a * b, 1);
    if (t.shape.join(',') !== shape.join(',') || t.data.length !== size) {
      throw new Error(`${what} ${t.name} is [${t.shape}] with ${t.data.length} values, the model's is [${shape}]`);
    }
  };
  const params = new Set<string>();
  for (const p of state.params) check(p, 'parameter', params);
  const missing = [...shapes.keys()].filter((n) => !params.has(n));
  if (missing.length > 0) throw new Error(`missing parameter(s) ${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', …' : ''}`);
  const momentum = new Set<string>();
  for (const m of state.momentum) check(m, 'momentum of', momentum);
}

/**
 * Writes a checkpoint of `state` and commits it (see the top of the file),
 * then removes the files of older checkpoints. `fs` is for tests: a
 * filesystem that fails.
 */
export function saveCheckpoint(
  dir: string, spec: ModelSpec, state: TrainState, config: TrainConfig, position: Position, { totals, fs }: { totals?: RunTotals; fs?: WriteFs } = {},
): void {
  const tensors: NamedTensor[] = [];
  const moms = new Map(state.momentum.map((m) => [m.name, m]));
  for (const p of state.params) {
    tensors.push(toTorch(spec, p.name, p.shape, p.data));
    const m = moms.get(p.name);
    if (m !== undefined) {
      const tm = toTorch(spec, p.name, m.shape, m.data);
      tensors.push({ ...tm, name: momentumKey(tm.name) });
    }
  }
  // New names, never the current pair's (a checkpoint at the same step twice: a stop right after a periodic one).
  let names = pairNames(position.globalStep, randomBytes(4).toString('hex'));
  while (existsSync(join(dir, names.tensors)) || existsSync(join(dir, names.state))) names = pairNames(position.globalStep, randomBytes(4).toString('hex'));
  const hadCheckpoint = existsSync(join(dir, MANIFEST_FILE)) || existsSync(join(dir, LEGACY_STATE_FILE));
  const created: string[] = [];
  const savedAt = new Date().toISOString();
  let committed: Manifest;
  try {
    const t = writeFileDurably(join(dir, names.tensors), encodeSafetensors(tensors, { format: FORMAT, arch: spec.arch }), fs);
    created.push(names.tensors);
    const meta: CheckpointState = {
      format: FORMAT, version: VERSION, config, position, ...(totals ? { totals } : {}), tensorsFile: names.tensors, tensorsBytes: t.bytes, tensorsSha256: t.sha256, savedAt,
    };
    const s = writeFileDurably(join(dir, names.state), [Buffer.from(JSON.stringify(meta, null, 2) + '\n')], fs);
    created.push(names.state);
    fsyncDir(dir, fs); // the pair's names are on disk before a manifest names them
    committed = writeManifest(dir, {
      globalStep: position.globalStep, savedAt,
      tensors: { file: names.tensors, ...t }, state: { file: names.state, ...s },
    }, fs);
  } catch (err) {
    for (const f of created) try { rmSync(join(dir, f), { force: true }); } catch { /* the write's error is the one to report */ }
    // A WriteError names its file; anything else (the directory's fsync) gets the directory.
    const message = err instanceof WriteError ? err.message : `${dir}: ${err instanceof Error ? err.message : String(err)}`;
    throw new CheckpointWriteError(`${message}; ${hadCheckpoint ? 'the previous checkpoint is untouched' : 'no checkpoint was written'}`);
  }
  fsyncDir(dir, fs); // the commit itself is durable
  removeUncommitted(dir, committed);
}

/** A config saved before `resize` existed was trained with tfjs's legacy mapping, and resumes with it. */
function withLegacyResize(config: unknown): unknown {
  return typeof config === 'object' && config !== null && !Array.isArray(config) && !('resize' in config) ? { ...config, resize: 'legacy' } : config;
}

/**
 * Reads and checks a checkpoint's state, and that it is one checkpoint: the
 * manifest, both files' sizes and hashes, and that the state was written
 * with the tensor file the manifest names. Each refusal names what was
 * expected and what was found.
 */
export function readCheckpointState(dir: string): CheckpointState {
  const files = checkpointFiles(dir);
  if (files === undefined) {
    throw new DataFileError(join(dir, MANIFEST_FILE), `not found (nor an old-format ${LEGACY_STATE_FILE}): nothing to resume in this directory`);
  }
  const { manifest: m, state: path } = files;
  let raw: Partial<CheckpointState>;
  try {
    raw = JSON.parse(readCommitted(path, m?.state).toString('utf8')) as Partial<CheckpointState>;
  } catch (err) {
    if (err instanceof DataFileError) throw err;
    throw new DataFileError(path, `not JSON (${(err as Error).message})`);
  }
  const version = m !== undefined ? VERSION : LEGACY_VERSION;
  if (raw.format !== FORMAT || raw.version !== version) {
    throw new DataFileError(path, `format ${String(raw.format)} v${String(raw.version)}: expected ${FORMAT} v${version}`);
  }
  const config = parseTrainConfig(withLegacyResize(raw.config), path);
  const p = raw.position;
  if (typeof p !== 'object' || p === null || ![p.epoch, p.step, p.globalStep].every((n) => Number.isInteger(n) && n >= 0)) {
    throw new DataFileError(path, `position ${JSON.stringify(p)}: expected {epoch, step, globalStep} as counts`);
  }
  const t = raw.totals;
  if (t !== undefined && !(typeof t === 'object' && t !== null && Number.isFinite(t.epochLossSum) && Number.isInteger(t.epochSteps) && t.epochSteps >= 0 && t.epochSteps <= p.step
    && Number.isFinite(t.trainSeconds) && t.trainSeconds >= 0)) {
    throw new DataFileError(path, `totals ${JSON.stringify(t)}: expected {epochLossSum, epochSteps ≤ step ${p.step}, trainSeconds ≥ 0} as numbers`);
  }
  if (m === undefined) {
    // The old format: the size is all that ties the two files together.
    const size = existsSync(files.tensors) ? statSync(files.tensors).size : -1;
    if (size !== raw.tensorsBytes) {
      throw new DataFileError(files.tensors, `${size < 0 ? 'missing' : `${size} bytes`}: ${LEGACY_STATE_FILE} was written with a ${raw.tensorsBytes}-byte tensor file`);
    }
    return { ...(raw as CheckpointState), config, position: p, tensorsFile: basename(files.tensors) };
  }
  const pairing = (file: unknown, bytes: unknown, hash: unknown) => `${String(file)} (${String(bytes)} bytes, SHA-256 ${String(hash).slice(0, 16)}…)`;
  if (raw.tensorsFile !== m.tensors.file || raw.tensorsBytes !== m.tensors.bytes || raw.tensorsSha256 !== m.tensors.sha256 || p.globalStep !== m.globalStep) {
    throw new DataFileError(join(dir, MANIFEST_FILE), `pairs ${m.state.file} with ${pairing(m.tensors.file, m.tensors.bytes, m.tensors.sha256)} at step ${m.globalStep}, ` +
      `but ${m.state.file} was written at step ${p.globalStep} with ${pairing(raw.tensorsFile, raw.tensorsBytes, raw.tensorsSha256)}: not one checkpoint`);
  }
  checkFile(files.tensors, m.tensors);
  return { ...(raw as CheckpointState), config, position: p };
}

/**
 * A checkpoint's tensors in our layout: every parameter in `shapes`, and the
 * momentum buffers that are present. Checks the bytes against the manifest,
 * and names and shapes against the model.
 */
export function readCheckpointTensors(dir: string, spec: ModelSpec, shapes: Map<string, number[]>): TrainState {
  const files = checkpointFiles(dir);
  if (files === undefined) throw new DataFileError(join(dir, MANIFEST_FILE), 'not found: nothing to resume in this directory');
  const path = files.tensors;
  const file = parseSafetensors(readCommitted(path, files.manifest?.tensors), path);
  const params: PlainTensor[] = [];
  const momentum: PlainTensor[] = [];
  const known = new Set<string>();
  for (const [name, shape] of shapes) {
    const size = shape.reduce((a, b) => a * b, 1);
    const expected = toTorch(spec, name, shape, new Float32Array(size)).shape;
    const take = (key: string): Float32Array | undefined => {
      known.add(key);
      const t = file.tensors.get(key);
      if (t === undefined) return undefined;
      if (t.shape.join(',') !== expected.join(',')) throw new DataFileError(path, `${key} is [${t.shape}], the model needs [${expected}]`);
      return fromTorch(spec, name, shape, t.data);
    };
    const p = take(torchName(name));
    if (p === undefined) throw new DataFileError(path, `no tensor ${torchName(name)}: the model (${spec.arch}) has that parameter`);
    params.push({ name, shape, data: p });
    const m = take(momentumKey(torchName(name)));
    if (m !== undefined) momentum.push({ name, shape, data: m });
  }
  const extra = [...file.tensors.keys()].filter((k) => !known.has(k));
  if (extra.length > 0) {
    throw new DataFileError(path, `tensor ${extra[0]}${extra.length > 1 ? ` (and ${extra.length - 1} more)` : ''} is not a parameter of this model (${spec.arch}) or its momentum`);
  }
  return { params, momentum };
}
