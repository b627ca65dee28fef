/**
 * The single-process training loop: the fallback mode with fewer than two
 * devices and the reference every parallel mode is tested against. It reads
 * top to bottom: data, model, (resume), epochs of steps, evaluation, the last
 * checkpoint.
 */
import * as tf from '@tensorflow/tfjs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '../backend.js';
import { readCheckpointState, restoreTensors, saveCheckpoint, type Position } from '../checkpoint/checkpoint.js';
import { epochOrder, makeBatch } from '../data/batches.js';
import { buildModel, countParams, disposeModel } from '../model/build.js';
import { learningRate, type TrainConfig, specOf } from '../config/train.js';
import { loadRunData } from '../data/run-data.js';
import { evaluate, type Evaluation } from '../parallel/evaluate.js';
import { MetricsLog } from './metrics.js';
import { Progress } from './progress.js';
import { Sgd } from '../model/sgd.js';
import { trainStep } from '../model/step.js';

export interface TrainOptions {
  config: TrainConfig;
  /** run directory: metrics.jsonl and the checkpoint */
  outDir: string;
  /** continue from the checkpoint in outDir (its saved config wins) */
  resume?: boolean;
  /** stop (with a checkpoint) after this many steps in this process */
  maxSteps?: number;
  /** where the summary and epoch lines go */
  log?: (line: string) => void;
  progress?: boolean;
}

export interface TrainResult {
  config: TrainConfig;
  position: Position;
  finished: boolean;
  epochs: Array<Evaluation & { epoch: number; trainLoss: number }>;
  losses: number[];
  trainSeconds: number;
  imagesPerSec: number;
  wallSeconds: number;
  /** final parameters by name (for tests and comparisons) */
  params: Map<string, Float32Array>;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const wallStart = performance.now();
  const log = opts.log ?? ((l: string) => console.log(l));
  mkdirSync(opts.outDir, { recursive: true });
  const state = opts.resume ? readCheckpointState(opts.outDir) : undefined;
  const cfg = state?.config ?? opts.config;

