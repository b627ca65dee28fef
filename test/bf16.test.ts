/**
 * The bf16 wire codec on hand-computable values: every expectation below is
 * a bit pattern worked out from the definition (bf16 = the top 16 bits of a
 * float32, rounded to nearest, ties to even), not taken from the code.
 */
import { describe, expect, it } from 'vitest';
import { addBf16Into, firstNonFiniteBf16, fromBf16, roundToBf16InPlace, toBf16 } from '../src/wire/bf16.js';

/** float32 values from their bit patterns. */
const f32 = (...bits: number[]) => new Float32Array(new Uint32Array(bits).buffer);
/** The float32 bit patterns of `a`. */
const bitsOf = (a: Float32Array) => [...new Uint32Array(a.buffer, a.byteOffset, a.length)];
const hex = (xs: Iterable<number>) => [...xs].map((x) => `0x${x.toString(16).padStart(4, '0')}`);

describe('toBf16: float32 [n] → bf16 [n], round to nearest even', () => {
  it('keeps values bf16 holds exactly: 1, −2, 0.5, ±0', () => {
    const got = toBf16(new Float32Array([1, -2, 0.5, 0, -0]));
    expect(got.length).toBe(5);
    expect(hex(got)).toEqual(hex([0x3f80, 0xc000, 0x3f00, 0x0000, 0x8000]));
  });

  it('rounds ties to even: 1 + 2^-8 → 1 (0x3f80, even), 1 + 3·2^-8 → 1 + 2^-6 (0x3f82, not 0x3f81)', () => {
    // 0x3f808000 is halfway between 0x3f80 and 0x3f81; 0x3f818000 halfway between 0x3f81 and 0x3f82.
    expect(hex(toBf16(f32(0x3f808000, 0x3f818000, 0xbf818000)))).toEqual(hex([0x3f80, 0x3f82, 0xbf82]));
  });

  it('rounds to nearest, not towards zero: 0x3f808001 → 0x3f81, 0x3f80ffff → 0x3f81, 0x3f807fff → 0x3f80', () => {
    expect(hex(toBf16(f32(0x3f808001, 0x3f80ffff, 0x3f807fff)))).toEqual(hex([0x3f81, 0x3f81, 0x3f80]));
  });

  it('rounds subnormals the same way: 2^-149 → 0, 0x8000 (a tie) → 0, 0x18000 (a tie) → 0x0002, 0x7fffff → 2^-126', () => {
    // 0x00018000 lies halfway between bf16 subnormals 0x0001 and 0x0002; 0x007fffff (largest subnormal) carries into the first normal.
    expect(hex(toBf16(f32(0x00000001, 0x00008000, 0x00018000, 0x007fffff, 0x80008001)))).toEqual(hex([0x0000, 0x0000, 0x0002, 0x0080, 0x8001]));
  });

  it('overflows to Inf as IEEE says: float32 max and the tie above bf16 max → Inf, just below the tie → bf16 max', () => {
    // bf16 max is 0x7f7f; 0x7f7f8000 is halfway to 0x7f80 (Inf) and 0x7f7f is odd, so it rounds up.
    expect(hex(toBf16(f32(0x7f7fffff, 0x7f7f8000, 0x7f7f7fff, 0xff7fffff)))).toEqual(hex([0x7f80, 0x7f80, 0x7f7f, 0xff80]));
  });

  it('keeps ±Inf and NaN: Inf → 0x7f80, −Inf → 0xff80, a NaN with only low payload bits stays NaN (quiet), not Inf', () => {
    const got = toBf16(f32(0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff));
    expect(hex(got)).toEqual(hex([0x7f80, 0xff80, 0x7fc0, 0x7fc0, 0xffff]));
    expect(Number.isNaN(fromBf16(got)[3])).toBe(true);
  });

  it('writes into a given buffer, and throws when its length differs, naming both', () => {
    const dst = new Uint16Array(2);
    expect(toBf16(new Float32Array([1, 2]), dst)).toBe(dst);
    expect(() => toBf16(new Float32Array(3), dst)).toThrow('toBf16: destination holds 2 values, source 3');
  });
});

