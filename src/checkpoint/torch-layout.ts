/**
 * Checkpoints store parameters in PyTorch's layouts and names, so a
 * checkpoint is a state_dict (see README "Checkpoints"):
 *   conv  kernel [KH, KW, Cin, Cout] (ours, NHWC)  ->  weight [Cout, Cin, KH, KW]
 *   dense kernel [in, out]                          ->  weight [out, in]
 *   bias [out]                                      ->  bias [out]
 * The dense layer right after flatten also reorders its inputs: ours are a
 * tower's map flattened as (h, w, c), towers concatenated; PyTorch flattens the
 * channel-concatenated NCHW map as (c, h, w), with tower t's channels after
 * the channels of the towers before it (see flattenRows).
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
  /** the dense layer after flatten: torch's input row of each of ours (see flattenRows) */
  rows?: Int32Array;
}

/**
 * The dense layer after flatten reads every tower's map [C_t, H, W]. Ours
 * flattens each tower's map as (h, w, c) and concatenates the towers;
 * PyTorch flattens the channel-concatenated map as (c, h, w), tower t's
 * channels at off_t..off_t + C_t − 1. rows[i] is the torch row of our row i.
 */
function flattenRows(towerChannels: number[], h: number, w: number): Int32Array {
  const rows = new Int32Array(towerChannels.reduce((a, c) => a + c, 0) * h * w);
  let ours = 0;
  let off = 0;
  for (const ct of towerChannels) {
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < ct; c++) rows[ours++] = ((off + c) * h + y) * w + x;
    off += ct;
  }
  return rows;
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
    const maps = shapes[i - 2]!.towers.map((t) => t.output as [number, number, number]); // per tower [C_t, H, W]
    const [, h, w] = maps[0]!;
    // A cross layer reads every tower's map; a local one (d2l's single tower) its own.
    const rows = flattenRows(inF === shapes[i - 2]!.outputShape.reduce((a, b) => a * b, 1) ? maps.map((m) => m[0]) : [inF / (h * w)], h, w);
    return { view: shape, perm: [1, 0], torchShape: [outF, inF], rows };
  }
  return { view: shape, perm: [1, 0], torchShape: [outF, inF] };
}

/** Our kernel [in, out] with its rows in torch's input order, then transposed: torch's [out, in]. */
function reorderRows(data: Float32Array, inF: number, outF: number, rows: Int32Array, toTorch: boolean): Float32Array {
  const out = new Float32Array(data.length);
  if (toTorch) {
    // ours [in, out] -> torch [out, in]: torch[o, rows[i]] = ours[i, o]
    for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) out[o * inF + rows[i]!] = data[i * outF + o]!;
  } else {
    for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) out[i * outF + o] = data[o * inF + rows[i]!]!;
  }
  return out;
}

export function torchName(name: string): string {
  return name.replace(/\.kernel$/, '.weight');
}

/** Our parameter -> PyTorch's name, shape and element order. */
export function toTorch(spec: ModelSpec, name: string, shape: number[], data: Float32Array): { name: string; shape: number[]; data: Float32Array } {
  const rule = layoutRule(spec, name, shape);
  if (rule === undefined) return { name: torchName(name), shape, data };
  if (rule.rows) return { name: torchName(name), shape: rule.torchShape, data: reorderRows(data, shape[0]!, shape[1]!, rule.rows, true) };
  return { name: torchName(name), shape: rule.torchShape, data: permute(data, rule.view, rule.perm).data };
}

/** The inverse of toTorch, given the shape our parameter has. */
export function fromTorch(spec: ModelSpec, ourParam: string, ourShape: number[], data: Float32Array): Float32Array {
  const rule = layoutRule(spec, ourParam, ourShape);
  if (rule === undefined) return data;
  if (rule.rows) return reorderRows(data, ourShape[0]!, ourShape[1]!, rule.rows, false);
  const permutedView = rule.perm.map((p) => rule.view[p]!);
  return permute(data, permutedView, inverse(rule.perm)).data;
}
