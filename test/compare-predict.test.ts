/**
 * The prediction `splitnet compare` makes before it runs: bytes per worker
 * from the layer shapes (checked against the ring's own byte count and the
 * 2012 net's published shapes) and step times from made-up layer timings
 * (checked against bounds each mode's model must respect).
 */
import { describe, expect, it } from 'vitest';
import {
  crossLinkFloatsPerSample as benchCrossLinkFloats,
} from '../bench/split.js';
import {
  crossLinkFloatsPerSample, dataParallelBytes, FLOAT_BYTES, gradientBuckets, hybridBytes, modelExchanges, modelParallelBytes, predictBytes,
  predictBytesByRank, ringBytesSent, towerBuckets, type PredictMode,
} from '../src/compare/predict-bytes.js';
import {
  forecast, forecastLinks, LINK_10_GBIT_S, LINK_100_GBIT_S, predictStepMs, relativeError, transferMs,
  type ForecastInputs, type StepInputs,
} from '../src/compare/predict.js';
import type { LayerTiming, LinkMeasure } from '../src/compare/types.js';
import { alexnet } from '../src/model/alexnet.js';
import { parameterShapes } from '../src/model/build.js';
import { shapesOf } from '../src/model/shapes.js';
import { splitUnits, type ModelSpec } from '../src/model/spec.js';
import { planBuckets, RingAllReduce } from '../src/wire/ring-allreduce.js';
import type { ToPeer } from '../src/wire/protocol.js';

/** The 2012 net at its published size, on Fashion-MNIST's 10 classes. */
const ORIGINAL = alexnet({ arch: 'original', classes: 10 });
const D2L = alexnet({ arch: 'd2l' });
const BUCKET_BYTES = 25 * 2 ** 20;
const INFINITE_LINK: LinkMeasure = { latencyMs: 0, bandwidth: Infinity };
/** 1 MB/s: slow enough that any exchange dwarfs the made-up compute */
const SLOW_LINK: LinkMeasure = { latencyMs: 1, bandwidth: 1e6 };

const paramCount = (spec: ModelSpec) => [...parameterShapes(spec).values()].reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
const sumOf = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);
const floatsOf = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** The 2012 net small enough to count by hand, in `towers` towers (3 divides conv2, conv5, fc6, fc7 and the 10 classes unevenly). */
const small = (towers: number) => alexnet({ arch: 'original', width: 1 / 8, resolution: 67, classes: 10, towers });

/**
 * What model-parallel worker rank = r·T + t of `replicas` rows sends at its
 * cross links, fp32, counted from the protocol with none of predict-bytes'
 * helpers: at conv3, fc6, fc7, fc8 its tower's part of the input [b, tw(L−1, t)]
 * to each of the T−1 others and every other tower's part of the gradient
 * back; its part of the logits forward. b = batch / replicas.
 */
function modelLinksByHand(spec: ModelSpec, replicas: number, rank: number, batch: number): Record<string, number> {
  const T = spec.towers;
  const t = rank % T;
  const b = batch / replicas;
  const shapes = shapesOf(spec);
  const tw = (i: number, u: number) => floatsOf(shapes[i]!.towers[u]!.output);
  const out: Record<string, number> = {};
  for (const name of ['conv3', 'fc6', 'fc7', 'fc8']) {
    const i = spec.layers.findIndex((l) => l.name === name);
    let floats = (T - 1) * b * tw(i - 1, t);
    for (let u = 0; u < T; u++) if (u !== t) floats += b * tw(i - 1, u);
    out[name] = floats * 4;
  }
  out.logits = (T - 1) * b * tw(spec.layers.length - 1, t) * 4;
  return out;
}

/**
 * What hybrid worker k of N sends at the head, fp32, counted from the
 * protocol: fc6, its B/N samples' flat features to each of the others and
 * the others' rows of the gradient back; fc7 and fc8, its units of the
 * previous dense layer for all B to each of the others and the others' units
 * of the gradient back; its units of fc8 as logits, forward only.
 */
function hybridLinksByHand(spec: ModelSpec, world: number, k: number, batch: number): Record<string, number> {
  const F = floatsOf(shapesOf(spec)[spec.layers.findIndex((l) => l.kind === 'flatten')]!.outputShape);
  const dense = spec.layers.filter((l) => l.kind === 'dense');
  const units = dense.map((l) => splitUnits(l.units, world));
  const out: Record<string, number> = { fc6: ((world - 1) * (batch / world) * F + (world - 1) * (batch / world) * F) * 4 };
  for (const [d, name] of [[1, 'fc7'], [2, 'fc8']] as const) {
    const prev = units[d - 1]!;
    let floats = (world - 1) * batch * prev[k]!;
    for (let j = 0; j < world; j++) if (j !== k) floats += batch * prev[j]!;
    out[name] = floats * 4;
  }
  out.logits = (world - 1) * batch * units[2]![k]! * 4;
  return out;
}

