/**
 * `npm run bench -- layouts`: every layout of the original AlexNet (default
 * 3×99×99, width 1, batch 64) on wasm, in one run, against one process:
 * images per second and the ratio to one process; the bytes each worker
 * sends per step against the exact prediction from the layer shapes
 * (predict-bytes.ts, per rank); and the equivalence error: the worst
 * relative error of a kernel and of a bias after the run's steps against one
 * process on the same seed and data (the same net: a 4-tower layout against
 * one process of the 4-tower net). Layouts that sum a shard's gradients in
 * another order than one process start ~1e-7 apart after a step; at full
 * width the lr-0.02, momentum-0.9 training amplifies that step by step (the
 * same for data mode before the layouts existed), so over several steps the
 * figure measures that amplification as much as the layout. The towers add
 * in one process's order and stay bit for bit equal. Writes
 * bench/results/layouts.json.
 *
 * Default layouts use 2 workers (this machine's cores); --four adds the
 * 4-worker ones (4 towers, hybrid ×4, 2 replicas × 2 towers), which are
 * oversubscribed on 2 cores and say so.
 */
import { mkdtempSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseClusterConfig } from '../src/config/cluster.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { predictBytesByRank } from '../src/compare/predict-bytes.js';
import { specOf } from '../src/model/alexnet.js';
import { train, type Mode, type TrainResult } from '../src/run/loop.js';
import { freePorts } from '../src/wire/free-ports.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface LayoutsBenchOptions { resolution: number; width: number; batch: number; steps: number; warmup: number; four: boolean; data: 'synthetic' | 'fashion-mnist' }

interface Layout { label: string; mode: Mode; workers: number; towers: number; replicas?: number }

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/**
 * max |a − b| / max |b| over each parameter, the worst kernel and the worst
 * bias apart: a bias starts at zero and stays small for the first steps, so
 * the same absolute difference is a far larger share of it.
 */
function worstError(a: Map<string, Float32Array>, b: Map<string, Float32Array>): { kernels: number; biases: number } {
  const worst = { kernels: 0, biases: 0 };
  for (const [name, ref] of b) {
    const got = a.get(name);
    if (got === undefined) return { kernels: Infinity, biases: Infinity };
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < ref.length; i++) {
      diff = Math.max(diff, Math.abs(got[i]! - ref[i]!));
      scale = Math.max(scale, Math.abs(ref[i]!));
    }
    const kind = name.endsWith('.bias') ? 'biases' : 'kernels';
    worst[kind] = Math.max(worst[kind], scale > 0 ? diff / scale : diff);
  }
  return worst;
}

async function localCluster(workers: number) {
  const [coord, ...ports] = await freePorts(workers + 1);
  return parseClusterConfig({
    coordinator: { host: '127.0.0.1', port: coord }, transport: 'tcp', security: 'none',
    workers: ports.map((port) => ({ host: '127.0.0.1', device: 'cpu', port })),
  });
}

