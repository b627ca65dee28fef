/**
 * The training step as layers: forward runs the network's layers in order
 * and keeps what each backward needs; backward runs the same list reversed
 * and hands out every parameter's gradient the moment it exists (fc8 first,
 * conv1 last). One engine serves every mode:
 *
 *   single  all towers in this process; a cross link concatenates them
 *   data    the same, plus `onGradient` (gradient buckets) and `afterLayer`
 *           (an await between layers, so the ring's sockets progress)
 *   model   this process owns one tower; at a cross link `links.gather`
 *           awaits the other tower's output, and in backward `links.scatter`
 *           awaits the other tower's share of this tower's gradient
 *
 * Every place a step waits on the network is one of those awaits. Nothing
 * here reads a tensor back synchronously.
 *
 * With `layerSpans` each layer's forward and backward is recorded as a span
 * on performance.now()'s clock (the one the sockets' send and wait spans
 * use), without the awaits on the other tower: a cross link's wait is its
 * own span, not the layer's.
 */
import * as tf from '@tensorflow/tfjs';
import { paramName, type Model } from './build.js';
import type { DropoutKey } from './dropout.js';
import { layerBackward, layerForward, softmaxCrossEntropy, type LayerParams, type Saved } from './layers.js';
import { shapesOf } from './shapes.js';
import { isWeighted, offsetsOf, type LayerSpec, type ModelSpec } from './spec.js';

/** Each layer's per-tower output widths (channels or features), by layer index; computed once per spec. */
const widthsCache = new WeakMap<ModelSpec, number[][]>();
function towerWidths(spec: ModelSpec): number[][] {
  let w = widthsCache.get(spec);
  if (w === undefined) {
    w = shapesOf(spec).map((s) => s.towers.map((t) => t.output[0]!));
    widthsCache.set(spec, w);
  }
  return w;
}

/** The other towers' parts of a cross link (model-parallel only). */
export interface CrossLinks {
  /**
   * forward: every tower's output concatenated on `axis` in tower order, given
   * this process's own ([B, H, W, C_t] or [B, F_t]); `sizes` is each tower's
   * width on `axis` (they differ by one where the division is uneven)
   */
  gather(link: string, own: tf.Tensor, axis: number, sizes: number[]): Promise<tf.Tensor>;
  /**
   * backward of `gather`: dL/d(own output), given dL/d(gathered). This
   * tower's slice plus the slices the other towers computed for it, except
   * when `replicated` (the logits: every tower computes the same loss).
   */
  scatter(link: string, dGathered: tf.Tensor, axis: number, sizes: number[], replicated: boolean): Promise<tf.Tensor>;
}

export interface PassOptions {
  /** present when training: dropout masks are drawn from this key */
  dropout?: DropoutKey;
  /** model-parallel: how this process reaches the towers it does not own */
  links?: CrossLinks;
  /** sees each parameter gradient as soon as backward produces it; the tensor stays alive until the step's end */
  onGradient?: (name: string, grad: tf.Tensor) => void;
  /** awaited after each layer's backward (data-parallel: lets the ring's messages in) */
  afterLayer?: () => Promise<void>;
  /** awaited after each layer's forward and each layer's backward (splitnet compare times the layers) */
  onLayer?: (layer: string, phase: 'forward' | 'backward') => Promise<void> | void;
  /**
   * Pipelined micro-batches: a dense layer's weight gradients are left to the
   * caller, who gets the layer's input x [B, in] and dL/d(pre-activation)
   * dz [B, out] (and owns both) to compute xᵀ·dz once over all micro-batches.
   */
  onDeferredDense?: (layer: string, tower: number, x: tf.Tensor, dz: tf.Tensor) => void;
  /** filled with one span per layer and phase, in the order they ran (the step's trace) */
  layerSpans?: LayerSpan[];
  /**
   * Also wants dL/d(the pass's input) (hybrid: the head's input features
   * [B, F], whose gradient goes back to the conv layers' workers); given
   * once, the caller owns it. Without it the first weighted layer computes
   * no input gradient (the image needs none).
   */
  inputGradient?: (dx: tf.Tensor) => void;
}

/**
 * A layer's forward or backward, from when the engine began handing its ops
 * to the backend to when it had handed over the last one (performance.now(), ms).
 *
 * This is dispatch time, not completion, and deliberately so. On the
 * backends the workers run (wasm, cpu, tfjs-node) an op has run when its
 * call returns, so the two are the same. On WebGPU ops are queued: knowing
 * when a layer really finished takes a wait on the device's queue after
 * every layer, which would cost a sync per layer on every step and remove
 * the very overlap of kernels and transfers the trace is there to show.
 * Where the engine does wait on the device anyway (a cross link reads the
 * layer's output back, a gradient is copied to the host), the spans after
 * that point start from completed work.
 */
export interface LayerSpan { layer: string; phase: 'forward' | 'backward'; startMs: number; endMs: number }