/**
 * Made-up per-layer times at the measured batch: conv layers dear, dense
 * layers cheap (as AlexNet's FLOPs are), backward twice forward.
 */
function madeUpTimings(spec: ModelSpec, convMs = 10, denseMs = 1, otherMs = 0.5): LayerTiming[] {
  return shapesOf(spec).map((s) => {
    const f = s.layer.kind === 'conv' ? convMs : s.layer.kind === 'dense' ? denseMs : otherMs;
    return { name: s.layer.name, forwardMs: f, backwardMs: 2 * f, params: s.params, outputFloats: s.outputShape.reduce((a, b) => a * b, 1) };
  });
}
const computeMs = (layers: LayerTiming[]) => layers.reduce((n, l) => n + l.forwardMs + l.backwardMs, 0);

const MEASURED_BATCH = 64;
function inputs(over: Partial<StepInputs> = {}): StepInputs {
  return { layers: madeUpTimings(ORIGINAL), link: LINK_10_GBIT_S, world: 2, batch: MEASURED_BATCH, measuredBatch: MEASURED_BATCH, spec: ORIGINAL, bucketBytes: BUCKET_BYTES, ...over };
}

/** N rings wired in memory (as in ring-allreduce.test.ts), delivering on a later turn; `sent[r]` counts worker r's bytes by bucket. */
function wire(world: number, sent: Array<Record<string, number>> = []): RingAllReduce[] {
  const rings: RingAllReduce[] = [];
  for (let r = 0; r < world; r++) {
    sent[r] = {};
    rings.push(new RingAllReduce(r, world, (msg, data) => {
      sent[r]![`bucket ${msg.bucket}`] = (sent[r]![`bucket ${msg.bucket}`] ?? 0) + data.byteLength;
      setImmediate(() => rings[(r + 1) % world]!.deliver(msg as Extract<ToPeer, { kind: 'ring' }>, data));
    }, 5_000));
  }
  return rings;
}

describe('predicted bytes: data-parallel', () => {
  it('world 2: each worker sends 2·(N−1)/N × paramBytes (= paramBytes) in all, each bucket its own size once', () => {
    const predicted = dataParallelBytes(ORIGINAL, 2, BUCKET_BYTES);
    expect(predicted.bytesSentPerStep).toBe(2 * (1 / 2) * paramCount(ORIGINAL) * FLOAT_BYTES);
    expect(sumOf(predicted.sentByLink)).toBe(predicted.bytesSentPerStep);
  });

  it("labels and sizes its buckets as DataParallelReplica plans them: the parameters in reverse order (fc8 first) through planBuckets", () => {
    // what DataParallelReplica's constructor does with model.params (built in parameterShapes' order)
    const planned = planBuckets([...parameterShapes(ORIGINAL)].reverse().map(([name, shape]) => ({ name, size: shape.reduce((a, b) => a * b, 1) })), BUCKET_BYTES);
    const predicted = dataParallelBytes(ORIGINAL, 2, BUCKET_BYTES);
    expect(Object.keys(predicted.sentByLink)).toEqual(planned.map((b) => `bucket ${b.index}`));
    expect(Object.values(predicted.sentByLink)).toEqual(planned.map((b) => b.size * FLOAT_BYTES));
    expect(planned[0]!.params[0]!.name).toBe('fc8.t1.bias');
    expect(planned.at(-1)!.params.at(-1)!.name).toBe('conv1.t0.kernel');
  });

  it('matches the bytes RingAllReduce counts, to the byte, for every rank of a 3-worker ring with uneven chunks', async () => {
    const spec = alexnet({ arch: 'original', width: 1 / 16, resolution: 67, classes: 10 });
    const bucketBytes = 8 * 1024;
    const sizes = gradientBuckets(spec, bucketBytes).map((b) => b.size);
    expect(sizes.some((s) => s % 3 !== 0)).toBe(true); // the case where ranks differ
    const world = 3;
    const rings = wire(world);
    rings.forEach((ring) => { ring.configure(sizes); ring.begin(0); });
    await Promise.all(rings.flatMap((ring) => sizes.map(async (s, b) => {
      const data = new Float32Array(s).fill(1);
      await ring.reduceScatter(b, data);
      await ring.allGather(b, data);
    })));
    for (let r = 0; r < world; r++) expect(dataParallelBytes(spec, world, bucketBytes, r).bytesSentPerStep, `rank ${r}`).toBe(rings[r]!.bytesSent);
  });

  it('on a bf16 wire: matches the bytes RingAllReduce sends, to the byte, by bucket, for every rank of a 3-worker ring, half of fp32 in each', async () => {
    const spec = alexnet({ arch: 'original', width: 1 / 16, resolution: 67, classes: 10 });
    const bucketBytes = 8 * 1024;
    const sizes = gradientBuckets(spec, bucketBytes).map((b) => b.size);
    const world = 3;
    const sent: Array<Record<string, number>> = [];
    const rings = wire(world, sent);
    rings.forEach((ring) => { ring.configure(sizes); ring.begin(0, 'bf16'); });
    await Promise.all(rings.flatMap((ring) => sizes.map(async (s, b) => {
      const data = new Float32Array(s).fill(1);
      await ring.reduceScatter(b, data);
      await ring.allGather(b, data);
    })));
    for (let r = 0; r < world; r++) {
      const bf16 = dataParallelBytes(spec, world, bucketBytes, r, 'bf16');
      const fp32 = dataParallelBytes(spec, world, bucketBytes, r);
      expect(bf16.sentByLink, `rank ${r}`).toEqual(sent[r]);
      expect(bf16.bytesSentPerStep, `rank ${r}`).toBe(rings[r]!.bytesSent);
      for (const [bucket, bytes] of Object.entries(fp32.sentByLink)) expect(bf16.sentByLink[bucket], `rank ${r} ${bucket}`).toBe(bytes / 2);
    }
  });

  it('the mean over ranks is 2·(N−1)/N × paramBytes for N = 3, 4, 5', () => {
    for (const world of [3, 4, 5]) {
      let total = 0;
      for (let r = 0; r < world; r++) total += dataParallelBytes(ORIGINAL, world, BUCKET_BYTES, r).bytesSentPerStep;
      expect(total / world, `${world} workers`).toBeCloseTo(2 * ((world - 1) / world) * paramCount(ORIGINAL) * FLOAT_BYTES, 3);
    }
  });

  it('single mode sends nothing', () => {
    expect(predictBytes('single', ORIGINAL, 1, 64, BUCKET_BYTES)).toEqual({ bytesSentPerStep: 0, sentByLink: {} });
  });
});

