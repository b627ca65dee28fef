/**
 * Checkpoints store parameters in PyTorch's layouts and names, so a
 * checkpoint is a state_dict (see README "Checkpoints"):
 *   conv  kernel [KH, KW, Cin, Cout] (ours, NHWC)  ->  weight [Cout, Cin, KH, KW]
 *   dense kernel [in, out]                          ->  weight [out, in]
 *   bias [out]                                      ->  bias [out]
 * The dense layer right after flatten also reorders its inputs: ours are a
 * tower's map flattened as (h, w, c), towers concatenated; PyTorch flattens the
 * channel-concatenated NCHW map as (c, h, w), with tower t's channels at
 * t*C..(t+1)*C-1.
 */
import type { ModelSpec } from '../model/spec.js';
import { shapesOf } from '../model/shapes.js';

/** Copies `data` of `shape` into the axis order `perm` (out axis i = in axis perm[i]). */
export function permute(data: Float32Array, shape: number[], perm: number[]): { data: Float32Array; shape: number[] } {
  const rank = shape.length;
  const outShape = perm.map((p) => shape[p]!);
  const inStrides = new Array<number>(rank);
  let s = 1;
  for (let i = rank - 1; i >= 0; i--) { inStrides[i] = s; s *= shape[i]!; }
  const stepOf = perm.map((p) => inStrides[p]!); // input stride of each output axis
  const out = new Float32Array(data.length);
  const idx = new Array<number>(rank).fill(0);
  const last = rank - 1;
  const lastStep = stepOf[last]!;
  const lastSize = outShape[last]!;
  let src = 0;
  for (let o = 0; o < out.length; o += lastSize) {
    for (let k = 0, p = src; k < lastSize; k++, p += lastStep) out[o + k] = data[p]!;
    // advance the odometer over the outer axes
    for (let ax = last - 1; ax >= 0; ax--) {
      idx[ax]!++;
      src += stepOf[ax]!;
      if (idx[ax]! < outShape[ax]!) break;
      src -= stepOf[ax]! * outShape[ax]!;
      idx[ax] = 0;
    }
  }
  return { data: out, shape: outShape };
}

function inverse(perm: number[]): number[] {
  const inv = new Array<number>(perm.length);
  perm.forEach((p, i) => { inv[p] = i; });
  return inv;
}

interface LayoutRule {
  /** our shape viewed with these dims before permuting */
  view: number[];
  perm: number[];
  /** torch's shape */
  torchShape: number[];
}

/** How one of our parameters maps to PyTorch's layout. */
function layoutRule(spec: ModelSpec, name: string, shape: number[]): LayoutRule | undefined {
  const [layerName, ...rest] = name.split('.');
  const kind = rest[rest.length - 1];
  if (kind === 'bias') return undefined;
  const shapes = shapesOf(spec);
  const i = shapes.findIndex((s) => s.layer.name === layerName);
  const s = shapes[i];
  if (s === undefined) throw new Error(`torch layout: no layer ${layerName} in ${spec.arch}`);
  if (s.layer.kind === 'conv') {
    const [kh, kw, ci, co] = shape as [number, number, number, number];
    return { view: shape, perm: [3, 2, 0, 1], torchShape: [co, ci, kh, kw] };
  }
  const [inF, outF] = shape as [number, number];
  if (i > 0 && shapes[i - 1]!.layer.kind === 'flatten') {
    const map = shapes[i - 2]!.outputShape as [number, number, number]; // per tower [C, H, W]
    const towers = inF / (map[0] * map[1] * map[2]);
    return { view: [towers, map[1], map[2], map[0], outF], perm: [4, 0, 3, 1, 2], torchShape: [outF, inF] };
  }
  return { view: shape, perm: [1, 0], torchShape: [outF, inF] };
}

export function torchName(name: string): string {
  return name.replace(/\.kernel$/, '.weight');
}

export function ourName(name: string): string {
  return name.replace(/\.weight$/, '.kernel');
}

/** Our parameter -> PyTorch's name, shape and element order. */
export function toTorch(spec: ModelSpec, name: string, shape: number[], data: Float32Array): { name: string; shape: number[]; data: Float32Array } {
  const rule = layoutRule(spec, name, shape);
  if (rule === undefined) return { name: torchName(name), shape, data };
  return { name: torchName(name), shape: rule.torchShape, data: permute(data, rule.view, rule.perm).data };
}

/** The inverse of toTorch, given the shape our parameter has. */
export function fromTorch(spec: ModelSpec, ourParam: string, ourShape: number[], data: Float32Array): Float32Array {
  const rule = layoutRule(spec, ourParam, ourShape);
  if (rule === undefined) return data;
  const permutedView = rule.perm.map((p) => rule.view[p]!);
  return permute(data, permutedView, inverse(rule.perm)).data;
}
