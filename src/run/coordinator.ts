/**
 * The coordinator (the process that runs `splitnet launch` / `train --mode
 * data`): it starts one worker per device, hands out the config, drives the
 * step schedule, collects losses, metrics, evaluations and checkpoints, and
 * stops everything. When anything fails, everything stops: the first failure
 * (a worker's error, an exit, a disconnect, a malformed message, a missed
 * deadline) aborts the run, every worker is told and then terminated, and the
 * error names the worker and the reason.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import * as zmq from 'zeromq';
import {
  mergeStates, readCheckpointState, readCheckpointTensors, saveCheckpointTensors, type PlainTensor, type Position,
} from '../checkpoint/checkpoint.js';
import { parameterShapes } from '../model/build.js';
import { learningRate, type TrainConfig, specOf } from '../config/train.js';
import { MetricsLog } from './metrics.js';
import { Progress } from './progress.js';
import type { TrainResult } from './loop.js';
import { loadRunDataCounts } from '../data/data-counts.js';
import type { ClusterConfig, WorkerSpec } from '../config/cluster.js';
import { startWorker, stopWorkers, type LaunchedWorker, type WorkerCommandOverride } from './launcher.js';
import { decodeToCoordinator, encodeToWorker, type Decoded, type ToCoordinator } from '../wire/protocol.js';
import { bindAddress, endpoint, Inbox, receiveLoop, socketOptions } from '../wire/transport.js';

export class ClusterError extends Error {
  override readonly name = 'ClusterError';
}

export interface ClusterRunOptions {
  cluster: ClusterConfig;
  workers: WorkerSpec[];
  config: TrainConfig;
  outDir: string;
  resume?: boolean;
  /** data: replicas with ring all-reduce (default); model: the 2012 two-tower split */
  mode?: 'data' | 'model';
  /** model mode: micro-batches per step */
  microBatches?: number;
  /** start all-reduce from gradient hooks during backward (default true) */
  overlap?: boolean;
  maxSteps?: number;
  log?: (line: string) => void;
  progress?: boolean;
  /** extra environment for local workers (tests) */
  workerEnv?: NodeJS.ProcessEnv;
  /** replaces a rank's worker command (tests: hung or hostile workers) */
  workerCommand?: WorkerCommandOverride;
  /** observes the run (tests: kill a worker at a given step) */
  onEvent?: (e: ClusterEvent) => void;
}

export type ClusterEvent =
  | { type: 'started'; pids: number[] }
  | { type: 'step'; globalStep: number };

export interface StepStats { computeMs: number[]; allreduceWaitMs: number[]; bytesSent: number[]; wallMs: number }

export interface ClusterResult extends TrainResult {
  world: number;
  stats: StepStats[];
}

type Msg = Decoded<ToCoordinator>;