describe('predicted bytes: model-parallel', () => {
  it('equal crossLinkFloatsPerSample × batch × 4, by link conv3, fc6, fc7, fc8, logits for the original net', () => {
    const batch = 128;
    const predicted = modelParallelBytes(ORIGINAL, 2, batch, BUCKET_BYTES);
    expect(predicted.bytesSentPerStep).toBe(crossLinkFloatsPerSample(ORIGINAL).total * batch * 4);
    expect(Object.keys(predicted.sentByLink)).toEqual(['conv3', 'fc6', 'fc7', 'fc8', 'logits']);
  });

  it("the 2012 net at 227: 2 × a tower's pool2 (128·13·13), pool5 (128·6·6), fc6 and fc7 (2048) floats per sample, and 5 logits", () => {
    const links = Object.fromEntries(crossLinkFloatsPerSample(ORIGINAL).links.map((l) => [l.link, l.floats]));
    expect(links).toEqual({ conv3: 2 * 128 * 13 * 13, fc6: 2 * 128 * 6 * 6, fc7: 2 * 2048, fc8: 2 * 2048, logits: 5 });
  });

  it('the 2012 net on 2 workers: both ranks send what the 2-tower split always has, to the byte', () => {
    const batch = 128;
    const perSample = { conv3: 2 * 128 * 13 * 13, fc6: 2 * 128 * 6 * 6, fc7: 2 * 2048, fc8: 2 * 2048, logits: 5 };
    const expected = Object.fromEntries(Object.entries(perSample).map(([l, f]) => [l, f * batch * 4]));
    for (const p of predictBytesByRank('model', ORIGINAL, 2, batch, BUCKET_BYTES)) {
      expect(p.sentByLink).toEqual(expected);
      expect(p.bytesSentPerStep).toBe(31_066_624);
    }
  });

  it('T towers, one replica (T = 2, 3, 4, uneven at 3): every rank sends what the rules count, by link', () => {
    const batch = 24;
    for (const towers of [2, 3, 4]) {
      const spec = small(towers);
      const byRank = predictBytesByRank('model', spec, towers, batch, BUCKET_BYTES);
      expect(byRank).toHaveLength(towers);
      byRank.forEach((p, rank) => {
        expect(p.sentByLink, `${towers} towers, rank ${rank}`).toEqual(modelLinksByHand(spec, 1, rank, batch));
        expect(Object.keys(p.sentByLink)).toEqual(['conv3', 'fc6', 'fc7', 'fc8', 'logits']);
        expect(p.bytesSentPerStep).toBe(sumOf(p.sentByLink));
      });
      if (towers === 3) expect(new Set(byRank.map((p) => p.bytesSentPerStep)).size, 'uneven towers send different bytes').toBeGreaterThan(1);
    }
  });

  it("2 replicas × 2 towers: each worker's exchanges over its row's half of the batch, and a ring of its tower's parameters only", () => {
    const spec = small(2);
    const batch = 24;
    const byRank = predictBytesByRank('model', spec, 4, batch, 2048, 'fp32', 2);
    byRank.forEach((p, rank) => {
      const tower = rank % 2;
      const row = Math.floor(rank / 2);
      // tower t's parameters in DataParallelReplica's order (reversed), planned alone
      const planned = planBuckets([...parameterShapes(spec)].filter(([n]) => n.includes(`.t${tower}.`)).reverse()
        .map(([name, shape]) => ({ name, size: floatsOf(shape) })), 2048);
      expect(planned.length).toBeGreaterThan(1);
      const buckets = Object.fromEntries(planned.map((b) => [`bucket ${b.index}`, ringBytesSent(b.size, 2, row)]));
      expect(p.sentByLink, `rank ${rank}`).toEqual({ ...buckets, ...modelLinksByHand(spec, 2, rank, batch) });
      expect(p.bytesSentPerStep).toBe(sumOf(p.sentByLink));
      // on a 2-ring each bucket is its own size once
      expect(sumOf(buckets)).toBe(planned.reduce((n, b) => n + b.size, 0) * 4);
    });
    // the exchanges are one replica's at half the batch
    expect(byRank[3]!.sentByLink.fc6).toBe(predictBytes('model', spec, 2, batch / 2, 2048, 'fp32', { rank: 1 }).sentByLink.fc6);
  });

  it("3 replicas × 3 towers: uneven ring chunks by row as well as uneven towers by column", () => {
    const spec = small(3);
    const byRank = predictBytesByRank('model', spec, 9, 27, 2048, 'fp32', 3);
    byRank.forEach((p, rank) => {
      const tower = rank % 3;
      const row = Math.floor(rank / 3);
      const planned = planBuckets([...parameterShapes(spec)].filter(([n]) => n.includes(`.t${tower}.`)).reverse()
        .map(([name, shape]) => ({ name, size: floatsOf(shape) })), 2048);
      const buckets = Object.fromEntries(planned.map((b) => [`bucket ${b.index}`, ringBytesSent(b.size, 3, row)]));
      expect(p.sentByLink, `rank ${rank}`).toEqual({ ...buckets, ...modelLinksByHand(spec, 3, rank, 27) });
    });
  });

  it("the mean over a row's ranks is the (N−1)/N form the step-time model prices (crossLinkFloatsPerSample)", () => {
    const batch = 24;
    for (const towers of [2, 3, 4]) {
      const spec = small(towers);
      const byRank = predictBytesByRank('model', spec, towers, batch, BUCKET_BYTES);
      const mean = (link: string) => byRank.reduce((n, p) => n + p.sentByLink[link]!, 0) / towers;
      for (const { link, floats } of crossLinkFloatsPerSample(spec, towers).links) expect(mean(link), `${towers} towers, ${link}`).toBeCloseTo(floats * batch * 4, 6);
    }
  });

  it('refuses a world that is not replicas × towers, a one-tower net, a batch the replicas do not divide, a rank outside the world', () => {
    expect(() => predictBytes('model', small(3), 4, 24, BUCKET_BYTES)).toThrow('model-parallel: expected 1 replica × 3 towers = 3 workers, got 4');
    expect(() => predictBytes('model', small(2), 6, 24, BUCKET_BYTES, 'fp32', { replicas: 2 })).toThrow('expected 2 replicas × 2 towers = 4 workers, got 6');
    expect(() => predictBytes('model', D2L, 2, 24, BUCKET_BYTES)).toThrow('expected a net of 2 or more towers');
    expect(() => predictBytes('model', small(2), 6, 25, BUCKET_BYTES, 'fp32', { replicas: 3 })).toThrow('model-parallel over 3 replicas: expected a batch divisible by 3, got 25');
    expect(() => predictBytes('model', small(2), 2, 24, BUCKET_BYTES, 'fp32', { rank: 2 })).toThrow('model-parallel rank: expected 0..1, got 2');
    expect(() => predictBytes('data', small(2), 4, 24, BUCKET_BYTES, 'fp32', { replicas: 2 })).toThrow('data: expected no replicas');
  });

  it('bench/split.ts uses the same definition', () => {
    expect(benchCrossLinkFloats).toBe(crossLinkFloatsPerSample);
  });
});

