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
import type { Sgd } from '../train/sgd.js';
import { parseTrainConfig, type TrainConfig } from '../train/config.js';
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

export function saveCheckpoint(dir: string, model: Model, opt: Sgd, config: TrainConfig, position: Position): void {
  const tensors: NamedTensor[] = [];
  for (const [name, v] of model.params) {
    const t = toTorch(model.spec, name, v.shape, v.dataSync() as Float32Array);
    tensors.push(t);
    const m = opt.velocity.get(name);
    if (m !== undefined) {
      const tm = toTorch(model.spec, name, m.shape, m.dataSync() as Float32Array);
      tensors.push({ ...tm, name: `momentum.${tm.name}` });
    }
  }
  const path = join(dir, TENSORS_FILE);
  writeSafetensors(path, tensors, { format: FORMAT, arch: model.spec.arch });
  const state: CheckpointState = {
    format: FORMAT, version: VERSION, config, position, tensorsBytes: statSync(path).size, savedAt: new Date().toISOString(),
  };
  const tmp = join(dir, `${STATE_FILE}.tmp-${process.pid}`);
  writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n');
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

/** Loads parameters and momentum buffers into a model built from the checkpoint's config. */
export function restoreTensors(dir: string, model: Model, opt: Sgd): void {
  const path = join(dir, TENSORS_FILE);
  const file = readSafetensors(path);
  for (const [name, v] of model.params) {
    const load = (key: string, target: tf.Variable) => {
      const t = file.tensors.get(key);
      if (t === undefined) throw new DataFileError(path, `no tensor ${key}`);
      const expected = toTorch(model.spec, name, v.shape, new Float32Array(v.size)).shape;
      if (t.shape.join(',') !== expected.join(',')) {
        throw new DataFileError(path, `${key} is [${t.shape}], the model needs [${expected}]`);
      }
      tf.tidy(() => target.assign(tf.tensor(fromTorch(model.spec, name, v.shape, t.data), v.shape)));
    };
    load(torchName(name), v);
    if (opt.opts.momentum !== 0) {
      const mk = `momentum.${torchName(name)}`;
      if (file.tensors.has(mk)) {
        let m = opt.velocity.get(name);
        if (m === undefined) {
          m = tf.variable(tf.zerosLike(v), false);
          opt.velocity.set(name, m);
        }
        load(mk, m);
      }
    }
  }
}
