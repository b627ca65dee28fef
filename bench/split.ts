/**
 * `npm run bench -- split`: the 2012 two-tower AlexNet (default 3×99×99,
 * width 1, batch 64) on wasm, in one run: the two towers in one process vs
 * the split across two worker processes, with and without micro-batches; and
 * the bytes each worker sends per step vs the cross-link volume computed from
 * the layer shapes. Writes bench/results/split.json.
 */
import { mkdtempSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseClusterConfig } from '../src/config/cluster.js';
import type { TrainResult as ClusterResult } from '../src/run/loop.js';
import { freePorts } from '../src/wire/free-ports.js';
import { alexnet } from '../src/model/alexnet.js';
import { crossLinkFloatsPerSample } from '../src/compare/predict-bytes.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';

const here = dirname(fileURLToPath(import.meta.url));

/** one definition of the cross-link volume, shared with `splitnet compare`'s prediction */
export { crossLinkFloatsPerSample };

export interface SplitBenchOptions { resolution: number; width: number; batch: number; steps: number; warmup: number; passes: number; micro: number; data: 'synthetic' | 'fashion-mnist' }

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

export async function splitBench(o: SplitBenchOptions): Promise<void> {
  const total = o.steps + o.warmup;
  const cfg: TrainConfig = {
    ...CPU_DEFAULTS, backend: 'wasm', arch: 'original', channels: 3, data: o.data, resolution: o.resolution, width: o.width,
    batch: o.batch, epochs: 1, trainSamples: total * o.batch, testSamples: o.batch, checkpointEvery: 0, evalBatch: o.batch,
  };
  const spec = alexnet({ arch: 'original', width: o.width, resolution: o.resolution, channels: 3, classes: 10 });
  const quiet = { log: () => {}, progress: false } as const;
  console.log(`split: original AlexNet 3×${o.resolution}×${o.resolution}, width ${o.width}, batch ${o.batch}, ` +
    `${o.steps} timed steps after ${o.warmup}, ${o.passes} passes, ${o.data} data, wasm, one thread per process`);
  const runSplit = async (micro: number): Promise<ClusterResult> => {
    const [coord, a, b] = await freePorts(3);
    const cluster = parseClusterConfig({
      coordinator: { host: '127.0.0.1', port: coord }, transport: 'tcp',
      workers: [{ host: '127.0.0.1', device: 'cpu', port: a }, { host: '127.0.0.1', device: 'cpu', port: b }],
    });
    return train({ cluster, workers: cluster.workers, config: cfg, outDir: mkdtempSync(join(tmpdir(), 'splitnet-bench-')), mode: 'model', microBatches: micro, ...quiet });
  };
  const oneMs: number[] = [];
  const splitStats: ClusterResult['stats'] = [];
  const microStats: ClusterResult['stats'] = [];
  for (let pass = 0; pass < o.passes; pass++) {
    const outDir = mkdtempSync(join(tmpdir(), 'splitnet-bench-'));
    await train({ config: cfg, outDir, ...quiet });
    oneMs.push(...(await readFile(join(outDir, 'metrics.jsonl'), 'utf8')).trim().split('\n')
      .map((l) => JSON.parse(l) as { type: string; loopMs?: number }).filter((r) => r.type === 'step').slice(o.warmup).map((r) => r.loopMs!));
    splitStats.push(...(await runSplit(1)).stats.slice(o.warmup));
    microStats.push(...(await runSplit(o.micro)).stats.slice(o.warmup));
    console.log(`  pass ${pass + 1}/${o.passes} done`);
  }
  const ips = (ms: number) => (o.batch / ms) * 1000;
  const one = median(oneMs);
  const split = median(splitStats.map((s) => s.wallMs));
  const micro = median(microStats.map((s) => s.wallMs));
  const volume = crossLinkFloatsPerSample(spec);
  const expected = volume.total * o.batch * 4;
  const sent = median(splitStats.flatMap((s) => s.bytesSent));
  const line = (label: string, ms: number, extra = '') => console.log(`  ${label.padEnd(42)} ${ips(ms).toFixed(2).padStart(7)} img/s  (${ms.toFixed(0)} ms/step)${extra}`);
  line('two towers in one process', one);
  line('split over 2 workers', split, `  ${(one / split).toFixed(2)}× one process`);
  line(`split over 2 workers, ${o.micro} micro-batches`, micro, `  ${(one / micro).toFixed(2)}× one process`);
  console.log(`  bytes sent per worker per step            ${(sent / 2 ** 10).toFixed(1)} KiB vs ${(expected / 2 ** 10).toFixed(1)} KiB from the layer shapes ` +
    `(${((sent / expected - 1) * 100).toFixed(2)}%): ${volume.links.map((l) => `${l.link} ${l.floats}`).join(', ')} floats per sample`);
  const out = join(here, 'results', 'split.json');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({
    bench: 'split', date: new Date().toISOString(), options: o,
    stepMs: { oneProcess: one, split, splitMicro: micro }, imagesPerSec: { oneProcess: ips(one), split: ips(split), splitMicro: ips(micro) },
    speedup: one / split, speedupMicro: one / micro, bytesPerWorkerPerStep: sent, expectedBytes: expected, crossLinks: volume.links,
    raw: { oneMs, split: splitStats, micro: microStats },
  }, null, 2) + '\n');
  console.log(`  wrote ${out}`);
}