  const backend = await initBackend(cfg.backend);
  const data = loadRunData(cfg);
  const spec = specOf(cfg);
  const model = buildModel(spec, { seed: cfg.seed });
  const opt = new Sgd({ lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
  const metrics = new MetricsLog(join(opts.outDir, 'metrics.jsonl'));
  const pos: Position = state?.position ?? { epoch: 0, step: 0, globalStep: 0 };
  if (state) {
    restoreTensors(opts.outDir, model, opt);
    metrics.write({ type: 'resume', globalStep: pos.globalStep, time: new Date().toISOString() });
  }
  const stepsPerEpoch = Math.floor(data.train.count / cfg.batch);
  if (stepsPerEpoch === 0) throw new Error(`batch ${cfg.batch} is larger than the ${data.train.count} training samples`);
  log(`splitnet train: ${cfg.arch} AlexNet ${cfg.resolution}×${cfg.resolution}×${cfg.channels}, width ${cfg.width}, ` +
    `${countParams(model).toLocaleString('en-US')} parameters, ${backend.name} backend`);
  log(`  ${data.source}: ${data.train.count} train / ${data.test.count} test; batch ${cfg.batch}, ${stepsPerEpoch} steps/epoch, ` +
    `${cfg.epochs} epoch(s), lr ${cfg.lr}, momentum ${cfg.momentum}, weight decay ${cfg.weightDecay}` +
    (state ? `; resumed at epoch ${pos.epoch} step ${pos.step}` : ''));

  let interrupted = false;
  const onSignal = () => { interrupted = true; };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const result: TrainResult = {
    config: cfg, position: pos, finished: false, epochs: [], losses: [], trainSeconds: 0, imagesPerSec: 0, wallSeconds: 0, params: new Map(),
  };
  const progress = opts.progress === false ? undefined : new Progress(cfg.epochs * stepsPerEpoch, 'train');
  let stepsThisRun = 0;
  try {
    for (; pos.epoch < cfg.epochs; pos.epoch++, pos.step = 0) {
      const order = epochOrder(data.train.count, cfg.seed, pos.epoch);
      opt.opts.lr = learningRate(cfg, pos.epoch);
      let lossSum = 0;
      let lossCount = 0;
      for (; pos.step < stepsPerEpoch; ) {
        const t0 = performance.now();
        const samples = order.subarray(pos.step * cfg.batch, (pos.step + 1) * cfg.batch);
        const { x, y } = makeBatch(data.train, samples, {
          resolution: cfg.resolution, channels: cfg.channels,
          ...(cfg.augment ? { augment: { seed: cfg.seed, epoch: pos.epoch } } : {}),
        });
        // Dropout is keyed by the global step: a resumed run draws the same masks.
        const tStep = performance.now();
        const loss = trainStep(model, opt, x, y, { seed: cfg.seed, step: pos.globalStep, firstSample: 0 });
        const stepMs = performance.now() - tStep;
        tf.dispose([x, y]);
        if (!Number.isFinite(loss)) throw new Error(`loss is ${loss} at epoch ${pos.epoch} step ${pos.step}: lower --lr`);
        pos.step++;
        pos.globalStep++;
        stepsThisRun++;
        const seconds = (performance.now() - t0) / 1000;
        result.trainSeconds += seconds;
        result.losses.push(loss);
        lossSum += loss;
        lossCount++;
        const imagesPerSec = cfg.batch / seconds;
        progress?.update(pos.epoch * stepsPerEpoch + pos.step, loss, imagesPerSec);
        metrics.write({
          type: 'step', epoch: pos.epoch, step: pos.step - 1, globalStep: pos.globalStep, loss, lr: opt.opts.lr, imagesPerSec,
          stepMs, loopMs: (performance.now() - t0), time: new Date().toISOString(),
        });
        if (cfg.checkpointEvery > 0 && pos.globalStep % cfg.checkpointEvery === 0) saveCheckpoint(opts.outDir, model, opt, cfg, pos);
        await yieldToEventLoop(); // lets SIGINT/SIGTERM and the progress timer in
        if (interrupted || (opts.maxSteps !== undefined && stepsThisRun >= opts.maxSteps)) {
          progress?.stop();
          saveCheckpoint(opts.outDir, model, opt, cfg, pos);
          log(`stopped at epoch ${pos.epoch} step ${pos.step}: checkpoint in ${opts.outDir}; continue with --resume ${opts.outDir}`);
          return finish(result, model, wallStart);
        }
      }
      progress?.stop();
      const ev = evaluate(model, data.test, { resolution: cfg.resolution, channels: cfg.channels, batch: cfg.evalBatch, limit: 0 });
      const trainLoss = lossCount > 0 ? lossSum / lossCount : NaN;
      result.epochs.push({ ...ev, epoch: pos.epoch, trainLoss });
      metrics.write({ type: 'epoch', epoch: pos.epoch, trainLoss, testAccuracy: ev.accuracy, testLoss: ev.loss, testSamples: ev.samples, seconds: result.trainSeconds, time: new Date().toISOString() });
      log(`epoch ${pos.epoch + 1}/${cfg.epochs}: train loss ${trainLoss.toFixed(4)}, test accuracy ${(ev.accuracy * 100).toFixed(2)}% ` +
        `(${ev.samples} images), test loss ${ev.loss.toFixed(4)}`);
    }
    saveCheckpoint(opts.outDir, model, opt, cfg, pos);
    result.finished = true;
    return finish(result, model, wallStart);
  } finally {
    progress?.stop();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    opt.dispose();
    disposeModel(model);
  }
}

function finish(result: TrainResult, model: ReturnType<typeof buildModel>, wallStart: number): TrainResult {
  for (const [name, v] of model.params) result.params.set(name, v.dataSync().slice() as Float32Array);
  const images = result.losses.length * result.config.batch;
  result.imagesPerSec = result.trainSeconds > 0 ? images / result.trainSeconds : 0;
  result.wallSeconds = (performance.now() - wallStart) / 1000;
  return result;
}
