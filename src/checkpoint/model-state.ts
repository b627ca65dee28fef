/**
 * A model's and its optimizer's tensors as a TrainState, and back: what a
 * strategy hands to a checkpoint and takes from one. Reads are asynchronous.
 */
import * as tf from '@tensorflow/tfjs';
import { readFloats } from '../kernels/read.js';
import type { Model } from '../model/build.js';
import type { Sgd } from '../model/sgd.js';
import type { PlainTensor, TrainState } from './checkpoint.js';

async function plain(name: string, t: tf.Tensor): Promise<PlainTensor> {
  return { name, shape: t.shape, data: await readFloats(t) };
}

/** The parameters this process owns and their momentum buffers. */
export async function readModelState(model: Model, opt: Sgd): Promise<TrainState> {
  const params: PlainTensor[] = [];
  for (const [name, v] of model.params) params.push(await plain(name, v));
  const momentum: PlainTensor[] = [];
  for (const [name, v] of opt.buffers()) momentum.push(await plain(name, v));
  return { params, momentum };
}

/**
 * Loads the tensors of `state` that this process owns (a model-parallel tower
 * owns half); every owned parameter must be there.
 */
export function loadModelState(model: Model, opt: Sgd, state: TrainState): void {
  let loaded = 0;
  for (const p of state.params) {
    const v = model.params.get(p.name);
    if (v === undefined) continue;
    if (p.shape.join(',') !== v.shape.join(',')) throw new Error(`state: ${p.name} is [${p.shape}], the model has [${v.shape}]`);
    tf.tidy(() => v.assign(tf.tensor(p.data, v.shape)));
    loaded++;
  }
  if (loaded !== model.params.size) throw new Error(`state carries ${loaded} of this model's ${model.params.size} parameters`);
  for (const m of state.momentum) if (model.params.has(m.name)) opt.loadBuffer(m.name, m.data, m.shape);
}
