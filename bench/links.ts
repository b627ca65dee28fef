/**
 * `npm run bench -- links --link 1gbit`: what the link does to each mode's
 * step, with the workers in network namespaces behind links shaped to the
 * rate (run/shaped-network.ts; needs root), in one run:
 *   - data ×2 (d2l net), the all-reduce overlapped with backward vs after it
 *   - data ×2 overlapped, float32 vs bfloat16 on the wire (--wire bf16)
 *   - the split ×2 (original net), one micro-batch vs --micro of them
 * and the same variants over loopback for reference. The variants run in
 * turn, `passes` times; each figure is the median of all its timed steps.
 * Writes bench/results/links.json.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseClusterConfig, type ClusterConfig } from '../src/config/cluster.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train, type Mode, type TrainResult } from '../src/run/loop.js';
import { parseLinkRate, shapeLinks } from '../src/run/shaped-network.js';
import { freePorts } from '../src/wire/free-ports.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface LinksBenchOptions {
  link: string; resolution: number; width: number; batch: number; steps: number; warmup: number; passes: number; micro: number;
  data: 'synthetic' | 'fashion-mnist';
}

interface Variant {
  name: string;
  mode: Mode;
  config: TrainConfig;
  overlap?: boolean;
  microBatches?: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function localPair(): Promise<ClusterConfig> {
  const [coord, a, b] = await freePorts(3);
  return parseClusterConfig({
    coordinator: { host: '127.0.0.1', port: coord }, transport: 'tcp',
    workers: [{ host: '127.0.0.1', device: 'cpu', port: a }, { host: '127.0.0.1', device: 'cpu', port: b }],
  });
}

/** One variant's run over loopback (`rate` undefined) or behind shaped links; returns its timed steps' wall times. */
async function runVariant(v: Variant, rate: string | undefined, warmup: number): Promise<{ stepMs: number[]; bytes: number[] }> {
  const base = await localPair();
  const outDir = mkdtempSync(join(tmpdir(), 'splitnet-bench-'));
  const shaped = rate === undefined ? undefined : shapeLinks(base, base.workers, parseLinkRate(rate));
  try {
    const cluster = shaped?.cluster ?? base;
    const r: TrainResult = await train({
      config: v.config, outDir, mode: v.mode, cluster, workers: cluster.workers,
      log: () => {}, progress: false,
      ...(v.overlap === false ? { overlap: false } : {}), ...(v.microBatches !== undefined ? { microBatches: v.microBatches } : {}),
      ...(shaped !== undefined ? { workerCommand: shaped.network.workerCommand } : {}),
    });
    if (!r.finished) throw new Error(`links: '${v.name}'${rate === undefined ? '' : ` over ${rate}`} stopped before its last step`);
    const timed = r.stats.slice(warmup);
    return { stepMs: timed.map((s) => s.wallMs), bytes: timed.map((s) => s.bytesSent[0]!) };
  } finally {
    shaped?.network.close();
    rmSync(outDir, { recursive: true, force: true });
  }
}

