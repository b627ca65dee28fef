/**
 * `npm run bench -- cluster`: the cluster runtime and data-parallel training,
 * d2l AlexNet (default 96×96, width 1, global batch 64) on wasm, in one run:
 *   - the in-process single loop                       (reference)
 *   - a 1-worker cluster                                (the runtime's own cost)
 *   - 2 workers, all-reduce overlapped with backward    (scaling)
 *   - 2 workers, all-reduce after backward              (what overlap hides)
 *   - 2 workers, overlapped, TCP with CURVE             (what TCP and CURVE cost over the local default)
 * and the bytes each worker sends per step against 2(N-1)/N × parameter bytes.
 * Writes bench/results/cluster.json.
 */
import { mkdtempSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePorts } from '../src/wire/free-ports.js';
import { parseClusterConfig } from '../src/config/cluster.js';
import type { TrainResult as ClusterResult } from '../src/run/loop.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface ClusterBenchOptions { resolution: number; width: number; batch: number; steps: number; warmup: number; passes: number; data: 'synthetic' | 'fashion-mnist' }

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** The local default (ipc in a private directory, no CURVE), or TCP with CURVE (how remote workers talk). */
async function cluster(world: number, transport: 'ipc' | 'tcp') {
  const [coord, ...peers] = await freePorts(world + 1);
  return parseClusterConfig({
    coordinator: { host: '127.0.0.1', port: coord }, transport, security: transport === 'ipc' ? 'none' : 'curve',
    workers: peers.map((port) => ({ host: '127.0.0.1', device: 'cpu', port })),
  });
}