describe('predicted bytes: hybrid', () => {
  it('the conv gradients on the ring plus, on average over the ranks, (N−1)/N of fc6 input, fc6, fc7 outputs both ways and the logits forward', () => {
    const world = 4;
    const batch = 128;
    const convParams = [...parameterShapes(ORIGINAL)].filter(([n]) => n.startsWith('conv')).reduce((n, [, s]) => n + floatsOf(s), 0);
    const fcFloats = 2 * (2 * 128 * 6 * 6 + 2 * 2048 + 2 * 2048) + 10;
    const byRank = predictBytesByRank('hybrid', ORIGINAL, world, batch, BUCKET_BYTES);
    for (const p of byRank) expect(Object.keys(p.sentByLink)).toEqual(['bucket 0', 'fc6', 'fc7', 'fc8', 'logits']);
    const mean = byRank.reduce((n, p) => n + p.bytesSentPerStep, 0) / world;
    expect(mean).toBeCloseTo((2 * (world - 1) / world * convParams + (world - 1) / world * fcFloats * batch) * 4, 6);
    expect(byRank[0]).toEqual(hybridBytes(ORIGINAL, world, batch, BUCKET_BYTES));
  });

  it('N = 2, 3, 4 on d2l and the original net (10 classes over 3 or 4: uneven units): every rank sends what the rules count, by link and bucket', () => {
    const batch = 24;
    const bucketBytes = 4096;
    for (const spec of [D2L, small(2), small(3)]) {
      for (const world of [2, 3, 4]) {
        const trunk = new Set(spec.layers.slice(0, spec.layers.findIndex((l) => l.kind === 'dense')).map((l) => l.name));
        // every tower's conv parameters, in DataParallelReplica's order (reversed), planned over the trunk alone
        const planned = planBuckets([...parameterShapes(spec)].filter(([n]) => trunk.has(n.split('.')[0]!)).reverse()
          .map(([name, shape]) => ({ name, size: floatsOf(shape) })), bucketBytes);
        expect(planned.flatMap((b) => b.params.map((q) => q.name)).some((n) => n.startsWith('fc'))).toBe(false);
        const byRank = predictBytesByRank('hybrid', spec, world, batch, bucketBytes);
        byRank.forEach((p, rank) => {
          const buckets = Object.fromEntries(planned.map((b) => [`bucket ${b.index}`, ringBytesSent(b.size, world, rank)]));
          expect(p.sentByLink, `${spec.arch} ×${spec.towers} towers on ${world}, rank ${rank}`).toEqual({ ...buckets, ...hybridLinksByHand(spec, world, rank, batch) });
          expect(p.bytesSentPerStep).toBe(sumOf(p.sentByLink));
        });
        if (world !== 2) expect(new Set(byRank.map((p) => p.sentByLink.logits)).size, `10 classes over ${world}`).toBeGreaterThan(1);
      }
    }
  });

  it("divides the head by units over the whole layer, whatever the towers: the 2-, 3- and 4-tower nets' head bytes are the same", () => {
    const head = (towers: number, rank: number) => {
      const { sentByLink } = predictBytes('hybrid', small(towers), 3, 24, BUCKET_BYTES, 'fp32', { rank });
      return ['fc6', 'fc7', 'fc8', 'logits'].map((l) => sentByLink[l]);
    };
    for (const rank of [0, 1, 2]) {
      expect(head(3, rank)).toEqual(head(2, rank));
      expect(head(4, rank)).toEqual(head(2, rank));
    }
  });

  it('refuses a batch the workers do not divide and more workers than the narrowest dense layer has units', () => {
    expect(() => predictBytes('hybrid', small(2), 4, 30, BUCKET_BYTES)).toThrow('hybrid over 4 workers: expected a batch divisible by 4, got 30');
    expect(() => predictBytes('hybrid', small(2), 11, 22, BUCKET_BYTES)).toThrow('hybrid: expected at most 10 workers (fc8 has 10 units, one or more per worker), got 11');
    expect(() => predictBytes('data', small(2), 4, 30, BUCKET_BYTES)).toThrow('data-parallel over 4 workers: expected a batch divisible by 4, got 30');
    expect(() => predictBytes('single', small(2), 2, 30, BUCKET_BYTES)).toThrow('single: expected 1 worker, got 2');
  });
});