/** What forward kept, per layer and per local tower. */
export interface Tape {
  layers: Array<{ layer: LayerSpec; cross: boolean; saved: Saved[] }>;
  logits: tf.Tensor2D;
  /** every tensor the tape owns, once */
  owned: Set<tf.Tensor>;
}

export function disposeTape(tape: Tape): void {
  tf.dispose([...tape.owned]);
  tape.owned.clear();
}

function layerParams(model: Model, layer: LayerSpec, tower: number): LayerParams | undefined {
  if (!isWeighted(layer)) return undefined;
  const get = (kind: 'kernel' | 'bias') => {
    const name = paramName(model.spec, layer.name, tower, kind);
    const v = model.params.get(name);
    if (v === undefined) throw new Error(`engine: this process does not own parameter ${name}`);
    return v;
  };
  return { kernel: get('kernel'), bias: get('bias') };
}

function checkInput(model: Model, x: tf.Tensor, opts: PassOptions): void {
  const { spec } = model;
  if (model.towers.length !== spec.towers && (opts.links === undefined || model.towers.length !== 1)) {
    throw new Error(`engine: needs all ${spec.towers} towers in this process, or one and cross links, has [${model.towers}]`);
  }
  if (spec.features !== undefined) {
    if (x.rank !== 2 || x.shape[1] !== spec.features) throw new Error(`engine: expected features [B, ${spec.features}], got [${x.shape}]`);
    return;
  }
  const [c, h, w] = spec.input;
  if (x.rank !== 4 || x.shape[1] !== h || x.shape[2] !== w || x.shape[3] !== c) {
    throw new Error(`engine: expected input [B, ${h}, ${w}, ${c}] (NHWC), got [${x.shape}]`);
  }
}

/**
 * x [B, H, W, C] -> logits [B, classes]. With `keep` the tape holds every
 * layer's input and output for backward; without, each is freed as soon as
 * the next layer has run (evaluation).
 */
export async function forward(model: Model, x: tf.Tensor, opts: PassOptions, keep: boolean): Promise<Tape> {
  checkInput(model, x, opts);
  const { spec } = model;
  const local = model.towers;
  const split = local.length < spec.towers;
  const widths = towerWidths(spec);
  const tape: Tape = { layers: [], logits: undefined as unknown as tf.Tensor2D, owned: new Set() };
  const own = (t: tf.Tensor) => { if (t !== x) tape.owned.add(t); return t; };
  const release = (ts: tf.Tensor[]) => { for (const t of ts) if (!keep && t !== x && tape.owned.delete(t)) t.dispose(); };
  let acts: tf.Tensor[] = local.map(() => x); // per local tower: [B, H, W, C], then [B, F]
  let first = true;
  try {
    for (const [i, layer] of spec.layers.entries()) {
      const cross = !first && spec.towers > 1 && isWeighted(layer) && layer.link === 'cross';
      let inputs = acts;
      let start = performance.now();
      if (cross) {
        const axis = acts[0]!.rank - 1; // channels (NHWC) or features
        const all = own(split ? await opts.links!.gather(layer.name, acts[0]!, axis, widths[i - 1]!) : tf.concat(acts, axis));
        if (split) start = performance.now(); // the wait on the other tower is the link's span, not the layer's
        release(acts);
        inputs = local.map(() => all);
      }
      const firstUnits = offsetsOf(widths[i]!);
      const totalUnits = widths[i]!.reduce((a, b) => a + b, 0);
      const outs = inputs.map((a, j) => layerForward(layer, a, layerParams(model, layer, local[j]!),
        opts.dropout ? { key: opts.dropout, firstUnit: firstUnits[local[j]!]!, totalUnits } : undefined));
      for (const o of outs) { own(o.y); if (o.mask) own(o.mask); }
      if (keep) tape.layers.push({ layer, cross, saved: outs.map((o, j) => ({ x: inputs[j]!, y: o.y, ...(o.mask ? { mask: o.mask } : {}) })) });
      else { release([...new Set(inputs)]); release(outs.flatMap((o) => (o.mask ? [o.mask] : []))); }
      acts = outs.map((o) => o.y);
      if (isWeighted(layer)) first = false;
      opts.layerSpans?.push({ layer: layer.name, phase: 'forward', startMs: start, endMs: performance.now() });
      if (opts.onLayer) await opts.onLayer(layer.name, 'forward'); // no await otherwise: a microtask per layer on the training path
    }
    // Every process computes the loss from all logits [B, classes].
    tape.logits = own(split ? await opts.links!.gather('logits', acts[0]!, 1, widths[widths.length - 1]!)
      : acts.length === 1 ? tf.clone(acts[0]!) : tf.concat(acts, 1)) as tf.Tensor2D;
    release(acts);
  } catch (err) {
    disposeTape(tape);
    throw err;
  }
  return tape;
}

/**
 * Backward from dL/dlogits [B, classes]: every owned parameter's gradient,
 * handed to `onGradient` as it is produced. The caller disposes the map.
 */
