import * as tf from '@tensorflow/tfjs';
import { normalArray, uniformArray } from './keyed-random.js';
import { shapesOf, type TowerShape } from './shapes.js';
import type { ModelSpec, WeightedLayer } from './spec.js';

/** Name of a parameter: `conv1.kernel` (one tower) or `conv1.t0.kernel` (tower 0 of several). */
export function paramName(spec: ModelSpec, layer: string, tower: number, kind: 'kernel' | 'bias'): string {
  return spec.towers === 1 ? `${layer}.${kind}` : `${layer}.t${tower}.${kind}`;
}

export interface BuildOptions {
  seed: number;
  /** which towers this process owns (default: all). Model-parallel worker k owns [k]. */
  towers?: number[];
}

export interface Model {
  spec: ModelSpec;
  towers: number[];
  /** trainable parameters in a fixed order (layer order, tower order, kernel before bias) */
  params: Map<string, tf.Variable>;
}

/** Every parameter's name and shape, in the model's fixed order, without creating any. */
export function parameterShapes(spec: ModelSpec): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const s of shapesOf(spec)) {
    const l = s.layer;
    if (l.kind !== 'conv' && l.kind !== 'dense') continue;
    s.towers.forEach((ts, t) => {
      out.set(paramName(spec, l.name, t, 'kernel'), kernelShape(l, ts));
      out.set(paramName(spec, l.name, t, 'bias'), [ts.output[0]!]);
    });
  }
  return out;
}

/** One tower's weight shape: conv [KH, KW, Cin, Cout], dense [in, out]. */
function kernelShape(l: WeightedLayer, s: TowerShape): number[] {
  const out = s.output[0]!;
  return l.kind === 'conv' ? [l.kernel, l.kernel, s.fanIn, out] : [s.fanIn, out];
}

/** A kernel's initial values, drawn from the key (seed, parameter name). */
export function initKernel(spec: ModelSpec, seed: number, name: string, shape: number[]): Float32Array {
  const count = shape.reduce((a, b) => a * b, 1);
  if (spec.init === 'paper-normal') return normalArray(seed, name, count, 0, 0.01);
  // Xavier (Glorot) uniform, as d2l's init_cnn: fan_in = KH*KW*Cin, fan_out = KH*KW*Cout.
  const receptive = shape.length === 4 ? shape[0]! * shape[1]! : 1;
  const fanIn = receptive * shape[shape.length - 2]!;
  const fanOut = receptive * shape[shape.length - 1]!;
  const a = Math.sqrt(6 / (fanIn + fanOut));
  return uniformArray(seed, name, count, -a, a);
}

/**
 * Creates the parameters of the towers this process owns. Every weight is drawn
 * from a key (seed, parameter name), so tower 1 built alone on worker 1 equals
 * tower 1 of the whole net built in one process.
 */
export function buildModel(spec: ModelSpec, opts: BuildOptions): Model {
  const towers = opts.towers ?? Array.from({ length: spec.towers }, (_, t) => t);
  for (const t of towers) {
    if (!Number.isInteger(t) || t < 0 || t >= spec.towers) {
      throw new Error(`buildModel: tower ${t} does not exist in ${spec.arch} (towers 0..${spec.towers - 1})`);
    }
  }
  const params = new Map<string, tf.Variable>();
  for (const s of shapesOf(spec)) {
    const layer = s.layer;
    if (layer.kind !== 'conv' && layer.kind !== 'dense') continue;
    for (const t of towers) {
      const kName = paramName(spec, layer.name, t, 'kernel');
      const bName = paramName(spec, layer.name, t, 'bias');
      const shape = kernelShape(layer, s.towers[t]!);
      // tfjs variable names are process-global; ours live in the map, so several
      // models (a test's reference and its split) can coexist.
      params.set(kName, tf.tidy(() => tf.variable(tf.tensor(initKernel(spec, opts.seed, kName, shape), shape))));
      // The paper's biases of 1 belong to its N(0, 0.01) weights; Xavier weights start from zero biases.
      const bias = spec.init === 'paper-normal' ? layer.biasInit : 0;
      params.set(bName, tf.tidy(() => tf.variable(tf.fill([shape[shape.length - 1]!], bias))));
    }
  }
  return { spec, towers, params };
}

export function disposeModel(model: Model): void {
  for (const v of model.params.values()) v.dispose();
  model.params.clear();
}

export function countParams(model: Model): number {
  let n = 0;
  for (const v of model.params.values()) n += v.size;
  return n;
}