describe('predicted bytes: every mode', () => {
  it('on a bf16 wire every bucket and every link of every rank is exactly half of fp32', () => {
    const cases: Array<{ mode: PredictMode; spec: ModelSpec; world: number; replicas?: number }> = [
      ...[2, 3, 4].map((world) => ({ mode: 'data' as const, spec: ORIGINAL, world })),
      ...[2, 3, 4].flatMap((world) => [D2L, ORIGINAL, small(3)].map((spec) => ({ mode: 'hybrid' as const, spec, world }))),
      ...[2, 3, 4].flatMap((towers) => [1, 2].map((replicas) => ({ mode: 'model' as const, spec: small(towers), world: towers * replicas, replicas }))),
    ];
    for (const { mode, spec, world, replicas } of cases) {
      const fp32 = predictBytesByRank(mode, spec, world, 96, 4096, 'fp32', replicas);
      const bf16 = predictBytesByRank(mode, spec, world, 96, 4096, 'bf16', replicas);
      fp32.forEach((f, rank) => {
        const what = `${mode} ${spec.arch} ×${spec.towers} on ${world}, rank ${rank}`;
        const b = bf16[rank]!;
        expect(Object.keys(b.sentByLink), what).toEqual(Object.keys(f.sentByLink));
        for (const [link, bytes] of Object.entries(f.sentByLink)) expect(b.sentByLink[link], `${what} ${link}`).toBe(bytes / 2);
        expect(b.bytesSentPerStep, what).toBe(f.bytesSentPerStep / 2);
      });
    }
  });
});

