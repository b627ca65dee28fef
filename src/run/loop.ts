/**
 * The training loop, the only one: every mode runs through it. It reads top
 * to bottom: the checks of its input before anything exists (preflight.ts),
 * the config (a resumed run's own), the strategy (this process,
 * or a cluster of workers), the checkpoint's state, epochs of steps with
 * progress and metrics, evaluation after each epoch, checkpoints, Ctrl-C
 * and SIGTERM (both stop after the current step with a checkpoint). The run
 * directory is locked for the whole run (run-lock.ts): one writer only.
 * What a step is and where it runs is the strategy's business.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { backendLabel } from '../backend.js';
import { readCheckpointTensors, saveCheckpoint, type Position, type RunTotals, type TrainState } from '../checkpoint/checkpoint.js';
import { learningRate, type TrainConfig } from '../config/train.js';
import { loadRunData } from '../data/run-data.js';
import { countParams, parameterShapes } from '../model/build.js';
import { SingleStrategy } from '../parallel/single.js';
import type { EvalResult, StepDetail, Strategy } from '../parallel/strategy.js';
import { Cluster } from './coordinator.js';
import type { WorkerCommandOverride } from './launcher.js';
import { MetricsLog } from './metrics.js';
import { preflight, type Mode, type Preflight, type RunRequest } from './preflight.js';
import { Progress } from './progress.js';
import { acquireRunLock } from './run-lock.js';

export type { Mode } from './preflight.js';

export interface TrainOptions extends RunRequest {
  /** stop (with a checkpoint) after this many steps in this process */
  maxSteps?: number;
  /** where the summary and epoch lines go */
  log?: (line: string) => void;
  progress?: boolean;
  /** extra environment for local workers (tests) */
  workerEnv?: NodeJS.ProcessEnv;
  /** replaces a rank's worker command (tests: hung or hostile workers) */
  workerCommand?: WorkerCommandOverride;
  /** observes the run (tests: kill a worker at a given step) */
  onEvent?: (e: RunEvent) => void;
}

export type RunEvent = { type: 'started'; pids: number[] } | { type: 'step'; globalStep: number };

/** One step as each worker saw it (one entry in single mode). */
export interface StepStats {
  computeMs: number[]; waitMs: number[]; bytesSent: number[]; tensors: number[]; wallMs: number;
  /** each worker's time split, traffic and memory, where its strategy reports them */
  detail: Array<StepDetail | undefined>;
}

export interface TrainResult {
  config: TrainConfig;
  mode: Mode;
  /** processes that trained: 1 in single mode */
  world: number;
  position: Position;
  finished: boolean;
  /** the signal that stopped the run early (after its checkpoint); absent when it finished or stopped at maxSteps */
  stoppedBy?: NodeJS.Signals;
  epochs: Array<{ epoch: number; accuracy: number; loss: number; samples: number; trainLoss: number }>;
  losses: number[];
  stats: StepStats[];
  trainSeconds: number;
  imagesPerSec: number;
  wallSeconds: number;
  /** final parameters by name (for tests and comparisons) */
  params: Map<string, Float32Array>;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Set by SIGINT or SIGTERM: the loop stops after the current step, with a checkpoint. */
interface StopRequest { signal?: NodeJS.Signals }

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const plan = await preflight(opts, log);
  mkdirSync(opts.outDir, { recursive: true });
  const lock = acquireRunLock(opts.outDir, log);
  // Listening from the start: a SIGTERM while data loads or workers start
  // must not kill the run before it can checkpoint. `once`: a second signal
  // ends the process at once (the lock is then stale, and taken over next time).
  const stop: StopRequest = {};
  const onSignal = (signal: NodeJS.Signals) => { stop.signal = signal; };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await trainLocked(opts, plan, log, stop);
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    lock.release();
  }
}

