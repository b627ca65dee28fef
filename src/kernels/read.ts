import * as tf from '@tensorflow/tfjs';
import { heapOf, type HeapBackend } from './heap-ops.js';

/**
 * Reading a tensor's values back to the host, asynchronously. No training
 * step reads synchronously: on a GPU backend (WebGPU in Node) a synchronous
 * read does not exist, and an `await` lets the event loop run the sockets.
 *
 * On wasm the values already sit in the module's heap: they are copied from
 * there directly (one copy, no staging), behind the same asynchronous call.
 */

/** The heap `t` lives in, when it is a float32 tensor on wasm. */
function heapFor(t: tf.Tensor): HeapBackend | undefined {
  return t.dtype === 'float32' && tf.getBackend() === 'wasm' ? heapOf(tf.backend()) : undefined;
}

/** A float32 copy of `t`'s values that the caller owns (safe to send zero-copy). */
export async function readFloats(t: tf.Tensor): Promise<Float32Array> {
  const heap = heapFor(t);
  if (heap) return heap.typedArrayFromHeap({ dataId: t.dataId, shape: t.shape, dtype: 'float32' }).slice();
  const d = await t.data();
  // Some backends (cpu) hand out the tensor's own array: copy, so the caller may send or keep it.
  return d instanceof Float32Array ? d.slice() : Float32Array.from(d as ArrayLike<number>);
}

/** A scalar's value. */
export async function readScalar(t: tf.Tensor): Promise<number> {
  return (await t.data())[0]!;
}

/**
 * Copies `t`'s values into `dst` at `offset`. On wasm straight from the heap
 * (done when this returns, synchronously); elsewhere the read is queued and
 * the returned promise settles once the values are in place, so a caller can
 * go on computing meanwhile. `t` must stay alive until then.
 */
export function copyInto(t: tf.Tensor, dst: Float32Array, offset: number): Promise<void> | undefined {
  const heap = heapFor(t);
  if (heap) {
    dst.set(heap.typedArrayFromHeap({ dataId: t.dataId, shape: t.shape, dtype: 'float32' }), offset);
    return undefined;
  }
  return t.data().then((d) => { dst.set(d as Float32Array, offset); });
}