describe('predicted step time', () => {
  it('single: the timed layers scaled linearly with the batch, plus the update of every parameter', () => {
    const i = inputs({ batch: 3 * MEASURED_BATCH, optimizerMsPerParam: 1e-6 });
    expect(predictStepMs('single', i)).toBeCloseTo(3 * computeMs(i.layers) + 1e-6 * paramCount(ORIGINAL), 9);
  });

  it("adds a step's host work: the batch (fixed + per sample) to every mode, each cross link's floats to the split, every parameter's host side to data", () => {
    const overheads = { inputMs: 10, inputMsAtHalfBatch: 6, moveMsPerFloat: 1e-5, ringMsPerParam: 1e-6 };
    const bare = inputs({ link: INFINITE_LINK });
    const withHost = inputs({ link: INFINITE_LINK, overheads });
    // t(B) = 10, t(B/2) = 6: 2 ms fixed, 8 ms per measured batch
    expect(predictStepMs('single', withHost) - predictStepMs('single', bare)).toBeCloseTo(10, 9);
    expect(predictStepMs('data', withHost) - predictStepMs('data', bare)).toBeCloseTo(2 + 8 / 2 + 1e-6 * paramCount(ORIGINAL), 9);
    // every gathered tensor, the logits included: [B, floats per sample of all towers]
    const floats = modelExchanges(ORIGINAL).reduce((n, x) => n + x.floatsPerSample, 0) * MEASURED_BATCH;
    expect(predictStepMs('model', withHost) - predictStepMs('model', bare)).toBeCloseTo(10 + floats * 1e-5, 9);
  });

  it('data is never faster than one replica computing its B/N samples', () => {
    for (const world of [2, 4, 8]) {
      for (const link of [INFINITE_LINK, LINK_100_GBIT_S, SLOW_LINK]) {
        const i = inputs({ world, link, batch: 128 });
        expect(predictStepMs('data', i), `${world} workers, ${link.bandwidth} B/s`).toBeGreaterThanOrEqual(computeMs(i.layers) * (128 / world) / MEASURED_BATCH);
      }
    }
  });

  it('data on an infinitely fast link: single/N without an optimizer, and at most the sharded update more with one', () => {
    for (const world of [2, 4, 8]) {
      const single = predictStepMs('single', inputs({ batch: 128 }));
      expect(predictStepMs('data', inputs({ world, batch: 128, link: INFINITE_LINK })), `${world} workers`).toBeCloseTo(single / world, 9);
      const opt = 1e-6;
      const data = predictStepMs('data', inputs({ world, batch: 128, link: INFINITE_LINK, optimizerMsPerParam: opt }));
      expect(data).toBeGreaterThanOrEqual(single / world);
      expect(data).toBeLessThanOrEqual(single / world + opt * (paramCount(ORIGINAL) / world + gradientBuckets(ORIGINAL, BUCKET_BYTES).length));
    }
  });

  it("data hides the earlier buckets behind backward: only conv1's buckets (ready last) add their 2(N−1) ring rounds", () => {
    // conv backward long enough to cover every fc bucket's ring; one bucket per parameter
    const spec = D2L;
    const layers = madeUpTimings(spec, 1000);
    const bucketBytes = 1024;
    const world = 4;
    const link = LINK_100_GBIT_S;
    const buckets = gradientBuckets(spec, bucketBytes);
    const conv1 = buckets.slice(-2);
    expect(conv1.map((b) => b.params.map((p) => p.name))).toEqual([['conv1.bias'], ['conv1.kernel']]);
    const ringMs = conv1.reduce((n, b) => n + 2 * (world - 1) * transferMs(Math.ceil(b.size / world) * 4, link), 0);
    const i = inputs({ spec, layers, bucketBytes, world, link, batch: 4 * MEASURED_BATCH });
    expect(predictStepMs('data', i)).toBeCloseTo(computeMs(layers) + ringMs, 6);
  });

  it('model on a slow link is the halved compute plus every exchange sent in turn, dominated by the link', () => {
    const batch = 64;
    const i = inputs({ link: SLOW_LINK, batch });
    const bytes = modelParallelBytes(ORIGINAL, 2, batch, BUCKET_BYTES).bytesSentPerStep;
    const exchanges = 4 * 2 + 1; // conv3, fc6, fc7, fc8 both ways; the logits forward
    const linkMs = (bytes / SLOW_LINK.bandwidth) * 1000 + exchanges * SLOW_LINK.latencyMs;
    const step = predictStepMs('model', i);
    expect(step).toBeCloseTo(computeMs(i.layers) / 2 + linkMs, 6);
    expect(linkMs / step).toBeGreaterThan(0.9);
  });

  it("model with replicas (R × T): a row of T towers on B/R samples, then each tower's ring over its R replicas, not overlapped", () => {
    const grid = (link: LinkMeasure) => predictStepMs('model', inputs({ world: 4, replicas: 2, batch: 128, link }));
    const row = (link: LinkMeasure) => predictStepMs('model', inputs({ world: 2, batch: 64, link }));
    // nothing to wait for: one row's step on its half of the batch
    expect(grid(INFINITE_LINK)).toBeCloseTo(row(INFINITE_LINK), 9);
    // on a slow link the ring adds 2(R−1) rounds of each bucket's largest chunk (the 2012 net's towers are equal)
    const ringMs = towerBuckets(ORIGINAL, BUCKET_BYTES, 0).reduce((n, b) => n + 2 * transferMs(Math.ceil(b.size / 2) * FLOAT_BYTES, SLOW_LINK), 0);
    expect(grid(SLOW_LINK)).toBeCloseTo(row(SLOW_LINK) + ringMs, 6);
    expect(() => predictStepMs('model', inputs({ world: 6, replicas: 2 }))).toThrow('replicas 2: expected 2 × 2 towers = 4 workers, got 6');
    expect(() => predictStepMs('data', inputs({ world: 4, replicas: 2 }))).toThrow('data: expected no replicas (only model mode replicates its towers), got 2');
  });

  it('every mode grows with the latency; model and hybrid, which overlap nothing, strictly', () => {
    const latencies = [0, 0.01, 0.1, 1, 10];
    for (const mode of ['data', 'model', 'hybrid'] as const) {
      const steps = latencies.map((latencyMs) => predictStepMs(mode, inputs({ world: 4, batch: 128, link: { latencyMs, bandwidth: 1e9 } })));
      for (let k = 1; k < steps.length; k++) {
        if (mode === 'data') expect(steps[k], `${mode} at ${latencies[k]} ms`).toBeGreaterThanOrEqual(steps[k - 1]!);
        else expect(steps[k], `${mode} at ${latencies[k]} ms`).toBeGreaterThan(steps[k - 1]!);
      }
      expect(steps.at(-1), `${mode}: 10 ms latency must show`).toBeGreaterThan(steps[0]!);
    }
  });

  it('a bf16 wire takes as long as fp32 on a link of twice the bandwidth, same latency', () => {
    for (const mode of ['data', 'model', 'hybrid'] as const) {
      const fast = { ...SLOW_LINK, bandwidth: 2 * SLOW_LINK.bandwidth };
      expect(predictStepMs(mode, inputs({ link: SLOW_LINK, wire: 'bf16' })), mode).toBe(predictStepMs(mode, inputs({ link: fast })));
      expect(predictStepMs(mode, inputs({ link: SLOW_LINK, wire: 'bf16' })), mode).toBeLessThan(predictStepMs(mode, inputs({ link: SLOW_LINK })));
    }
  });

  it('hybrid lies between perfect scaling (compute/N) and compute/N plus all its bytes sent serially and the whole update', () => {
    const opt = 1e-6;
    for (const world of [2, 4, 8]) {
      for (const link of [LINK_10_GBIT_S, SLOW_LINK]) {
        const batch = 128;
        const i = inputs({ world, batch, link, optimizerMsPerParam: opt });
        const perfect = computeMs(i.layers) * (batch / MEASURED_BATCH) / world;
        const bytes = hybridBytes(ORIGINAL, world, batch, BUCKET_BYTES);
        // at most: every ring round and every exchange round pays latency, and all bytes go one after another
        const rounds = Object.keys(bytes.sentByLink).length * 2 * (world - 1);
        const serialLinkMs = (bytes.bytesSentPerStep / link.bandwidth) * 1000 + rounds * link.latencyMs;
        const step = predictStepMs('hybrid', i);
        expect(step, `${world} workers`).toBeGreaterThan(perfect);
        expect(step, `${world} workers`).toBeLessThanOrEqual(perfect + serialLinkMs + opt * paramCount(ORIGINAL) * 1.01);
      }
    }
  });

  it("hybrid beats data for the 2012 net on 10 Gb/s with 8 workers: the fc layers' parameters dwarf their activations", () => {
    const i = inputs({ world: 8, batch: 128 });
    expect(predictStepMs('hybrid', i)).toBeLessThan(predictStepMs('data', i));
  });

  it('names a weighted layer the timings miss, and a timing from another net', () => {
    const layers = madeUpTimings(ORIGINAL);
    expect(() => predictStepMs('single', inputs({ layers: layers.filter((l) => l.name !== 'fc7') }))).toThrow('expected a timing for fc7');
    expect(() => predictStepMs('single', inputs({ layers: madeUpTimings(D2L) }))).toThrow(/layer timing 'conv1': \d+ parameters, expected 34944/);
    expect(() => predictStepMs('data', inputs({ world: 0 }))).toThrow('world: expected a positive integer, got 0');
  });
});