async function trainLocked(opts: TrainOptions, plan: Preflight, log: (line: string) => void, stop: StopRequest): Promise<TrainResult> {
  const wallStart = performance.now();
  const { saved, cfg, spec, mode, workers, placement, stepsPerEpoch } = plan;
  const resumed: TrainState | undefined = saved ? readCheckpointTensors(opts.outDir, spec, parameterShapes(spec)) : undefined;
  const pos: Position = saved?.position ?? { epoch: 0, step: 0, globalStep: 0 };
  const totals: RunTotals = saved?.totals ?? { epochLossSum: 0, epochSteps: 0, trainSeconds: 0 };
  if (saved !== undefined && saved.totals === undefined && pos.step > 0) {
    log(`splitnet: this checkpoint predates saved epoch totals: epoch ${pos.epoch + 1}'s train loss will average only the steps from here`);
  }

  // The strategy: this process, or the cluster's workers.
  let strategy: Strategy;
  let cluster: Cluster | undefined;
  if (mode === 'single') {
    const backend = plan.backend!;
    const data = loadRunData(cfg);
    const single = new SingleStrategy(cfg, data);
    strategy = single;
    log(`splitnet train: ${cfg.arch} AlexNet ${cfg.resolution}×${cfg.resolution}×${cfg.channels}, width ${cfg.width}, ` +
      `${countParams(single.model).toLocaleString('en-US')} parameters, ${backendLabel(backend)} backend`);
    log(`  ${data.source}: ${data.train.count} train / ${data.test.count} test`);
  } else {
    cluster = await Cluster.start({
      cluster: opts.cluster!, workers, config: cfg, mode, placement, log,
      ...(opts.microBatches !== undefined ? { microBatches: opts.microBatches } : {}),
      ...(opts.workerEnv ? { workerEnv: opts.workerEnv } : {}),
      ...(opts.workerCommand ? { workerCommand: opts.workerCommand } : {}),
      onStarted: (pids) => opts.onEvent?.({ type: 'started', pids }),
    });
    strategy = cluster;
  }
  log(`  batch ${cfg.batch}, ${stepsPerEpoch} steps/epoch, ${cfg.epochs} epoch(s), lr ${cfg.lr}, momentum ${cfg.momentum}, ` +
    `weight decay ${cfg.weightDecay}${saved ? `; resumed at epoch ${pos.epoch} step ${pos.step}` : ''}`);

  const metrics = new MetricsLog(join(opts.outDir, 'metrics.jsonl'));
  if (saved !== undefined) {
    const repaired = metrics.repairTornLine();
    if (repaired !== undefined) log(`splitnet: ${repaired}`);
  }
  const result: TrainResult = {
    config: cfg, mode, world: cluster?.world ?? 1, position: pos, finished: false, epochs: [], losses: [], stats: [],
    trainSeconds: 0, imagesPerSec: 0, wallSeconds: 0, params: new Map(),
  };
  const checkpoint = async () => {
    const state = await strategy.state();
    saveCheckpoint(opts.outDir, spec, state, cfg, pos, { totals });
    result.params = new Map(state.params.map((p) => [p.name, p.data]));
  };
  const progress = opts.progress === false ? undefined : new Progress(cfg.epochs * stepsPerEpoch, mode === 'single' ? 'train' : `train ${mode} ×${result.world}`, mode === 'single' ? 0 : result.world);
  const checksumEvery = opts.cluster?.checksumEvery ?? 0;
  let stepsThisRun = 0;
  const stopHere = async () => {
    progress?.stop();
    await checkpoint();
    log(`stopped${stop.signal ? ` by ${stop.signal}` : ''} at epoch ${pos.epoch} step ${pos.step}: checkpoint in ${opts.outDir}; continue with --resume ${opts.outDir}`);
    if (stop.signal !== undefined) result.stoppedBy = stop.signal;
    return result;
  };
  try {
    if (resumed) {
      await strategy.load(resumed);
      metrics.write({ type: 'resume', globalStep: pos.globalStep, time: new Date().toISOString() });
    }
    for (; pos.epoch < cfg.epochs; pos.epoch++, pos.step = 0) {
      const lr = learningRate(cfg, pos.epoch);
      for (; pos.step < stepsPerEpoch; ) {
        // a signal during startup or the last evaluation
        if (stop.signal !== undefined) return await stopHere();
        const t0 = performance.now();
        const r = await strategy.step({
          globalStep: pos.globalStep, epoch: pos.epoch, step: pos.step, lr,
          checksum: checksumEvery > 0 && (pos.globalStep + 1) % checksumEvery === 0, overlap: opts.overlap ?? true,
        });
        const wallMs = performance.now() - t0;
        if (!Number.isFinite(r.loss)) throw new Error(`loss is ${r.loss} at epoch ${pos.epoch} step ${pos.step}: the run diverged; lower --lr`);
        const each = r.workers ?? [r];
        result.stats.push({
          computeMs: each.map((w) => w.computeMs), waitMs: each.map((w) => w.waitMs), bytesSent: each.map((w) => w.bytesSent),
          tensors: each.map((w) => w.tensors), wallMs, detail: each.map((w) => w.detail),
        });
        pos.step++;
        pos.globalStep++;
        stepsThisRun++;
        result.trainSeconds += wallMs / 1000;
        result.losses.push(r.loss);
        totals.trainSeconds += wallMs / 1000;
        totals.epochLossSum += r.loss;
        totals.epochSteps++;
        const imagesPerSec = cfg.batch / (wallMs / 1000);
        progress?.update(pos.epoch * stepsPerEpoch + pos.step, r.loss, imagesPerSec, r.workers ?? []);
        metrics.write({
          type: 'step', epoch: pos.epoch, step: pos.step - 1, globalStep: pos.globalStep, loss: r.loss, lr, imagesPerSec,
          stepMs: r.computeMs + r.waitMs, loopMs: wallMs, time: new Date().toISOString(),
        });
        opts.onEvent?.({ type: 'step', globalStep: pos.globalStep });
        if (cfg.checkpointEvery > 0 && pos.globalStep % cfg.checkpointEvery === 0) await checkpoint();
        await yieldToEventLoop(); // lets SIGINT/SIGTERM and the progress timer in
        if (stop.signal !== undefined || (opts.maxSteps !== undefined && stepsThisRun >= opts.maxSteps)) return await stopHere();
      }
      progress?.stop();
      const ev: EvalResult = await strategy.evaluate(pos.epoch);
      const accuracy = ev.correct / ev.samples;
      const testLoss = ev.lossSum / ev.samples;
      // The steps before a resume count too: their sum and number come from the checkpoint.
      const trainLoss = totals.epochSteps > 0 ? totals.epochLossSum / totals.epochSteps : NaN;
      result.epochs.push({ epoch: pos.epoch, accuracy, loss: testLoss, samples: ev.samples, trainLoss });
      metrics.write({ type: 'epoch', epoch: pos.epoch, trainLoss, testAccuracy: accuracy, testLoss, testSamples: ev.samples, seconds: totals.trainSeconds, time: new Date().toISOString() });
      log(`epoch ${pos.epoch + 1}/${cfg.epochs}: train loss ${trainLoss.toFixed(4)}, test accuracy ${(accuracy * 100).toFixed(2)}% ` +
        `(${ev.samples} images), test loss ${testLoss.toFixed(4)}`);
      totals.epochLossSum = 0;
      totals.epochSteps = 0;
    }
    await checkpoint();
    result.finished = true;
    return result;
  } catch (err) {
    if (cluster) {
      cluster.abort(err instanceof Error ? err.message : String(err));
      throw cluster.failed ?? err;
    }
    throw err;
  } finally {
    progress?.stop();
    await strategy.close();
    const images = result.losses.length * cfg.batch;
    result.imagesPerSec = result.trainSeconds > 0 ? images / result.trainSeconds : 0;
    result.wallSeconds = (performance.now() - wallStart) / 1000;
  }
}

