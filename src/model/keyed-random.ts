/**
 * Randomness that is keyed, not streamed: a value is a pure function of
 * (seed, key, index). Any split of a layer across towers or any sharding of a
 * batch across replicas therefore draws exactly the numbers one process would.
 */

/** 32-bit mix (the murmur3 finalizer). */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** FNV-1a of a string, then mixed with the seed. */
export function keyHash(seed: number, key: string): number {
  let h = 0x811c9dc5 ^ mix32(seed >>> 0);
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return mix32(h >>> 0);
}

/** Uniform in [0, 1) for (stream, index): a counter-based generator. */
export function uniformAt(stream: number, index: number): number {
  const a = mix32((stream ^ Math.imul(index >>> 0, 0x9e3779b1)) >>> 0);
  const b = mix32((a + 0x6a09e667 + (Math.floor(index / 2 ** 32) | 0)) >>> 0);
  return b / 2 ** 32;
}

/** `count` uniforms in [lo, hi) for a key. */
export function uniformArray(seed: number, key: string, count: number, lo: number, hi: number): Float32Array {
  const stream = keyHash(seed, key);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = lo + (hi - lo) * uniformAt(stream, i);
  return out;
}

/** `count` normals N(mean, std^2) for a key (Box-Muller on pairs of keyed uniforms). */
export function normalArray(seed: number, key: string, count: number, mean: number, std: number): Float32Array {
  const stream = keyHash(seed, key);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const u1 = 1 - uniformAt(stream, i); // (0, 1]: log is finite
    const u2 = uniformAt(stream, i + 1);
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = mean + std * r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < count) out[i + 1] = mean + std * r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}
