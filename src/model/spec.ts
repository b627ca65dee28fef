/**
 * A network described as data. The same description builds the whole net in
 * one process, one tower of the 2012 split, or a data-parallel replica.
 *
 * Towers: a spec has `towers` = 1 (d2l), 2 (the 2012 net) or N (the 2012 net
 * split N ways, --towers N). Every conv and dense layer has `units`
 * kernels/units over all towers, divided between them by `splitUnits` (the
 * first `units % towers` towers one more, as numpy's array_split; N = 2
 * divides the published net evenly). Its `link` says what it reads:
 *   'local' - only its own tower's previous output (conv2, conv4, conv5)
 *   'cross' - the previous outputs of all towers, concatenated on the channel
 *             (or feature) axis in tower order (conv3, fc6, fc7, fc8)
 * With one tower the two are the same. Layout is NHWC; conv weights are
 * [KH, KW, Cin, Cout], dense weights [in, out].
 */
export type Link = 'local' | 'cross';

export interface ConvLayer {
  kind: 'conv';
  name: string;
  /** kernels over all towers */
  units: number;
  kernel: number;
  stride: number;
  pad: number;
  link: Link;
  relu: boolean;
  /** bias initial value (the 2012 paper: 1 in conv2/4/5, 0 elsewhere) */
  biasInit: number;
}

export interface LrnLayer {
  kind: 'lrn';
  name: string;
  /** n = 2 * radius + 1 adjacent channels */
  radius: number;
  /** k, alpha, beta as in the paper: b = a / (k + alpha * sum a^2)^beta (alpha not divided by n) */
  k: number;
  alpha: number;
  beta: number;
}

export interface PoolLayer {
  kind: 'maxpool';
  name: string;
  size: number;
  stride: number;
}

export interface FlattenLayer {
  kind: 'flatten';
  name: string;
}

export interface DenseLayer {
  kind: 'dense';
  name: string;
  /** output units over all towers */
  units: number;
  link: Link;
  relu: boolean;
  biasInit: number;
}

export interface DropoutLayer {
  kind: 'dropout';
  name: string;
  rate: number;
}

export type LayerSpec = ConvLayer | LrnLayer | PoolLayer | FlattenLayer | DenseLayer | DropoutLayer;

export { ARCHS, type Arch } from '../config/choices.js';
import type { Arch } from '../config/choices.js';

/** How weights are drawn: the 2012 paper's N(0, 0.01), or Xavier-uniform as d2l's init_cnn does. */
export type InitScheme = 'paper-normal' | 'xavier-uniform';

export interface ModelSpec {
  arch: Arch;
  /** input [channels, height, width] (the summary prints CHW, as the papers do) */
  input: [number, number, number];
  /**
   * A net's fully connected head alone (hybrid's model-parallel part): its
   * input is F features per sample ([B, F]), not an image, and `input` is
   * the image of the whole net it belongs to.
   */
  features?: number;
  classes: number;
  towers: number;
  width: number;
  init: InitScheme;
  layers: LayerSpec[];
}

/** Layers that own weights. */
export type WeightedLayer = ConvLayer | DenseLayer;
export function isWeighted(l: LayerSpec): l is WeightedLayer {
  return l.kind === 'conv' || l.kind === 'dense';
}

/** `total` units split `parts` ways: the first `total % parts` parts one more (numpy's array_split). */
export function splitUnits(total: number, parts: number): number[] {
  const base = Math.floor(total / parts);
  const extra = total % parts;
  return Array.from({ length: parts }, (_, t) => base + (t < extra ? 1 : 0));
}

/** Each tower's kernels or units of a weighted layer. */
export function towerUnits(spec: ModelSpec, layer: WeightedLayer): number[] {
  return splitUnits(layer.units, spec.towers);
}

/** Where each of `sizes` starts when they are concatenated: [0, s0, s0 + s1, …]. */
export function offsetsOf(sizes: number[]): number[] {
  const out: number[] = [];
  let at = 0;
  for (const s of sizes) { out.push(at); at += s; }
  return out;
}
