/**
 * A checkpoint is two files in the run directory:
 *   checkpoint.safetensors  every parameter, and every SGD momentum buffer as
 *                           `momentum.<name>`, in PyTorch's names and layouts
 *   checkpoint.json         the full training config, the data position (epoch,
 *                           step), and the size of the tensor file it belongs to
 * Both are written atomically (temporary file, then rename), tensors first, so
 * a crash leaves the previous checkpoint whole.
 */
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DataFileError } from '../data/idx.js';
import type { ModelSpec } from '../model/spec.js';
import { parseTrainConfig, type TrainConfig } from '../config/train.js';
import { readSafetensors, writeSafetensors, type NamedTensor } from './safetensors.js';
import { fromTorch, toTorch, torchName } from './torch-layout.js';

export const TENSORS_FILE = 'checkpoint.safetensors';
export const STATE_FILE = 'checkpoint.json';
const FORMAT = 'splitnet-checkpoint';
const VERSION = 1;

/** Where in the data a run stands: the next batch to train is `step` of `epoch`. */
export interface Position {
  epoch: number;
  step: number;
  /** steps taken since the start of the run */
  globalStep: number;
}

export interface CheckpointState {
  format: typeof FORMAT;
  version: number;
  config: TrainConfig;
  position: Position;
  tensorsBytes: number;
  savedAt: string;
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

/** Writes a checkpoint of `state`. */
export function saveCheckpoint(dir: string, spec: ModelSpec, state: TrainState, config: TrainConfig, position: Position): void {
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
  const path = join(dir, TENSORS_FILE);
  writeSafetensors(path, tensors, { format: FORMAT, arch: spec.arch });
  const meta: CheckpointState = {
    format: FORMAT, version: VERSION, config, position, tensorsBytes: statSync(path).size, savedAt: new Date().toISOString(),
  };
  const tmp = join(dir, `${STATE_FILE}.tmp-${process.pid}`);
  writeFileSync(tmp, JSON.stringify(meta, null, 2) + '\n');
  renameSync(tmp, join(dir, STATE_FILE));
}

/** Reads and checks a checkpoint's state file. */
export function readCheckpointState(dir: string): CheckpointState {
  const path = join(dir, STATE_FILE);
  if (!existsSync(path)) throw new DataFileError(path, 'not found: nothing to resume in this directory');
  let raw: Partial<CheckpointState>;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8')) as Partial<CheckpointState>;
  } catch (err) {
    throw new DataFileError(path, `not JSON (${(err as Error).message})`);
  }
  if (raw.format !== FORMAT || raw.version !== VERSION) {
    throw new DataFileError(path, `format ${String(raw.format)} v${String(raw.version)}: expected ${FORMAT} v${VERSION}`);
  }
  const config = parseTrainConfig(raw.config, path);
  const p = raw.position;
  if (p === undefined || ![p.epoch, p.step, p.globalStep].every((n) => Number.isInteger(n) && n >= 0)) {
    throw new DataFileError(path, `position ${JSON.stringify(p)}: expected {epoch, step, globalStep} as counts`);
  }
  const tensorsPath = join(dir, TENSORS_FILE);
  const size = existsSync(tensorsPath) ? statSync(tensorsPath).size : -1;
  if (size !== raw.tensorsBytes) {
    throw new DataFileError(tensorsPath, `${size < 0 ? 'missing' : `${size} bytes`}: ${STATE_FILE} was written with a ${raw.tensorsBytes}-byte tensor file`);
  }
  return { ...(raw as CheckpointState), config, position: p };
}

/**
 * A checkpoint's tensors in our layout: every parameter in `shapes`, and the
 * momentum buffers that are present. Checks names and shapes.
 */
export function readCheckpointTensors(dir: string, spec: ModelSpec, shapes: Map<string, number[]>): TrainState {
  const path = join(dir, TENSORS_FILE);
  const file = readSafetensors(path);
  const params: PlainTensor[] = [];
  const momentum: PlainTensor[] = [];
  for (const [name, shape] of shapes) {
    const size = shape.reduce((a, b) => a * b, 1);
    const expected = toTorch(spec, name, shape, new Float32Array(size)).shape;
    const take = (key: string): Float32Array | undefined => {
      const t = file.tensors.get(key);
      if (t === undefined) return undefined;
      if (t.shape.join(',') !== expected.join(',')) throw new DataFileError(path, `${key} is [${t.shape}], the model needs [${expected}]`);
      return fromTorch(spec, name, shape, t.data);
    };
    const p = take(torchName(name));
    if (p === undefined) throw new DataFileError(path, `no tensor ${torchName(name)}`);
    params.push({ name, shape, data: p });
    const m = take(momentumKey(torchName(name)));
    if (m !== undefined) momentum.push({ name, shape, data: m });
  }
  return { params, momentum };
}
