/**
 * `npm run bench -- loop`: what the single-device training loop (batches
 * from the data pipeline, metrics, progress, keyed dropout) costs on top of
 * the bare SGD step the compute benchmark times. Same net, batch and process;
 * bare steps are timed before and after the loop so drift shows.
 */
import * as tf from '@tensorflow/tfjs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '../src/backend.js';
import { buildModel, disposeModel } from '../src/model/build.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { specOf } from '../src/model/alexnet.js';
import { train } from '../src/run/loop.js';
import { Sgd } from '../src/model/sgd.js';
import { trainStep } from '../src/parallel/single.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface LoopOptions { resolution: number; width: number; batch: number; steps: number; data: 'synthetic' | 'fashion-mnist' }

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function bareSteps(cfg: TrainConfig, steps: number): Promise<number[]> {
  const spec = specOf(cfg);
  const model = buildModel(spec, { seed: cfg.seed });
  const opt = new Sgd({ lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
  const x = tf.randomUniform([cfg.batch, cfg.resolution, cfg.resolution, cfg.channels], 0, 1, 'float32', 7) as tf.Tensor4D;
  const y = tf.tensor1d(Array.from({ length: cfg.batch }, (_, i) => i % 10), 'int32');
  const ms: number[] = [];
  for (let i = 0; i < steps + 2; i++) {
    const t0 = performance.now();
    await trainStep(model, opt, x, y, { dropout: { seed: cfg.seed, step: i, firstSample: 0 } });
    if (i >= 2) ms.push(performance.now() - t0);
  }
  tf.dispose([x, y]);
  opt.dispose();
  disposeModel(model);
  return ms;
}

export async function loopBench(o: LoopOptions): Promise<void> {
  const cfg: TrainConfig = {
    ...CPU_DEFAULTS, backend: 'wasm', data: o.data, resolution: o.resolution, width: o.width, batch: o.batch,
    epochs: 1, trainSamples: (o.steps + 2) * o.batch, testSamples: o.batch, checkpointEvery: 0, evalBatch: o.batch,
  };
  await initBackend('wasm');
  console.log(`loop: d2l AlexNet ${o.resolution}×${o.resolution}, width ${o.width}, batch ${o.batch}, ${o.steps} steps each, ${o.data} data, wasm`);
  const before = await bareSteps(cfg, o.steps);
  const outDir = mkdtempSync(join(tmpdir(), 'splitnet-bench-'));
  await train({ config: cfg, outDir, log: () => {}, progress: true });
  const records = (await readFile(join(outDir, 'metrics.jsonl'), 'utf8')).trim().split('\n')
    .map((l) => JSON.parse(l) as { type: string; stepMs?: number; loopMs?: number })
    .filter((r) => r.type === 'step').slice(2); // the loop's first two steps are its warm-up
  // The loop times each iteration and the step inside it: their difference is
  // the loop's own cost, measured on the same iterations, free of step noise.
  const loopMs = records.map((r) => r.loopMs!);
  const inLoopStepMs = records.map((r) => r.stepMs!);
  const ownMs = records.map((r) => r.loopMs! - r.stepMs!);
  const after = await bareSteps(cfg, o.steps);
  const bare = median([...before, ...after]);
  const loop = median(loopMs);
  const overhead = loop / bare - 1;
  const own = ownMs.reduce((a, b) => a + b, 0) / ownMs.reduce((a, b, i) => a + inLoopStepMs[i]!, 0);
  console.log(`  bare step (before, after)   ${median(before).toFixed(0)} ms, ${median(after).toFixed(0)} ms  -> ${(o.batch / bare * 1000).toFixed(2)} img/s`);
  console.log(`  training loop iteration     ${loop.toFixed(0)} ms  -> ${(o.batch / loop * 1000).toFixed(2)} img/s  (${(overhead * 100).toFixed(1)}% vs bare: step noise included)`);
  console.log(`  loop's own cost             ${median(ownMs).toFixed(1)} ms per iteration = ${(own * 100).toFixed(2)}% of the step it wraps (batch, metrics, progress)`);
  const out = join(here, 'results', 'loop.json');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({ bench: 'loop', date: new Date().toISOString(), options: o, bareStepMs: { before, after }, loopIterationMs: loopMs, loopStepMs: inLoopStepMs, loopOwnMs: ownMs, overheadVsBare: overhead, ownCostShare: own }, null, 2) + '\n');
  console.log(`  wrote ${out}`);
}