export async function clusterBench(o: ClusterBenchOptions): Promise<void> {
  const total = o.steps + o.warmup;
  const cfg: TrainConfig = {
    ...CPU_DEFAULTS, backend: 'wasm', data: o.data, resolution: o.resolution, width: o.width, batch: o.batch,
    epochs: 1, trainSamples: total * o.batch, testSamples: o.batch, checkpointEvery: 0, evalBatch: o.batch,
  };
  const quiet = { log: () => {}, progress: false } as const;
  console.log(`cluster: d2l AlexNet ${o.resolution}×${o.resolution}, width ${o.width}, global batch ${o.batch}, ` +
    `${o.steps} timed steps after ${o.warmup}, ${o.data} data, wasm, one thread per process`);

  // The machine's speed drifts by tens of percent over minutes: the four
  // variants run in turn, `passes` times, and each figure is a median over all
  // its passes' timed steps.
  const runCluster = async (world: number, overlap: boolean, transport: 'ipc' | 'tcp' = 'ipc'): Promise<ClusterResult> => {
    const c = await cluster(world, transport);
    return train({ cluster: c, workers: c.workers, config: cfg, outDir: mkdtempSync(join(tmpdir(), 'splitnet-bench-')), overlap, ...quiet });
  };
  const timed = (r: ClusterResult) => r.stats.slice(o.warmup);
  const singleMs: number[] = [];
  const oneStats: ClusterResult['stats'] = [];
  const twoStats: ClusterResult['stats'] = [];
  const afterStats: ClusterResult['stats'] = [];
  const curveStats: ClusterResult['stats'] = [];
  let paramBytes = 0;
  for (let pass = 0; pass < o.passes; pass++) {
    const outDir = mkdtempSync(join(tmpdir(), 'splitnet-bench-'));
    await train({ config: cfg, outDir, ...quiet });
    singleMs.push(...(await readFile(join(outDir, 'metrics.jsonl'), 'utf8')).trim().split('\n')
      .map((l) => JSON.parse(l) as { type: string; loopMs?: number }).filter((r) => r.type === 'step').slice(o.warmup).map((r) => r.loopMs!));
    oneStats.push(...timed(await runCluster(1, true)));
    const two = await runCluster(2, true);
    twoStats.push(...timed(two));
    paramBytes = [...two.params.values()].reduce((n, p) => n + p.byteLength, 0);
    afterStats.push(...timed(await runCluster(2, false)));
    curveStats.push(...timed(await runCluster(2, true, 'tcp')));
    console.log(`  pass ${pass + 1}/${o.passes} done`);
  }
  const stepMs = (stats: ClusterResult['stats']) => median(stats.map((s) => s.wallMs));
  const ips = (ms: number) => (o.batch / ms) * 1000;

  const single = median(singleMs);
  const c1 = stepMs(oneStats);
  const c2 = stepMs(twoStats);
  const c2after = stepMs(afterStats);
  const c2curve = stepMs(curveStats);
  const expectedBytes = ((2 * (2 - 1)) / 2) * paramBytes;
  const sent = twoStats.flatMap((s) => s.bytesSent);
  // The slower worker's wait is the all-reduce itself; the faster one's adds the skew between them.
  const slowerWait = (stats: ClusterResult['stats']) => median(stats.map((s) => s.waitMs[s.computeMs.indexOf(Math.max(...s.computeMs))]!));
  const waitOverlap = slowerWait(twoStats);
  const waitAfter = slowerWait(afterStats);
  const skew = median(twoStats.map((s) => Math.max(...s.computeMs) - Math.min(...s.computeMs)));
  const hidden = 1 - waitOverlap / waitAfter;

  const line = (label: string, ms: number, extra = '') => console.log(`  ${label.padEnd(40)} ${ips(ms).toFixed(2).padStart(7)} img/s  (${ms.toFixed(0)} ms/step)${extra}`);
  line('single process (in-process loop)', single);
  line('1-worker cluster', c1, `  ${Math.abs((c1 / single - 1) * 100).toFixed(1)}% ${c1 > single ? 'slower' : 'faster'} than the loop`);
  line('2 workers, all-reduce overlapped', c2, `  ${(c1 / c2).toFixed(2)}× the 1-worker cluster, ${(single / c2).toFixed(2)}× the loop`);
  line('2 workers, all-reduce after backward', c2after);
  line('2 workers, overlapped, TCP + CURVE', c2curve, `  ${((c2curve / c2 - 1) * 100).toFixed(1)}% per step over the local default (ipc, private directory)`);
  // ZeRO-1: a reduce-scatter of the gradients, (N-1)/N of them, then an all-gather of the updated weights, (N-1)/N again.
  console.log(`  bytes sent per worker per step          ${(mean(sent) / 2 ** 20).toFixed(2)} MiB vs (N-1)/N gradients (reduce-scatter) + (N-1)/N weights (all-gather) ` +
    `= 2(N-1)/N × ${(paramBytes / 2 ** 20).toFixed(2)} MiB = ${(expectedBytes / 2 ** 20).toFixed(2)} MiB (${((mean(sent) / expectedBytes - 1) * 100).toFixed(2)}%)`);
  const flat = (stats: ClusterResult['stats']) => stats[0]!.tensors.every((_, w) => new Set(stats.map((s) => s.tensors[w])).size === 1);
  console.log(`  live tensors per worker                 ${flat(oneStats) && flat(twoStats) && flat(afterStats) ? 'flat over every timed step' : 'NOT flat: a leak'} ` +
    `(${twoStats[0]!.tensors.join(', ')})`);
  console.log(`  all-reduce time left after backward     ${waitOverlap.toFixed(1)} ms overlapped vs ${waitAfter.toFixed(1)} ms after (slower worker, median): ${(hidden * 100).toFixed(0)}% hidden behind backward`);
  console.log(`  compute skew between the two workers    ${skew.toFixed(0)} ms per step (median): the faster one waits that long`);
  // Where a worker's step goes, 1 worker against 2: its compute (main thread), its wait, and the CPU its process used (all threads).
  const split = (stats: ClusterResult['stats']) => ({
    computeMs: median(stats.flatMap((s) => s.computeMs)), waitMs: median(stats.flatMap((s) => s.waitMs)),
    cpuMs: median(stats.flatMap((s) => s.detail.map((d) => d?.cpuMs ?? NaN))),
  });
  const one = split(oneStats);
  const two = split(twoStats);
  console.log(`  per worker per step, 1 worker vs 2      compute ${one.computeMs.toFixed(0)} vs ${two.computeMs.toFixed(0)} ms (on half the samples), ` +
    `wait ${one.waitMs.toFixed(0)} vs ${two.waitMs.toFixed(0)} ms, process CPU ${one.cpuMs.toFixed(0)} vs ${two.cpuMs.toFixed(0)} ms`);

  const out = join(here, 'results', 'cluster.json');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({
    bench: 'cluster', date: new Date().toISOString(), options: o,
    transport: 'ipc in a private directory, no CURVE (the local default); the TCP variant with CURVE',
    stepMs: { single, oneWorker: c1, twoWorkers: c2, twoWorkersNoOverlap: c2after, twoWorkersTcpCurve: c2curve },
    imagesPerSec: { single: ips(single), oneWorker: ips(c1), twoWorkers: ips(c2), twoWorkersNoOverlap: ips(c2after), twoWorkersTcpCurve: ips(c2curve) },
    tcpCurveCost: c2curve / c2 - 1,
    scaling2vs1: c1 / c2, scaling2vsLoop: single / c2, oneWorkerOverhead: c1 / single - 1,
    perWorker: { oneWorker: one, twoWorkers: two },
    bytesPerWorkerPerStep: mean(sent), expectedBytes, allreduceWaitMs: { overlap: waitOverlap, after: waitAfter }, hiddenShare: hidden, skewMs: skew,
    raw: { singleMs, one: oneStats, twoOverlap: twoStats, twoAfter: afterStats, twoTcpCurve: curveStats },
  }, null, 2) + '\n');
  console.log(`  wrote ${out}`);
}