describe('forecast', () => {
  const base: ForecastInputs = { layers: madeUpTimings(ORIGINAL), link: { latencyMs: 0.03, bandwidth: 2e9 }, measuredBatch: MEASURED_BATCH, spec: ORIGINAL, bucketBytes: BUCKET_BYTES, optimizerMsPerParam: 1e-6 };

  it('returns one point for every (workers × link × batch), in that order, with best the fastest mode', () => {
    const workers = [2, 4, 8, 16];
    const batches = [64, 256];
    const points = forecast(base, workers, forecastLinks(base.link), batches);
    const labels = ['loopback (measured)', '10 Gb/s', '100 Gb/s', 'NVLink-class'];
    expect(points.map((p) => [p.workers, p.link, p.batch])).toEqual(workers.flatMap((w) => labels.flatMap((l) => batches.map((b) => [w, l, b]))));
    for (const p of points) {
      const fastest = Math.min(p.stepMs.data, p.stepMs.model, p.stepMs.hybrid);
      expect(p.stepMs[p.best], `${p.workers} workers, ${p.link}, batch ${p.batch}`).toBe(fastest);
    }
    expect(new Set(points.map((p) => p.best)).size).toBeGreaterThan(1); // the made-up net is not one-sided
  });

  it("uses the measured link for 'loopback (measured)' and the reference links for the others", () => {
    const [measured, ten] = forecast(base, [4], undefined, [128]);
    expect(measured!.stepMs.model).toBe(predictStepMs('model', { ...base, world: 4, batch: 128 }));
    expect(ten!.stepMs.model).toBe(predictStepMs('model', { ...base, world: 4, batch: 128, link: LINK_10_GBIT_S }));
  });
});