export async function linksBench(o: LinksBenchOptions): Promise<void> {
  const rate = parseLinkRate(o.link).text;
  const total = o.steps + o.warmup;
  const common = { ...CPU_DEFAULTS, backend: 'wasm' as const, data: o.data, resolution: o.resolution, width: o.width, batch: o.batch,
    epochs: 1, trainSamples: total * o.batch, testSamples: o.batch, checkpointEvery: 0, evalBatch: o.batch };
  const d2l: TrainConfig = { ...common, arch: 'd2l' };
  const original: TrainConfig = { ...common, arch: 'original', channels: 3, init: 'xavier-uniform' };
  const variants: Variant[] = [
    { name: 'data ×2, overlapped', mode: 'data', config: d2l },
    { name: 'data ×2, after backward', mode: 'data', config: d2l, overlap: false },
    { name: 'data ×2, overlapped, bf16 wire', mode: 'data', config: { ...d2l, wire: 'bf16' } },
    { name: 'split ×2', mode: 'model', config: original },
    { name: `split ×2, ${o.micro} micro-batches`, mode: 'model', config: original, microBatches: o.micro },
  ];
  console.log(`links: ${rate} vs loopback; d2l (data) and original (split) AlexNet ${o.resolution}×${o.resolution}, width ${o.width}, ` +
    `global batch ${o.batch}, ${o.steps} timed steps after ${o.warmup}, ${o.passes} passes, ${o.data} data, wasm`);
  const results = new Map<string, { loopback: number[]; shaped: number[]; bytes: number[] }>();
  for (const v of variants) results.set(v.name, { loopback: [], shaped: [], bytes: [] });
  for (let pass = 0; pass < o.passes; pass++) {
    for (const v of variants) {
      const r = results.get(v.name)!;
      r.loopback.push(...(await runVariant(v, undefined, o.warmup)).stepMs);
      const s = await runVariant(v, rate, o.warmup);
      r.shaped.push(...s.stepMs);
      r.bytes.push(...s.bytes);
    }
    console.log(`  pass ${pass + 1}/${o.passes} done`);
  }
  const figures = variants.map((v) => {
    const r = results.get(v.name)!;
    return { name: v.name, loopbackMs: median(r.loopback), shapedMs: median(r.shaped), bytesPerWorker: median(r.bytes) };
  });
  const at = (name: string) => figures.find((f) => f.name.startsWith(name));
  console.log(`  ${'variant'.padEnd(36)} ${'loopback ms'.padStart(12)} ${`${rate} ms`.padStart(12)} ${'sent MiB'.padStart(9)}`);
  for (const f of figures) {
    console.log(`  ${f.name.padEnd(36)} ${f.loopbackMs.toFixed(0).padStart(12)} ${f.shapedMs.toFixed(0).padStart(12)} ${(f.bytesPerWorker / 2 ** 20).toFixed(2).padStart(9)}`);
  }
  const ratio = (a: string, b: string, over: 'loopbackMs' | 'shapedMs') => at(a)![over] / at(b)![over];
  const lines: Record<string, number> = {
    overlapGainShaped: ratio('data ×2, after', 'data ×2, overlapped', 'shapedMs'),
    overlapGainLoopback: ratio('data ×2, after', 'data ×2, overlapped', 'loopbackMs'),
    microGainShaped: ratio('split ×2', `split ×2, ${o.micro}`, 'shapedMs'),
    microGainLoopback: ratio('split ×2', `split ×2, ${o.micro}`, 'loopbackMs'),
  };
  console.log(`  overlap: ${lines.overlapGainShaped!.toFixed(2)}× faster than after backward on ${rate} (${lines.overlapGainLoopback!.toFixed(2)}× on loopback)`);
  console.log(`  ${o.micro} micro-batches: ${lines.microGainShaped!.toFixed(2)}× the split without on ${rate} (${lines.microGainLoopback!.toFixed(2)}× on loopback)`);
  {
    lines.bf16GainShaped = ratio('data ×2, overlapped', 'data ×2, overlapped, bf16', 'shapedMs');
    lines.bf16GainLoopback = ratio('data ×2, overlapped', 'data ×2, overlapped, bf16', 'loopbackMs');
    lines.bf16Bytes = at('data ×2, overlapped, bf16')!.bytesPerWorker / at('data ×2, overlapped')!.bytesPerWorker;
    console.log(`  bf16 wire: ${lines.bf16GainShaped!.toFixed(2)}× fp32's speed on ${rate} (${lines.bf16GainLoopback!.toFixed(2)}× on loopback), ` +
      `bytes ${(lines.bf16Bytes! * 100).toFixed(2)}% of fp32's`);
  }
  const out = join(here, 'results', 'links.json');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({ bench: 'links', date: new Date().toISOString(), options: o, link: rate, figures, ratios: lines, raw: Object.fromEntries(results) }, null, 2) + '\n');
  console.log(`  wrote ${out}`);
}
