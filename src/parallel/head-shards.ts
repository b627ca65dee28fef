/**
 * Hybrid's two halves of one net (Krizhevsky 2014): the trunk (every layer
 * before the first dense one, all towers, replicated) and the head (the
 * dense layers, split N ways by output units over the whole layer).
 *
 * The head is described as a net of its own whose N "towers" are the N
 * workers' shards, so the engine and the towers' exchanges run it unchanged:
 * its input is the trunk's features [B, F] (F = the flatten layer's output,
 * every tower's (h, w, c) map flattened, towers concatenated: fc6's input in
 * one process), and every dense layer reads all shards' outputs ('cross').
 *
 * Its parameters are named by shard (`fc6.t2.kernel`: shard 2 of N); a
 * checkpoint holds the net's own names (`fc6.t0.kernel` of its T towers, or
 * `fc6.kernel`). Both are column ranges of one logical layer: the kernel
 * [in, U] is the net's towers' kernels [in, u_t] concatenated on the output
 * axis (every tower of a cross dense layer reads the whole input), and so is
 * the bias [U]. Shard k holds columns splitUnits(U, N)[k] of it.
 */
import { initKernel, paramName } from '../model/build.js';
import { shapesOf } from '../model/shapes.js';
import { offsetsOf, splitUnits, towerUnits, type DenseLayer, type ModelSpec } from '../model/spec.js';

/** Index of the first dense layer: the trunk is every layer before it. */
export function firstDenseIndex(spec: ModelSpec): number {
  const i = spec.layers.findIndex((l) => l.kind === 'dense');
  if (i < 1 || spec.layers[i - 1]!.kind !== 'flatten') throw new Error(`hybrid: expected conv layers, a flatten and dense layers in ${spec.arch}`);
  return i;
}

/** The conv layers through flatten: its "logits" are the features [B, F]. */
export function trunkSpec(spec: ModelSpec): ModelSpec {
  return { ...spec, layers: spec.layers.slice(0, firstDenseIndex(spec)) };
}

/** The dense layers as a net of `shards` towers reading F features. */
export function headSpec(spec: ModelSpec, shards: number): ModelSpec {
  const i = firstDenseIndex(spec);
  const features = shapesOf(spec)[i - 1]!.outputShape[0]!;
  const layers = spec.layers.slice(i).map((l) => (l.kind === 'dense' ? { ...l, link: 'cross' as const } : l));
  return { ...spec, towers: shards, features, layers };
}

/** The head's dense layers. */
export const denseLayers = (spec: ModelSpec): DenseLayer[] => spec.layers.filter((l): l is DenseLayer => l.kind === 'dense');

/** Columns [lo, hi) of a row-major [rows, cols] matrix. */
function sliceColumns(data: Float32Array, rows: number, cols: number, lo: number, hi: number): Float32Array {
  const out = new Float32Array(rows * (hi - lo));
  for (let r = 0; r < rows; r++) out.set(data.subarray(r * cols + lo, r * cols + hi), r * (hi - lo));
  return out;
}

/** Row-major [rows, c_i] matrices side by side: [rows, Σ c_i]. */
function concatColumns(parts: Array<{ data: Float32Array; cols: number }>, rows: number): Float32Array {
  const total = parts.reduce((n, p) => n + p.cols, 0);
  const out = new Float32Array(rows * total);
  let at = 0;
  for (const p of parts) {
    for (let r = 0; r < rows; r++) out.set(p.data.subarray(r * p.cols, (r + 1) * p.cols), r * total + at);
    at += p.cols;
  }
  return out;
}

type Kind = 'kernel' | 'bias';

/** A dense layer's input width (the same for every tower: each reads the whole input). */
function fanIn(spec: ModelSpec, layer: DenseLayer): number {
  return shapesOf(spec).find((s) => s.layer.name === layer.name)!.towers[0]!.fanIn;
}

/**
 * Re-cuts one parameter of a dense layer: `parts` are its column ranges of
 * sizes `from` (in order), the result the ranges of sizes `to`.
 */
function recut(parts: Float32Array[], from: number[], to: number[], rows: number): Float32Array[] {
  const whole = concatColumns(parts.map((data, i) => ({ data, cols: from[i]! })), rows);
  const total = to.reduce((a, b) => a + b, 0);
  return offsetsOf(to).map((lo, i) => sliceColumns(whole, rows, total, lo, lo + to[i]!));
}

/** Every head parameter of shard `k` of `shards`, from the net's parameters by name (a checkpoint's, or initial values). */
export function shardOf(spec: ModelSpec, shards: number, k: number, net: (name: string, shape: number[]) => Float32Array): Map<string, Float32Array> {
  const head = headSpec(spec, shards);
  const out = new Map<string, Float32Array>();
  for (const layer of denseLayers(spec)) {
    const inF = fanIn(spec, layer);
    const netUnits = towerUnits(spec, layer);
    const shardUnits = splitUnits(layer.units, shards);
    for (const kind of ['kernel', 'bias'] as const) {
      const rows = kind === 'kernel' ? inF : 1;
      const parts = netUnits.map((u, t) => net(paramName(spec, layer.name, t, kind), kind === 'kernel' ? [inF, u] : [u]));
      out.set(paramName(head, layer.name, k, kind), recut(parts, netUnits, shardUnits, rows)[k]!);
    }
  }
  return out;
}

/** The net's head parameters by name, from every shard's (`shardParams[k]` by the head's names). */
export function netOf(spec: ModelSpec, shardParams: Array<Map<string, Float32Array>>): Map<string, { shape: number[]; data: Float32Array }> {
  const shards = shardParams.length;
  const head = headSpec(spec, shards);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const layer of denseLayers(spec)) {
    const inF = fanIn(spec, layer);
    const netUnits = towerUnits(spec, layer);
    const shardUnits = splitUnits(layer.units, shards);
    for (const kind of ['kernel', 'bias'] as const satisfies readonly Kind[]) {
      const rows = kind === 'kernel' ? inF : 1;
      const parts = shardParams.map((m, k) => {
        const d = m.get(paramName(head, layer.name, k, kind));
        if (d === undefined) throw new Error(`hybrid: shard ${k} sent no ${paramName(head, layer.name, k, kind)}`);
        return d;
      });
      recut(parts, shardUnits, netUnits, rows).forEach((data, t) => {
        out.set(paramName(spec, layer.name, t, kind), { shape: kind === 'kernel' ? [inF, netUnits[t]!] : [netUnits[t]!], data });
      });
    }
  }
  return out;
}

/** The net's initial head parameters (what buildModel draws), by name. */
export function initialHead(spec: ModelSpec, seed: number): (name: string, shape: number[]) => Float32Array {
  const biasOf = new Map(denseLayers(spec).map((l) => [l.name, spec.init === 'paper-normal' ? l.biasInit : 0]));
  return (name, shape) => {
    if (name.endsWith('.kernel')) return initKernel(spec, seed, name, shape);
    return new Float32Array(shape[0]!).fill(biasOf.get(name.slice(0, name.indexOf('.')))!);
  };
}