export async function backward(model: Model, tape: Tape, dlogits: tf.Tensor2D, opts: PassOptions): Promise<Map<string, tf.Tensor>> {
  const { spec } = model;
  const local = model.towers;
  const split = local.length < spec.towers;
  const grads = new Map<string, tf.Tensor>();
  const widths = towerWidths(spec);
  // dL/d(each local tower's output)
  let dys: tf.Tensor[] = split ? [await opts.links!.scatter('logits', dlogits, 1, widths[widths.length - 1]!, true)]
    : local.length === 1 ? [tf.clone(dlogits)] : tf.split(dlogits, widths[widths.length - 1]!, 1);
  const firstWeighted = tape.layers.findIndex((l) => isWeighted(l.layer));
  try {
    for (let i = tape.layers.length - 1; i >= firstWeighted; i--) {
      const { layer, cross, saved } = tape.layers[i]!;
      const inputWidths = widths[spec.layers.indexOf(layer) - 1] ?? []; // per tower, of the layer's input (a cross layer's gathered parts)
      const start = performance.now();
      const span = () => opts.layerSpans?.push({ layer: layer.name, phase: 'backward', startMs: start, endMs: performance.now() });
      const needDx = i > firstWeighted || opts.inputGradient !== undefined; // the first weighted layer's input is the image
      const defer = opts.onDeferredDense !== undefined && layer.kind === 'dense';
      const outs = saved.map((s, j) => layerBackward(layer, s, dys[j]!, layerParams(model, layer, local[j]!), needDx, defer));
      if (defer) outs.forEach((o, j) => opts.onDeferredDense!(layer.name, local[j]!, tf.clone(saved[j]!.x), o.dz!));
      tf.dispose(dys);
      dys = [];
      // Bucket order (the data-parallel plan) is the parameter order reversed: last tower first, bias before kernel.
      for (let j = local.length - 1; j >= 0; j--) {
        for (const kind of ['bias', 'kernel'] as const) {
          const g = outs[j]![kind];
          if (g === undefined) continue;
          const name = paramName(spec, layer.name, local[j]!, kind);
          grads.set(name, g);
          opts.onGradient?.(name, g);
        }
      }
      if (i === firstWeighted) {
        // Every local tower read the same input: its gradient is their sum, in tower order.
        if (needDx) opts.inputGradient!(outs.length === 1 ? outs[0]!.dx! : tf.tidy(() => tf.addN(outs.map((o) => o.dx!))));
        if (needDx && outs.length > 1) tf.dispose(outs.map((o) => o.dx!));
        span();
        if (opts.onLayer) await opts.onLayer(layer.name, 'backward');
        break;
      }
      const dxs = outs.map((o) => o.dx!);
      if (!cross) {
        dys = dxs;
        span();
      } else {
        const axis = dxs[0]!.rank - 1;
        if (split) {
          span(); // before the await: the exchange with the other tower is the link's span
          try {
            dys = [await opts.links!.scatter(layer.name, dxs[0]!, axis, inputWidths, false)];
          } finally {
            tf.dispose(dxs);
          }
        } else {
          // dL/d(tower t's output) = Σ over towers t' of the slice t of dL/d(tower t''s concatenated input)
          const parts = dxs.map((d) => tf.split(d, inputWidths, axis));
          dys = local.map((_, t) => tf.tidy(() => parts.slice(1).reduce((acc, p) => tf.add(acc, p[t]!), parts[0]![t]!)));
          tf.dispose(parts.flat());
          tf.dispose(dxs);
          span();
        }
      }
      if (opts.onLayer) await opts.onLayer(layer.name, 'backward');
      await opts.afterLayer?.();
    }
  } catch (err) {
    tf.dispose([...grads.values()]);
    throw err;
  } finally {
    tf.dispose(dys);
  }
  return grads;
}

/**
 * One batch: the loss (a scalar the caller reads and disposes) and every
 * owned parameter's gradient (the caller disposes the map's tensors).
 */
export async function lossAndGrads(
  model: Model, x: tf.Tensor, labels: tf.Tensor1D, opts: PassOptions = {},
): Promise<{ loss: tf.Scalar; grads: Map<string, tf.Tensor> }> {
  const tape = await forward(model, x, opts, true);
  try {
    const { loss, dlogits } = softmaxCrossEntropy(tape.logits, labels, true);
    try {
      return { loss, grads: await backward(model, tape, dlogits!, opts) };
    } catch (err) {
      loss.dispose();
      throw err;
    } finally {
      dlogits!.dispose();
    }
  } finally {
    disposeTape(tape);
  }
}

/** Logits [B, classes] without dropout and without a tape (evaluation); the caller disposes them. */
export async function predict(model: Model, x: tf.Tensor, links?: CrossLinks): Promise<tf.Tensor2D> {
  const tape = await forward(model, x, links ? { links } : {}, false);
  const logits = tape.logits;
  tape.owned.delete(logits);
  disposeTape(tape);
  return logits;
}
