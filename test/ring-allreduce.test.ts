/**
 * The ring all-reduce against the naive one (tinygrad's test_multitensor
 * style): N rings wired in memory, random buckets, every worker must end with
 * the plain average, bit for bit the same on every worker.
 */
import { describe, expect, it } from 'vitest';
import { chunkRange, ownedChunk, PIECE_FLOATS, planBuckets, RingAllReduce } from '../src/wire/ring-allreduce.js';
import { PROTOCOL_VERSION, type ToPeer } from '../src/wire/protocol.js';
import { pseudoRandom } from './helpers/backends.js';
import { allReduce } from './helpers/ring.js';
import { fromBf16, toBf16 } from '../src/wire/bf16.js';

/** x rounded to bf16 and back: what a receiver of x as bf16 holds. */
const viaBf16 = (x: number): number => fromBf16(toBf16(Float32Array.of(x)))[0]!;

function wire(world: number): RingAllReduce[] {
  const rings: RingAllReduce[] = [];
  for (let r = 0; r < world; r++) {
    rings.push(new RingAllReduce(r, world, (msg, data) => {
      // Deliver later and without copying, as a zero-copy socket may: a sender
      // that writes to a chunk after sending it corrupts what arrives.
      setTimeout(() => rings[(r + 1) % world]!.deliver(msg as Extract<ToPeer, { kind: 'ring' }>, data), Math.random() * 3);
    }, 5_000));
  }
  return rings;
}
let sizes: number[] = [];