describe('relativeError', () => {
  it('is (predicted − measured) / measured, and refuses a measured value that is not positive', () => {
    expect(relativeError(200, 230)).toBeCloseTo(0.15, 12);
    expect(relativeError(200, 150)).toBeCloseTo(-0.25, 12);
    expect(() => relativeError(0, 1)).toThrow('expected a positive finite measured value, got 0');
  });
});

describe('a layer timed at two batches', () => {
  it('is split into a fixed cost and a per-sample cost, and scaled as such', () => {
    // Every layer: 10 ms forward at batch 64, 6 ms at batch 32 → 2 ms fixed + 8 ms per 64 samples.
    const at64 = madeUpTimings(D2L, 10, 10, 10).map((t) => ({ ...t, backwardMs: 0 }));
    const at32 = at64.map((t) => ({ ...t, forwardMs: 6 }));
    const base = { layers: at64, layersAtHalfBatch: at32, halfBatch: 32, measuredBatch: 64, spec: D2L, link: LINK_10_GBIT_S, world: 1, bucketBytes: 25 * 2 ** 20 };
    const n = D2L.layers.length;
    // at batch 16: 2 + 8·(16/64) = 4 ms a layer; linear scaling alone would say 2.5
    expect(predictStepMs('single', { ...base, batch: 16 })).toBeCloseTo(4 * n, 9);
    expect(predictStepMs('single', { ...base, layersAtHalfBatch: undefined, batch: 16 })).toBeCloseTo(2.5 * n, 9);
    // the smaller batch need not be half: timed at 48 with 8.5 ms → 4 ms fixed, 6 ms per 64
    expect(predictStepMs('single', { ...base, layersAtHalfBatch: at64.map((t) => ({ ...t, forwardMs: 8.5 })), halfBatch: 48, batch: 16 })).toBeCloseTo(5.5 * n, 9);
  });
});
