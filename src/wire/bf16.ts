/**
 * bfloat16 on the wire: the top 16 bits of a float32 (sign, the same 8
 * exponent bits, 7 of the 23 mantissa bits), so a tensor travels in half the
 * bytes with float32's range and 8 significant bits (relative error ≤ 2^-9
 * per rounding).
 *
 * float32 → bf16 rounds to nearest, ties to even, as IEEE 754 and every
 * accelerator's conversion do (truncation would bias every value towards
 * zero by up to 2^-8, and a ring would compound it at each hop). Across the
 * whole range, subnormals included, that is one integer add on the bit
 * pattern: bits + 0x7FFF + (bit 16), keep the top half. A carry out of the
 * mantissa moves to the next binade, and past the largest finite bf16
 * (0x7F7F, ≈3.3895e38) to Inf, which is IEEE's overflow. NaN stays NaN
 * (sign and top payload kept, quiet bit set: the add would turn a NaN with
 * only low payload bits into Inf); ±Inf stays ±Inf.
 *
 * bf16 → float32 is exact: the 16 bits shifted up.
 *
 * Buffers: nothing here allocates per call except `toBf16` without a
 * destination; callers on the ring's hot path (pieces of up to 2^20 values)
 * pass their own, reused buffers.
 */

import type { WireType } from '../config/choices.js';

/** Bytes of one value of each wire type. */
export const WIRE_BYTES: Record<WireType, number> = { fp32: 4, bf16: 2 };

/** A tensor as it travels: float32 values, or bf16 bit patterns. */
export type WireArray = Float32Array | Uint16Array;

/** The type of a wire array (a Uint16Array holds bf16 bit patterns). */
export const wireTypeOf = (a: WireArray): WireType => (a instanceof Uint16Array ? 'bf16' : 'fp32');

/** float32 bits → bf16 bits, rounded to nearest even. */
function roundBits(bits: number): number {
  // NaN: exponent all ones, mantissa non-zero. Quiet it and keep the sign and top payload.
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x0040;
  // bits ≤ 0xFF800000 here (−Inf), so the sum stays below 2^32 and >>> sees it whole.
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/** The float32 bits of `src` (a view, no copy: Float32Arrays are always 4-byte aligned). */
const bitsOf = (src: Float32Array): Uint32Array => new Uint32Array(src.buffer, src.byteOffset, src.length);

/**
 * `src` rounded to bf16 bit patterns, into `dst` (which must hold
 * src.length values) or a new array.
 */
export function toBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length !== src.length) throw new Error(`toBf16: destination holds ${dst.length} values, source ${src.length}`);
  const bits = bitsOf(src);
  const n = bits.length;
  for (let i = 0; i < n; i++) dst[i] = roundBits(bits[i]!);
  return dst;
}

/** bf16 bit patterns → float32, exactly, into `dst` (src.length values) or a new array. */
export function fromBf16(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length !== src.length) throw new Error(`fromBf16: destination holds ${dst.length} values, source ${src.length}`);
  // Written as bits, not as numbers: a NaN's payload survives (V8 may canonicalize NaNs it loads as doubles).
  const out = bitsOf(dst);
  const n = src.length;
  for (let i = 0; i < n; i++) out[i] = src[i]! << 16;
  return dst;
}

/**
 * Rounds `data[begin, end)` to the nearest bf16 values in place (still
 * float32): what the receivers of these values will hold, so that a sender
 * that keeps using them agrees with them bit for bit. `wire`, if given,
 * receives the bf16 bit patterns (length end − begin) in the same pass.
 */
export function roundToBf16InPlace(data: Float32Array, begin = 0, end = data.length, wire?: Uint16Array): void {
  if (wire !== undefined && wire.length !== end - begin) throw new Error(`roundToBf16InPlace: destination holds ${wire.length} values, range ${end - begin}`);
  const bits = bitsOf(data);
  for (let i = begin; i < end; i++) {
    const h = roundBits(bits[i]!);
    bits[i] = h << 16;
    if (wire !== undefined) wire[i - begin] = h;
  }
}

/**
 * Every bf16 value as a float32, by bit pattern (256 KiB, filled once): the
 * decode in `addBf16Into` is one load, no bit juggling per value.
 */
const DECODE = new Float32Array(new Uint32Array(65536).map((_, h) => h << 16).buffer);

/**
 * dst[offset + i] += float32(src[i]): the ring's reduce-scatter hop, which
 * accumulates in float32 and never materializes the decoded piece. A small
 * function of its own so V8 optimizes it once (as ring-allreduce's addInto).
 */
export function addBf16Into(dst: Float32Array, offset: number, src: Uint16Array): void {
  if (offset < 0 || offset + src.length > dst.length) throw new Error(`addBf16Into: ${src.length} values at offset ${offset} overrun a destination of ${dst.length}`);
  const n = src.length;
  for (let i = 0; i < n; i++) dst[offset + i]! += DECODE[src[i]!]!;
}

/**
 * dst[offset + i] += src[i], float32. A small function of its own so V8
 * optimizes it once for every bucket (inlined in the async ring loop it ran
 * ~6x slower).
 */
export function addInto(dst: Float32Array, offset: number, src: Float32Array): void {
  const n = src.length;
  for (let i = 0; i < n; i++) dst[offset + i]! += src[i]!;
}

/** Value i of a wire array, as a number (for messages). */
export const valueAt = (a: WireArray, i: number): number => (a instanceof Uint16Array ? fromBf16(a.subarray(i, i + 1))[0]! : a[i]!);

/** Index of the first bf16 value that is NaN or ±Inf (exponent all ones), or −1. */
export function firstNonFiniteBf16(a: Uint16Array): number {
  for (let i = 0; i < a.length; i++) if ((a[i]! & 0x7f80) === 0x7f80) return i;
  return -1;
}