describe('ring all-reduce', () => {
  for (const world of [2, 3, 4, 5]) {
    it(`averages ${world} workers' buckets exactly as the naive sum/N, identically on every worker`, async () => {
      sizes = [1, 7, 64, 1000, 3];
      const rings = wire(world);
      rings.forEach((ring) => ring.configure(sizes));
      const data = rings.map((_, r) => sizes.map((s, b) => pseudoRandom(s, 100 * r + b + 1)));
      const expected = sizes.map((s, b) => {
        const out = new Float32Array(s);
        for (let i = 0; i < s; i++) {
          let sum = 0;
          for (let r = 0; r < world; r++) sum += data[r]![b]![i]!;
          out[i] = sum / world;
        }
        return out;
      });
      for (const step of [0, 1]) {
        const copies = data.map((d) => d.map((x) => x.slice()));
        rings.forEach((ring) => ring.begin(step));
        await Promise.all(rings.flatMap((ring, r) => sizes.map((_, b) => allReduce(ring, b, copies[r]![b]!))));
        for (let b = 0; b < sizes.length; b++) {
          for (let r = 0; r < world; r++) {
            expect(Array.from(copies[r]![b]!), `worker ${r} bucket ${b}`).toEqual(Array.from(copies[0]![b]!));
            const e = expected[b]!;
            expect(Math.max(...copies[r]![b]!.map((v, i) => Math.abs(v - e[i]!)))).toBeLessThan(1e-6);
          }
        }
      }
      // each worker sent 2(N-1)/N of every bucket
      const total = sizes.reduce((a, b) => a + b, 0);
      for (const ring of rings) expect(Math.abs(ring.bytesSent / 2 - 2 * ((world - 1) / world) * total * 4)).toBeLessThanOrEqual(8 * sizes.length * world);
    });
  }

  for (const world of [2, 3]) {
    it(`reduce-scatter leaves each of ${world} workers the sum of its own chunk; all-gather hands every worker's chunk to all`, async () => {
      const bucketSizes = [1, 10, 257];
      const rings = wire(world);
      rings.forEach((ring) => ring.configure(bucketSizes));
      const data = rings.map((_, r) => bucketSizes.map((s, b) => pseudoRandom(s, 7 * r + b + 1)));
      rings.forEach((ring) => ring.begin(0));
      const owned = await Promise.all(rings.map((ring, r) => Promise.all(bucketSizes.map((_, b) => ring.reduceScatter(b, data[r]![b]!)))));
      for (let b = 0; b < bucketSizes.length; b++) {
        const size = bucketSizes[b]!;
        // the owned chunks are the ring's chunk ownedChunk(r) and cover the bucket exactly once
        const covered = new Array(size).fill(0);
        for (let r = 0; r < world; r++) {
          const [lo, hi] = owned[r]![b]!;
          expect([lo, hi], `worker ${r} bucket ${b}`).toEqual(chunkRange(size, world, ownedChunk(r, world)));
          for (let i = lo; i < hi; i++) {
            covered[i]++;
            let sum = 0;
            for (let q = 0; q < world; q++) sum += pseudoRandom(size, 7 * q + b + 1)[i]!;
            expect(Math.abs(data[r]![b]![i]! - sum), `worker ${r} bucket ${b} [${i}]`).toBeLessThan(1e-5);
          }
        }
        expect(covered.every((c) => c === 1)).toBe(true);
      }
      // ZeRO-1: each worker writes its own chunk (here: its rank), the all-gather brings everyone the others'
      const weights = rings.map((_, r) => bucketSizes.map((size, b) => {
        const w = new Float32Array(size).fill(-1);
        const [lo, hi] = owned[r]![b]!;
        w.fill(r, lo, hi);
        return w;
      }));
      await Promise.all(rings.flatMap((ring, r) => bucketSizes.map((_, b) => ring.allGather(b, weights[r]![b]!))));
      for (let b = 0; b < bucketSizes.length; b++) {
        const expected = new Float32Array(bucketSizes[b]!);
        for (let r = 0; r < world; r++) expected.fill(r, ...owned[r]![b]!);
        for (let r = 0; r < world; r++) expect(Array.from(weights[r]![b]!), `worker ${r} bucket ${b}`).toEqual(Array.from(expected));
      }
    });
  }

  it('refuses a message for another collective, bucket, round or chunk, or of the wrong size', () => {
    const ring = new RingAllReduce(1, 3, () => {}, 1000);
    ring.configure([30, 30]);
    ring.begin(5);
    const ok: Extract<ToPeer, { kind: 'ring' }> = { kind: 'ring', v: PROTOCOL_VERSION, from: 0, seq: 5, bucket: 1, phase: 'rs', round: 0, chunk: 0, offset: 0, wire: 'fp32', count: 10 };
    expect(() => ring.deliver(ok, new Float32Array(10))).not.toThrow();
    expect(() => ring.deliver({ ...ok, seq: 4 }, new Float32Array(10))).toThrow('ring message for collective 4 during collective 5');
    expect(() => ring.deliver({ ...ok, seq: 6 }, new Float32Array(10))).not.toThrow(); // the next collective may start early
    expect(() => ring.deliver({ ...ok, seq: 7 }, new Float32Array(10))).toThrow('ring message for collective 7 during collective 5');
    expect(() => ring.deliver({ ...ok, bucket: 2 }, new Float32Array(10))).toThrow('ring message for bucket 2: a step has 2');
    expect(() => ring.deliver({ ...ok, round: 2 }, new Float32Array(10))).toThrow('ring message for round 2: a ring of 3 has 2');
    expect(() => ring.deliver({ ...ok, chunk: 1 }, new Float32Array(10))).toThrow('ring rs round 0: chunk 1, expected 0');
    expect(() => ring.deliver({ ...ok, round: 1, chunk: 2 }, new Float32Array(9))).toThrow('ring chunk 2 of bucket 1: 9 floats at offset 0, expected 10');
    expect(() => ring.deliver({ ...ok, offset: 3 }, new Float32Array(7))).toThrow('ring chunk 0 of bucket 1: a piece at offset 3 of a 10-float chunk');
    expect(() => ring.deliver(ok, new Float32Array(10))).toThrow('ring message 5/1/rs/0 at offset 0 arrived twice');
  });

  it(`sends a chunk larger than ${PIECE_FLOATS} floats in pieces and reassembles it exactly`, async () => {
    const size = 2 * PIECE_FLOATS * 2 + 5; // each of 2 workers' chunks takes 3 pieces
    const rings = wire(2);
    rings.forEach((ring) => ring.configure([size]));
    const data = [pseudoRandom(size, 1), pseudoRandom(size, 2)];
    const expected = data[0]!.map((v, i) => (v + data[1]![i]!) / 2);
    rings.forEach((ring) => ring.begin(0));
    await Promise.all(rings.map((ring, r) => allReduce(ring, 0, data[r]!)));
    // 2 workers: each sends one chunk in the reduce-scatter and the other in the all-gather, the whole bucket
    // (a piece larger than PIECE_FLOATS would have been refused on arrival)
    for (const ring of rings) expect(ring.bytesSent).toBe(size * 4);
    for (const d of data) expect(d.reduce((m, v, i) => Math.max(m, Math.abs(v - expected[i]!)), 0)).toBeLessThan(1e-6);
    expect(data[0]!.every((v, i) => v === data[1]![i])).toBe(true);
  });

  describe('on a bf16 wire', () => {
    it('reduce-scatter over 3 workers: each hop adds the decoded partial sum into float32, exactly as the hop-by-hop reference', async () => {
      // Chunk c starts at worker c, which sends bf16(x_c); worker c+1 sends bf16(decoded + x_{c+1});
      // the owner c+2 = c−1 keeps decoded + x_{c+2} in float32.
      const world = 3;
      const size = 301;
      const rings = wire(world);
      rings.forEach((ring) => { ring.configure([size]); ring.begin(0, 'bf16'); });
      const x = rings.map((_, r) => pseudoRandom(size, 40 + r));
      const data = x.map((d) => d.slice());
      const owned = await Promise.all(rings.map((ring, r) => ring.reduceScatter(0, data[r]!)));
      for (let r = 0; r < world; r++) {
        const [lo, hi] = owned[r]!;
        const c = ownedChunk(r, world);
        for (let i = lo; i < hi; i++) {
          let partial = viaBf16(x[c]![i]!);
          partial = viaBf16(Math.fround(partial + x[(c + 1) % world]![i]!));
          const want = Math.fround(partial + x[(c + 2) % world]![i]!);
          if (data[r]![i] !== want) throw new Error(`worker ${r} [${i}]: ${data[r]![i]}, expected ${want}`);
        }
      }
      // 2 of 3 chunks sent, 2 bytes a value
      const chunkLength = (c: number) => chunkRange(size, world, c)[1] - chunkRange(size, world, c)[0];
      for (const [r, ring] of rings.entries()) expect(ring.bytesSent, `worker ${r}`).toBe(2 * (chunkLength(r) + chunkLength((r + 2) % world)));
    });

    for (const world of [2, 3, 4]) {
      it(`all-reduce of ${world} workers: every worker ends with the same bits, the average within bf16's rounding, in half the bytes of float32`, async () => {
        const bucketSizes = [1, 7, 1000];
        const run = async (w: 'fp32' | 'bf16') => {
          const rings = wire(world);
          rings.forEach((ring) => { ring.configure(bucketSizes); ring.begin(0, w); });
          const data = rings.map((_, r) => bucketSizes.map((s, b) => pseudoRandom(s, 100 * r + b + 1)));
          await Promise.all(rings.flatMap((ring, r) => bucketSizes.map((_, b) => allReduce(ring, b, data[r]![b]!))));
          return { data, sent: rings.map((ring) => ring.bytesSent) };
        };
        const exact = await run('fp32');
        const half = await run('bf16');
        expect(half.sent).toEqual(exact.sent.map((n) => n / 2));
        for (let b = 0; b < bucketSizes.length; b++) {
          for (let r = 0; r < world; r++) {
            expect(Array.from(half.data[r]![b]!), `worker ${r} bucket ${b}`).toEqual(Array.from(half.data[0]![b]!));
            // values in [−1, 1): N−1 roundings of partial sums |s| < N (each ≤ 2^-9·|s|), divided by N, and the average's own: < 2^-9·N
            const bound = 2 ** -9 * world;
            const err = Math.max(...half.data[r]![b]!.map((v, i) => Math.abs(v - exact.data[0]![b]![i]!)));
            expect(err, `worker ${r} bucket ${b}`).toBeLessThanOrEqual(bound);
          }
          // the result is made of bf16 values: rounding it again changes nothing
          expect(Array.from(fromBf16(toBf16(half.data[0]![b]!)))).toEqual(Array.from(half.data[0]![b]!));
        }
      });
    }

    it('refuses a float32 piece in a collective sent as bf16', async () => {
      const ring = new RingAllReduce(0, 2, () => {}, 1000);
      ring.configure([4]);
      ring.begin(0, 'bf16');
      ring.deliver({ kind: 'ring', seq: 0, bucket: 0, phase: 'rs', round: 0, chunk: 1, offset: 0 }, new Float32Array(2));
      await expect(ring.reduceScatter(0, new Float32Array(4))).rejects.toThrow('ring reduce-scatter bucket 0 round 0 from worker 1: a fp32 piece in a collective sent as bf16');
    });
  });

  it('plans buckets in the given order, at most bucketBytes each', () => {
    const b = planBuckets([{ name: 'a', size: 10 }, { name: 'b', size: 10 }, { name: 'c', size: 100 }, { name: 'd', size: 1 }], 80);
    expect(b.map((x) => x.params.map((p) => p.name))).toEqual([['a', 'b'], ['c'], ['d']]);
    expect(chunkRange(10, 3, 2)).toEqual([6, 10]);
  });
});
