import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../src/backend.js';

/** wasm with splitnet's kernels, and the cpu backend as the reference. */
export async function setupBackends(): Promise<void> {
  await initBackend('wasm');
  tf.env().set('PROD', true); // silences the cpu backend's "install tfjs-node" banner
}

/**
 * Runs fn with `name` active (awaiting it, if it is asynchronous, before the
 * backend is switched back), returns plain arrays (tensors cannot cross backends).
 */
export async function onBackend<T>(name: 'wasm' | 'cpu' | 'webgpu', fn: () => T | Promise<T>): Promise<T> {
  const before = tf.getBackend();
  await tf.setBackend(name);
  try {
    return await fn();
  } finally {
    await tf.setBackend(before);
  }
}

/** max |a - b| / max |b|: a relative error that ignores near-zero entries' noise. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relError: lengths differ: ${a.length} vs ${b.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return scale === 0 ? diff : diff / scale;
}

/** Deterministic values in [-1, 1). */
export function pseudoRandom(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    out[i] = (s / 2 ** 32) * 2 - 1;
  }
  return out;
}

/**
 * Worst over the net's layers of max |a − b| over all the layer's parameters
 * (kernels and biases, every tower) divided by the largest |b| among them:
 * an error measured against the layer's weights, so a bias that starts at 0
 * (and is all updates) is not judged against its own tiny size.
 */
export function layerRelError(a: Map<string, Float32Array>, b: Map<string, Float32Array>): { worst: number; layer: string } {
  const diff = new Map<string, number>();
  const scale = new Map<string, number>();
  for (const [name, ref] of b) {
    const layer = name.slice(0, name.indexOf('.'));
    const got = a.get(name);
    if (got === undefined) throw new Error(`layerRelError: ${name} is missing`);
    let d = diff.get(layer) ?? 0;
    let s = scale.get(layer) ?? 0;
    for (let i = 0; i < ref.length; i++) {
      d = Math.max(d, Math.abs(got[i]! - ref[i]!));
      s = Math.max(s, Math.abs(ref[i]!));
    }
    diff.set(layer, d);
    scale.set(layer, s);
  }
  let worst = { worst: 0, layer: '' };
  for (const [layer, d] of diff) {
    const e = d / (scale.get(layer) || 1);
    if (e >= worst.worst) worst = { worst: e, layer };
  }
  return worst;
}
