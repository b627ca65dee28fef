import type { KernelBackend, TensorInfo } from '@tensorflow/tfjs-core';

/**
 * Data movement written in JavaScript over the wasm heap. The wasm backend's
 * Reverse and Transpose are generic per-element loops (Reverse of a
 * [3,3,384,384] filter: ~100 ms; Transpose of [4096,4096]: ~200 ms); a
 * cache-blocked copy here does the same in a few ms.
 */

/** The wasm backend's heap access, which tfjs does not type. */
export interface HeapBackend {
  makeOutput(shape: number[], dtype: 'float32'): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array;
}

/** The backend's heap access when it has one (wasm), else undefined. */
export function heapOf(backend: KernelBackend): HeapBackend | undefined {
  const b = backend as unknown as Partial<HeapBackend>;
  return typeof b.makeOutput === 'function' && typeof b.typedArrayFromHeap === 'function' ? (b as HeapBackend) : undefined;
}

function heap(backend: KernelBackend): HeapBackend {
  const h = heapOf(backend);
  if (h === undefined) throw new Error('heap-ops: expected the wasm backend (makeOutput, typedArrayFromHeap)');
  return h;
}

const TILE = 16; // 16×16 floats = 1 KiB per tile (measured best of 8, 16, 32, 64)

/** dst[dOff + c*rows + r] = src[sOff + r*cols + c] for a rows×cols block. */
export function transposeBlock(src: Float32Array, sOff: number, dst: Float32Array, dOff: number, rows: number, cols: number): void {
  for (let r0 = 0; r0 < rows; r0 += TILE) {
    const r1 = Math.min(rows, r0 + TILE);
    for (let c0 = 0; c0 < cols; c0 += TILE) {
      const c1 = Math.min(cols, c0 + TILE);
      for (let r = r0; r < r1; r++) {
        const s = sOff + r * cols;
        for (let c = c0; c < c1; c++) dst[dOff + c * rows + r] = src[s + c]!;
      }
    }
  }
}

/** [rows, cols] -> [cols, rows], float32. */
export function transpose2d(backend: KernelBackend, x: TensorInfo): TensorInfo {
  if (x.shape.length !== 2 || x.dtype !== 'float32') {
    throw new Error(`transpose2d: expected a float32 matrix, got ${x.dtype} [${x.shape}]`);
  }
  const [rows, cols] = x.shape as [number, number];
  const h = heap(backend);
  const out = h.makeOutput([cols, rows], 'float32'); // may grow the heap: take views after
  transposeBlock(h.typedArrayFromHeap(x), 0, h.typedArrayFromHeap(out), 0, rows, cols);
  return out;
}

/**
 * A conv filter [KH, KW, Ci, Co] rotated 180° in space with in/out swapped:
 * out[KH-1-i, KW-1-j, co, ci] = w[i, j, ci, co]. This is the filter of the
 * convolution that computes a forward convolution's input gradient.
 */
export function flipSwapFilter(backend: KernelBackend, w: TensorInfo): TensorInfo {
  if (w.shape.length !== 4 || w.dtype !== 'float32') {
    throw new Error(`flipSwapFilter: expected a float32 filter [KH,KW,Ci,Co], got ${w.dtype} [${w.shape}]`);
  }
  const [kh, kw, ci, co] = w.shape as [number, number, number, number];
  const h = heap(backend);
  const out = h.makeOutput([kh, kw, co, ci], 'float32');
  const src = h.typedArrayFromHeap(w);
  const dst = h.typedArrayFromHeap(out);
  const tap = ci * co;
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      transposeBlock(src, (i * kw + j) * tap, dst, ((kh - 1 - i) * kw + (kw - 1 - j)) * tap, ci, co);
    }
  }
  return out;
}