describe('fromBf16: bf16 [n] → float32 [n], exact', () => {
  it('shifts the 16 bits up: 0x3f80 → 1, 0xc049 → −3.140625, 0x0001 → 2^-133, 0x7f80 → Inf, 0xff80 → −Inf', () => {
    const got = fromBf16(new Uint16Array([0x3f80, 0xc049, 0x0001, 0x7f80, 0xff80]));
    expect(got.length).toBe(5);
    expect([...got]).toEqual([1, -3.140625, 2 ** -133, Infinity, -Infinity]);
  });

  it('keeps a NaN\'s bits (0x7fc1 → 0x7fc10000)', () => {
    expect(bitsOf(fromBf16(new Uint16Array([0x7fc1])))).toEqual([0x7fc10000]);
  });

  it('round-trips every bf16 value that is not NaN', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = toBf16(fromBf16(all));
    for (let h = 0; h < 65536; h++) if ((h & 0x7fff) <= 0x7f80 && back[h] !== h) throw new Error(`0x${h.toString(16)} came back as 0x${back[h]!.toString(16)}`);
  });

  it('throws when the destination length differs, naming both', () => {
    expect(() => fromBf16(new Uint16Array(3), new Float32Array(4))).toThrow('fromBf16: destination holds 4 values, source 3');
  });
});

describe('roundToBf16InPlace: float32 [n], a range rounded to bf16 values', () => {
  it('rounds only [begin, end), to what the receiver of the bf16 bits will decode, and hands out those bits', () => {
    const data = f32(0x3f808001, 0x3f818000, 0x3f808001, 0x7f7fffff);
    const wire = new Uint16Array(2);
    roundToBf16InPlace(data, 1, 3, wire);
    expect(hex(wire)).toEqual(hex([0x3f82, 0x3f81]));
    expect(bitsOf(data)).toEqual([0x3f808001, 0x3f820000, 0x3f810000, 0x7f7fffff]);
    expect(bitsOf(fromBf16(wire))).toEqual(bitsOf(data.subarray(1, 3)));
  });

  it('throws when the bits buffer does not fit the range', () => {
    expect(() => roundToBf16InPlace(new Float32Array(4), 1, 3, new Uint16Array(3))).toThrow('roundToBf16InPlace: destination holds 3 values, range 2');
  });
});

describe('addBf16Into: float32 [n] += bf16 [k] at an offset', () => {
  it('accumulates in float32: 1 + bf16(2^-8)·3 keeps what bf16 alone would lose', () => {
    const acc = new Float32Array([5, 1, 7]);
    const piece = toBf16(new Float32Array([2 ** -8]));
    for (let i = 0; i < 3; i++) addBf16Into(acc, 1, piece);
    expect([...acc]).toEqual([5, 1 + 3 * 2 ** -8, 7]);
  });

  it('adds a piece of 2 at offset 1 of 4: [1, 2, 3, 4] + [0.5, −2] → [1, 2.5, 1, 4]', () => {
    const acc = new Float32Array([1, 2, 3, 4]);
    addBf16Into(acc, 1, new Uint16Array([0x3f00, 0xc000]));
    expect([...acc]).toEqual([1, 2.5, 1, 4]);
  });

  it('throws when the piece overruns the destination', () => {
    expect(() => addBf16Into(new Float32Array(4), 3, new Uint16Array(2))).toThrow('addBf16Into: 2 values at offset 3 overrun a destination of 4');
  });
});

describe('firstNonFiniteBf16', () => {
  it('finds Inf or NaN, passes the largest finite value', () => {
    expect(firstNonFiniteBf16(new Uint16Array([0x3f80, 0x7f7f, 0xff7f]))).toBe(-1);
    expect(firstNonFiniteBf16(new Uint16Array([0x3f80, 0xff80]))).toBe(1);
    expect(firstNonFiniteBf16(new Uint16Array([0x7fc0]))).toBe(0);
  });
});