export async function runDataParallel(opts: ClusterRunOptions): Promise<ClusterResult> {
  const wallStart = performance.now();
  const log = opts.log ?? ((l: string) => console.log(l));
  const { cluster } = opts;
  const world = opts.workers.length;
  mkdirSync(opts.outDir, { recursive: true });
  const state = opts.resume ? readCheckpointState(opts.outDir) : undefined;
  const cfg = state?.config ?? opts.config;
  const mode = opts.mode ?? 'data';
  const micro = opts.microBatches ?? 1;
  if (mode === 'data' && cfg.batch % world !== 0) throw new ClusterError(`global batch ${cfg.batch} does not split evenly over ${world} workers`);
  if (mode === 'model') {
    if (cfg.arch !== 'original') throw new ClusterError(`--mode model splits the two-tower 'original' net: add --arch original (this run is '${cfg.arch}')`);
    if (world !== 2) throw new ClusterError(`--mode model needs exactly 2 workers, one per tower; the cluster has ${world}`);
    if (cfg.batch % micro !== 0) throw new ClusterError(`batch ${cfg.batch} does not split into ${micro} micro-batches`);
  }
  const spec = specOf(cfg);
  const shapes = parameterShapes(spec);
  const resumeTensors = state ? readCheckpointTensors(opts.outDir, spec, shapes) : undefined;
  const counts = loadRunDataCounts(cfg);
  const stepsPerEpoch = Math.floor(counts.train / cfg.batch);
  if (stepsPerEpoch === 0) throw new ClusterError(`batch ${cfg.batch} is larger than the ${counts.train} training samples`);

  const coordinatorEp = endpoint(cluster.transport, cluster.coordinator.host, cluster.coordinator.port);
  const peers = opts.workers.map((w) => endpoint(cluster.transport, w.host, w.port));
  const router = new zmq.Router({ ...socketOptions(cluster.heartbeat), mandatory: true });
  const inboxes = opts.workers.map(() => new Inbox<Msg>());
  const launched: LaunchedWorker[] = [];
  let failure: ClusterError | undefined;
  let shuttingDown = false;
  const fail = (err: ClusterError) => {
    if (failure || shuttingDown) return;
    failure = err;
    for (const b of inboxes) b.fail(err);
  };
  const name = (rank: number) => launched[rank]?.describe() ?? `worker ${rank}`;
  const send = (rank: number, msg: Parameters<typeof encodeToWorker>[0], tensors: Float32Array[] = []) =>
    router.send([Buffer.from(`w${rank}`), ...encodeToWorker(msg, tensors)]).catch((err: Error) => fail(new ClusterError(`${name(rank)}: cannot be reached: ${err.message}`)));
  /** The next message of `kind` from `rank`; a worker's error, or anything else, fails the run. */
  const expectFrom = async <K extends ToCoordinator['kind']>(rank: number, kind: K, ms: number, what: string): Promise<Decoded<Extract<ToCoordinator, { kind: K }>>> => {
    let m: Msg;
    try {
      m = await inboxes[rank]!.next(ms, `${name(rank)}: ${what}`);
    } catch (err) {
      const e = failure ?? new ClusterError((err as Error).message);
      fail(e);
      throw e;
    }
    if (m.msg.kind === kind) return m as Decoded<Extract<ToCoordinator, { kind: K }>>;
    const e = new ClusterError(m.msg.kind === 'error' ? `${name(rank)} failed: ${m.msg.reason}` : `${name(rank)} sent '${m.msg.kind}' while ${what} was awaited`);
    fail(e);
    throw e;
  };

  let interrupted = false;
  const onSignal = () => { interrupted = true; };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const pos: Position = state?.position ?? { epoch: 0, step: 0, globalStep: 0 };
  const result: ClusterResult = {
    config: cfg, position: pos, finished: false, epochs: [], losses: [], trainSeconds: 0, imagesPerSec: 0, wallSeconds: 0,
    params: new Map(), world, stats: [],
  };
  const progress = opts.progress === false ? undefined : new Progress(cfg.epochs * stepsPerEpoch, `train ×${world}`);
  try {
    // 1. Listen, start the workers, wait for every hello.
    await router.bind(bindAddress(coordinatorEp));
    // A ROUTER's disconnect events do not say which peer left (and unknown
    // peers come and go): a worker's death is seen by its process's exit (the
    // local child, or the ssh session of a remote one) and by step deadlines.
    receiveLoop(router, (frames) => {
      const id = frames[0]!.toString();
      const rank = /^w(\d+)$/.test(id) ? Number(id.slice(1)) : -1;
      if (rank < 0 || rank >= world) {
        process.stderr.write(`coordinator: refused a message from unknown peer '${id.slice(0, 64)}'\n`);
        return;
      }
      try {
        inboxes[rank]!.push(decodeToCoordinator(frames.slice(1), cluster.maxMessageBytes));
      } catch (err) {
        fail(new ClusterError(`${name(rank)} sent a malformed message: ${(err as Error).message}`));
      }
    }, (err) => fail(new ClusterError(`coordinator socket: ${err.message}`)));
    opts.workers.forEach((w, rank) => {
      const lw = startWorker(rank, w, cluster, coordinatorEp, opts.workerEnv, opts.workerCommand);
      launched.push(lw);
      void lw.exited.then(({ code, signal }) => {
        if (shuttingDown) return;
        const last = lw.stderrTail.length > 0 ? `: ${lw.stderrTail[lw.stderrTail.length - 1]}` : '';
        fail(new ClusterError(`${lw.describe()} exited ${signal ? `on ${signal}` : `with code ${code}`} at epoch ${pos.epoch} step ${pos.step}${last}`));
      });
    });
    opts.onEvent?.({ type: 'started', pids: launched.map((w) => w.child.pid ?? -1) });
    log(mode === 'data'
      ? `splitnet launch: data-parallel over ${world} workers (${launched.map((w) => w.describe()).join(', ')}), ` +
        `global batch ${cfg.batch} (${cfg.batch / world} per worker), bucket ${(cluster.bucketBytes / 2 ** 20).toFixed(1)} MiB`
      : `splitnet launch: model-parallel, tower 0 on ${launched[0]!.describe()}, tower 1 on ${launched[1]!.describe()}, ` +
        `batch ${cfg.batch}${micro > 1 ? ` in ${micro} micro-batches` : ''}`);
    const hellos = await Promise.all(opts.workers.map((_, r) =>
      expectFrom(r, 'hello', cluster.timeouts.registerMs, `registration (hello) within ${cluster.timeouts.registerMs / 1000} s`)));
    hellos.forEach((h, r) => {
      if (h.msg.rank !== r) fail(new ClusterError(`${name(r)} registered as rank ${h.msg.rank}`));
    });

    // 2. Setup: config, peers, and (resuming) the checkpoint's tensors. Replicas must agree on the weights.
    const tensors: PlainTensor[] = resumeTensors ? [...resumeTensors.params, ...resumeTensors.momentum.map((m) => ({ ...m, name: `momentum.${m.name}` }))] : [];
    for (let r = 0; r < world; r++) {
      await send(r, {
        kind: 'setup', rank: r, world, mode, microBatches: micro, train: cfg as unknown as Record<string, unknown>, peers,
        bucketBytes: cluster.bucketBytes, heartbeat: cluster.heartbeat, maxMessageBytes: cluster.maxMessageBytes,
        tensors: tensors.map((t) => ({ name: t.name, shape: t.shape })),
      }, tensors.map((t) => t.data));
    }
    const readies = await Promise.all(opts.workers.map((_, r) => expectFrom(r, 'ready', cluster.timeouts.registerMs * 2, 'ready (model built)')));
    const sums = readies.map((m) => m.msg.checksum);
    if (mode === 'data') {
      if (new Set(sums).size !== 1) throw fail2(new ClusterError(`replicas start from different weights: checksums ${sums.map((c, r) => `worker ${r} ${c}`).join(', ')}`));
      log(`  ${readies[0]!.msg.params.toLocaleString('en-US')} parameters per replica, weights identical (checksum ${sums[0]}), ${readies[0]!.msg.backend} backend`);
    } else {
      log(`  ${readies.map((m, r) => `tower ${r}: ${m.msg.params.toLocaleString('en-US')} parameters`).join(', ')}, ${readies[0]!.msg.backend} backend`);
    }

    // 3. The step schedule.
    const metrics = new MetricsLog(join(opts.outDir, 'metrics.jsonl'));
    if (state) metrics.write({ type: 'resume', globalStep: pos.globalStep, time: new Date().toISOString() });
    const stepMsSeen: number[] = [];
    const deadline = () => {
      const sorted = [...stepMsSeen].sort((a, b) => a - b);
      const median = sorted.length > 0 ? sorted[Math.floor(sorted.length / 2)]! : 0;
      return Math.max(cluster.timeouts.stepMs, 10 * median);
    };
    // Data mode: every replica holds all weights, rank 0's are saved. Model mode:
    // each tower's worker holds its own, and the checkpoint merges them into the
    // same file the two-tower net writes in one process.
    const holders = mode === 'data' ? [0] : opts.workers.map((_, r) => r);
    const saveCheckpoint = async () => {
      for (const r of holders) await send(r, { kind: 'getState' });
      const states = await Promise.all(holders.map((r) => expectFrom(r, 'state', deadline(), 'the model state for a checkpoint')));
      const { params, momentum } = mergeStates(states.map((st) => ({ metas: st.msg.tensors, tensors: st.tensors })), [...shapes.keys()]);
      saveCheckpointTensors(opts.outDir, spec, params, momentum, cfg, pos);
      return params;
    };
    let stepsThisRun = 0;
    for (; pos.epoch < cfg.epochs; pos.epoch++, pos.step = 0) {
      const lr = learningRate(cfg, pos.epoch);
      let lossSum = 0;
      let lossCount = 0;
      for (; pos.step < stepsPerEpoch; ) {
        const t0 = performance.now();
        const checksum = cluster.checksumEvery > 0 && (pos.globalStep + 1) % cluster.checksumEvery === 0;
        for (let r = 0; r < world; r++) {
          await send(r, { kind: 'step', globalStep: pos.globalStep, epoch: pos.epoch, step: pos.step, lr, checksum, overlap: opts.overlap ?? true });
        }
        const done = await Promise.all(opts.workers.map((_, r) => expectFrom(r, 'stepDone', deadline(), `step ${pos.globalStep}`)));
        const wallMs = performance.now() - t0;
        stepMsSeen.push(wallMs);
        if (checksum && mode === 'data') {
          const cs = done.map((d) => d.msg.checksum);
          if (new Set(cs).size !== 1) throw fail2(new ClusterError(`replicas diverged at step ${pos.globalStep}: checksums ${cs.map((c, r) => `worker ${r} ${c}`).join(', ')}`));
        }
        // Data mode, equal shards: the global batch's mean loss is the mean of the shards' means.
        // Model mode: both towers computed the loss from the same gathered logits.
        const loss = mode === 'data'
          ? done.reduce((s, d) => s + d.msg.loss * d.msg.samples, 0) / done.reduce((s, d) => s + d.msg.samples, 0)
          : done[0]!.msg.loss;
        if (mode === 'model' && Math.abs(done[1]!.msg.loss - loss) > 1e-5 * Math.max(1, Math.abs(loss))) {
          throw fail2(new ClusterError(`the towers disagree on the loss at step ${pos.globalStep}: ${loss} vs ${done[1]!.msg.loss}`));
        }
        result.stats.push({ computeMs: done.map((d) => d.msg.computeMs), allreduceWaitMs: done.map((d) => d.msg.allreduceWaitMs), bytesSent: done.map((d) => d.msg.bytesSent), wallMs });
        pos.step++;
        pos.globalStep++;
        stepsThisRun++;
        result.losses.push(loss);
        result.trainSeconds += wallMs / 1000;
        lossSum += loss;
        lossCount++;
        const imagesPerSec = cfg.batch / (wallMs / 1000);
        progress?.update(pos.epoch * stepsPerEpoch + pos.step, loss, imagesPerSec);
        metrics.write({ type: 'step', epoch: pos.epoch, step: pos.step - 1, globalStep: pos.globalStep, loss, lr, imagesPerSec, stepMs: Math.max(...done.map((d) => d.msg.computeMs)), loopMs: wallMs, time: new Date().toISOString() });
        opts.onEvent?.({ type: 'step', globalStep: pos.globalStep });
        if (cfg.checkpointEvery > 0 && pos.globalStep % cfg.checkpointEvery === 0) await saveCheckpoint();
        if (interrupted || (opts.maxSteps !== undefined && stepsThisRun >= opts.maxSteps)) {
          progress?.stop();
          const ps = await saveCheckpoint();
          for (const p of ps) result.params.set(p.name, p.data);
          log(`stopped at epoch ${pos.epoch} step ${pos.step}: checkpoint in ${opts.outDir}; continue with --resume ${opts.outDir}`);
          return result;
        }
      }
      progress?.stop();
      for (let r = 0; r < world; r++) await send(r, { kind: 'evaluate', epoch: pos.epoch });
      const evs = await Promise.all(opts.workers.map((_, r) => expectFrom(r, 'evalDone', deadline() * 10, `evaluation of epoch ${pos.epoch}`)));
      // Data mode: each replica evaluated a shard. Model mode: both towers evaluated every sample together.
      const counted = mode === 'data' ? evs : [evs[0]!];
      const samples = counted.reduce((s, e) => s + e.msg.samples, 0);
      const accuracy = counted.reduce((s, e) => s + e.msg.correct, 0) / samples;
      const testLoss = counted.reduce((s, e) => s + e.msg.lossSum, 0) / samples;
      const trainLoss = lossSum / Math.max(1, lossCount);
      result.epochs.push({ epoch: pos.epoch, accuracy, loss: testLoss, samples, trainLoss });
      metrics.write({ type: 'epoch', epoch: pos.epoch, trainLoss, testAccuracy: accuracy, testLoss, testSamples: samples, seconds: result.trainSeconds, time: new Date().toISOString() });
      log(`epoch ${pos.epoch + 1}/${cfg.epochs}: train loss ${trainLoss.toFixed(4)}, test accuracy ${(accuracy * 100).toFixed(2)}% (${samples} images), test loss ${testLoss.toFixed(4)}`);
    }
    const ps = await saveCheckpoint();
    for (const p of ps) result.params.set(p.name, p.data);
    result.finished = true;
    return result;
  } catch (err) {
    throw failure ?? (err instanceof ClusterError ? err : new ClusterError(err instanceof Error ? err.message : String(err)));
  } finally {
    progress?.stop();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    // 4. Stop: a clean shutdown when all went well, abort otherwise; then make sure.
    const ok = failure === undefined;
    shuttingDown = true;
    for (let r = 0; r < launched.length; r++) {
      // Best effort, and never a wait without end: a stuck peer is killed below.
      const told = router.send([Buffer.from(`w${r}`), ...encodeToWorker(ok ? { kind: 'shutdown' } : { kind: 'abort', reason: failure!.message })]).catch(() => {});
      await Promise.race([told, new Promise((resolve) => setTimeout(resolve, 500))]);
    }
    const exits = Promise.all(launched.map((w) => w.exited));
    await Promise.race([exits, new Promise((r) => setTimeout(r, cluster.timeouts.shutdownGraceMs))]);
    await stopWorkers(launched, cluster.timeouts.shutdownGraceMs);
    router.close();
    const images = result.losses.length * cfg.batch;
    result.imagesPerSec = result.trainSeconds > 0 ? images / result.trainSeconds : 0;
    result.wallSeconds = (performance.now() - wallStart) / 1000;
  }

  function fail2(err: ClusterError): ClusterError {
    fail(err);
    return err;
  }
}
