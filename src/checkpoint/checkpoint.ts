/**
 * A checkpoint is two files in the run directory:
 *   checkpoint.safetensors  every parameter, and every SGD momentum buffer as
 *                           `momentum.<name>`, in PyTorch's names and layouts
 *   checkpoint.json         the full training config, the data position (epoch,
 *                           step), and the size of the tensor file it belongs to
 * Both are written atomically (temporary file, then rename), tensors first, so
 * a crash leaves the previous checkpoint whole.
 */
import * as tf from '@tensorflow/tfjs';
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DataFileError } from '../data/idx.js';
import type { Model } from '../model/build.js';
import type { ModelSpec } from '../model/spec.js';
import type { Sgd } from '../model/sgd.js';
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

/** Writes a checkpoint from plain arrays: what the coordinator of a cluster run holds. */
export function saveCheckpointTensors(
  dir: string, spec: ModelSpec, params: PlainTensor[], momentum: PlainTensor[], config: TrainConfig, position: Position,
): void {
  const tensors: NamedTensor[] = [];
  const moms = new Map(momentum.map((m) => [m.name, m]));
  for (const p of params) {
    tensors.push(toTorch(spec, p.name, p.shape, p.data));
    const m = moms.get(p.name);
    if (m !== undefined) {
      const tm = toTorch(spec, p.name, m.shape, m.data);
      tensors.push({ ...tm, name: `momentum.${tm.name}` });
    }
  }
  const path = join(dir, TENSORS_FILE);
  writeSafetensors(path, tensors, { format: FORMAT, arch: spec.arch });
  const state: CheckpointState = {
    format: FORMAT, version: VERSION, config, position, tensorsBytes: statSync(path).size, savedAt: new Date().toISOString(),
  };
  const tmp = join(dir, `${STATE_FILE}.tmp-${process.pid}`);
  writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n');
  renameSync(tmp, join(dir, STATE_FILE));
}

export function saveCheckpoint(dir: string, model: Model, opt: Sgd, config: TrainConfig, position: Position): void {
  const plain = (name: string, v: tf.Variable): PlainTensor => ({ name, shape: v.shape, data: v.dataSync() as Float32Array });
  const params = [...model.params].map(([n, v]) => plain(n, v));
  const momentum = [...opt.velocity].map(([n, v]) => plain(n, v));
  saveCheckpointTensors(dir, model.spec, params, momentum, config, position);
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
export function readCheckpointTensors(dir: string, spec: ModelSpec, shapes: Map<string, number[]>): { params: PlainTensor[]; momentum: PlainTensor[] } {
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
    const m = take(`momentum.${torchName(name)}`);
    if (m !== undefined) momentum.push({ name, shape, data: m });
  }
  return { params, momentum };
}

/** Loads plain tensors into a model's parameters and the optimizer's momentum buffers. */
export function loadIntoModel(model: Model, opt: Sgd, t: { params: PlainTensor[]; momentum: PlainTensor[] }): void {
  for (const p of t.params) {
    const v = model.params.get(p.name);
    if (v === undefined) throw new Error(`checkpoint: the model has no parameter ${p.name}`);
    tf.tidy(() => v.assign(tf.tensor(p.data, v.shape)));
  }
  if (opt.opts.momentum === 0) return;
  for (const m of t.momentum) {
    let buf = opt.velocity.get(m.name);
    if (buf === undefined) {
      buf = tf.variable(tf.zeros(m.shape), false);
      opt.velocity.set(m.name, buf);
    }
    const target = buf;
    tf.tidy(() => target.assign(tf.tensor(m.data, m.shape)));
  }
}

/** Loads parameters and momentum buffers into a model built from the checkpoint's config. */
export function restoreTensors(dir: string, model: Model, opt: Sgd): void {
  const shapes = new Map([...model.params].map(([n, v]) => [n, v.shape]));
  loadIntoModel(model, opt, readCheckpointTensors(dir, model.spec, shapes));
}

/**
 * Parameters and momentum buffers (`momentum.<name>`) from one or more
 * processes' state replies, in the model's parameter order: a replica holds
 * all of them, a model-parallel tower half.
 */
export function mergeStates(
  states: Array<{ metas: Array<{ name: string; shape: number[] }>; tensors: Float32Array[] }>, order: string[],
): { params: PlainTensor[]; momentum: PlainTensor[] } {
  const params: PlainTensor[] = [];
  const momentum: PlainTensor[] = [];
  for (const st of states) {
    st.metas.forEach((m, i) => {
      const t = { name: m.name.replace(/^momentum\./, ''), shape: m.shape, data: st.tensors[i]! };
      (m.name.startsWith('momentum.') ? momentum : params).push(t);
    });
  }
  params.sort((a, b) => order.indexOf(a.name) - order.indexOf(b.name));
  return { params, momentum };
}