export async function layoutsBench(o: LayoutsBenchOptions): Promise<void> {
  const total = o.steps + o.warmup;
  const base: TrainConfig = {
    ...CPU_DEFAULTS, backend: 'wasm', arch: 'original', channels: 3, data: o.data, resolution: o.resolution, width: o.width,
    batch: o.batch, epochs: 1, trainSamples: total * o.batch, testSamples: o.batch, checkpointEvery: 0, evalBatch: o.batch,
    init: 'xavier-uniform',
  };
  const cores = cpus().length;
  const layouts: Layout[] = [
    { label: 'data ×2', mode: 'data', workers: 2, towers: 2 },
    { label: 'model ×2 (the 2012 split)', mode: 'model', workers: 2, towers: 2 },
    { label: 'hybrid ×2', mode: 'hybrid', workers: 2, towers: 2 },
    ...(o.four ? [
      { label: 'model ×4 (4 towers)', mode: 'model', workers: 4, towers: 4 },
      { label: 'hybrid ×4', mode: 'hybrid', workers: 4, towers: 2 },
      { label: 'model 2 × 2 (replicas × towers)', mode: 'model', workers: 4, towers: 2, replicas: 2 },
    ] satisfies Layout[] : []),
  ];
  const quiet = { log: () => {}, progress: false } as const;
  console.log(`layouts: original AlexNet 3×${o.resolution}×${o.resolution}, width ${o.width}, batch ${o.batch}, ${o.steps} timed steps after ${o.warmup}, ` +
    `${o.data} data, wasm, ${cores} cores`);
  const stepMs = (r: TrainResult) => median(r.stats.slice(o.warmup).map((s) => s.wallMs));
  const singles = new Map<number, { ms: number; params: Map<string, Float32Array> }>();
  const single = async (towers: number) => {
    let s = singles.get(towers);
    if (s === undefined) {
      const r = await train({ config: { ...base, towers }, outDir: mkdtempSync(join(tmpdir(), 'splitnet-bench-')), ...quiet });
      s = { ms: stepMs(r), params: r.params };
      singles.set(towers, s);
      console.log(`  ${`one process (${towers} towers)`.padEnd(34)} ${((o.batch / s.ms) * 1000).toFixed(2).padStart(7)} img/s  (${s.ms.toFixed(0)} ms/step)`);
    }
    return s;
  };
  await single(2);
  const rows = [];
  for (const l of layouts) {
    const one = await single(l.towers);
    const cfg = { ...base, towers: l.towers };
    const cluster = await localCluster(l.workers);
    const r = await train({
      cluster, workers: cluster.workers, config: cfg, outDir: mkdtempSync(join(tmpdir(), 'splitnet-bench-')), mode: l.mode, ...quiet,
      ...(l.replicas !== undefined ? { replicas: l.replicas } : {}),
    });
    const ms = stepMs(r);
    const predicted = predictBytesByRank(l.mode, specOf(cfg), l.workers, o.batch, cluster.bucketBytes, cfg.wire, l.replicas ?? 1).map((p) => p.bytesSentPerStep);
    // each worker's bytes per step: the same every step (the median guards against nothing but says so)
    const measured = Array.from({ length: l.workers }, (_, w) => median(r.stats.slice(o.warmup).map((s) => s.bytesSent[w]!)));
    const byteError = Math.max(...measured.map((m, w) => Math.abs(m / predicted[w]! - 1)));
    const equivalence = worstError(r.params, one.params);
    const row = {
      layout: l.label, mode: l.mode, workers: l.workers, towers: l.towers, replicas: l.replicas ?? 1, oversubscribed: l.workers > cores,
      stepMs: ms, imagesPerSec: (o.batch / ms) * 1000, ratioToOneProcess: one.ms / ms,
      bytesPerWorkerPredicted: predicted, bytesPerWorkerMeasured: measured, byteError, equivalenceError: equivalence,
    };
    rows.push(row);
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
    console.log(`  ${l.label.padEnd(34)} ${row.imagesPerSec.toFixed(2).padStart(7)} img/s  (${ms.toFixed(0)} ms/step)  ${row.ratioToOneProcess.toFixed(2)}× one process` +
      `${row.oversubscribed ? ` (oversubscribed: ${l.workers} workers on ${cores} cores)` : ''}`);
    console.log(`  ${''.padEnd(34)} bytes/worker/step ${measured.map(mib).join(', ')} vs predicted ${predicted.map(mib).join(', ')} (worst ${(byteError * 100).toFixed(2)}%); ` +
      `vs one process: worst relative error of a kernel ${equivalence.kernels.toExponential(2)}, of a bias ${equivalence.biases.toExponential(2)}`);
  }
  const data = rows.find((r) => r.mode === 'data' && r.workers === 2);
  const hybrid = rows.find((r) => r.mode === 'hybrid' && r.workers === 2);
  if (data && hybrid) {
    const measuredRatio = hybrid.bytesPerWorkerMeasured[0]! / data.bytesPerWorkerMeasured[0]!;
    const predictedRatio = hybrid.bytesPerWorkerPredicted[0]! / data.bytesPerWorkerPredicted[0]!;
    console.log(`  hybrid ×2 sends ${(measuredRatio * 100).toFixed(2)}% of data ×2's bytes per worker (the shapes predict ${(predictedRatio * 100).toFixed(2)}%)`);
  }
  const out = join(here, 'results', 'layouts.json');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({
    bench: 'layouts', date: new Date().toISOString(), options: o, cores,
    oneProcess: Object.fromEntries([...singles].map(([t, s]) => [`towers${t}`, { stepMs: s.ms, imagesPerSec: (o.batch / s.ms) * 1000 }])), layouts: rows,
  }, null, 2) + '\n');
  console.log(`  wrote ${out}`);
}
