/**
 * `splitnet compare`: every mode, one after another, on the same net, data,
 * seed and step budget; measured per worker, predicted from the layer shapes
 * and the measured link and layer times, and forecast beyond this machine.
 *
 *   1. probe the link (latency, bandwidth) and time every layer in one process
 *   2. run each mode with train(): the same config, its own run directory,
 *      on the workers mode-plan.ts gives it (model and grid on as many as
 *      the net's towers need, local ones where the config names fewer)
 *   3. run data-parallel again at 3 and 4 workers (oversubscribed on small
 *      machines) so the prediction is checked against every size measurable here
 *   4. the forecast: 2–16 workers, four link speeds, data vs model vs hybrid,
 *      each worker on a machine of its own (no contention)
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseClusterConfig, type ClusterConfig } from '../config/cluster.js';
import type { TrainConfig } from '../config/train.js';
import { initBackend } from '../backend.js';
import { specOf } from '../model/alexnet.js';
import { RunStopped } from '../errors.js';
import { adapterFor } from '../webgpu.js';
import { planDevices } from '../run/launcher.js';
import { train, type Mode, type TrainResult } from '../run/loop.js';
import { freePorts } from '../wire/free-ports.js';
import { probeLink, type LinkProbe } from '../wire/link-probe.js';
import { parseLinkRate, ShapedNetwork, type LinkRate } from '../run/shaped-network.js';
import { predictBytesByRank } from './predict-bytes.js';
import { forecast, predictStepMs, relativeError, type StepInputs } from './predict.js';
import { measureContention } from './contention.js';
import { calibrate, type Calibration } from './calibrate.js';
import { profileLayers } from './profile-layers.js';
import { profileOverheads } from './profile-overheads.js';
import { checkModePlan, planMode, type ModePlan } from './mode-plan.js';
import type { BytesSent, CompareMode, CompareResult, LayerTiming, ModeMeasure, Span, StepOverheads, StepSplit, WorkerMeasure } from './types.js';

export interface CompareOptions {
  /** the config every mode trains: trainSamples = steps × batch, one epoch */
  config: TrainConfig;
  modes: CompareMode[];
  /** each link the cluster modes run over: LOOPBACK, or a rate the workers' links are shaped to ('1gbit') */
  links: string[];
  cluster: ClusterConfig;
  /** run directories go under here */
  outDir: string;
  /** also run data-parallel at 3 and 4 local workers, to check the prediction */
  checkForecast: boolean;
  log: (line: string) => void;
  progress: boolean;
}

const mean = (xs: number[]): number => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);

/**
 * Steps averaged: the last two thirds. The first step pays for first-run
 * allocations and kernel set-up, and a cluster's next few are still slow
 * (measured: data-parallel's steps 1–5 at 1.5–2× its later ones on 2 cores,
 * as the workers' heaps and socket buffers grow); the model predicts the
 * steady state. At least one step is dropped, at least one kept.
 */
function timed<T>(xs: T[]): T[] {
  if (xs.length <= 1) return xs;
  return xs.slice(Math.max(1, Math.floor(xs.length / 3)));
}

/** The mean over the ranks' bytes, in all and by link (a link a rank lacks counts 0 for it). */
function meanBytes(ranks: BytesSent[]): BytesSent {
  const sentByLink: Record<string, number> = {};
  for (const r of ranks) for (const [k, v] of Object.entries(r.sentByLink)) sentByLink[k] = (sentByLink[k] ?? 0) + v / ranks.length;
  return { bytesSentPerStep: mean(ranks.map((r) => r.bytesSentPerStep)), sentByLink };
}

/** One worker's figures over a run's timed steps, beside the bytes predicted for its rank. */
function workerMeasure(r: TrainResult, rank: number, predicted: BytesSent): WorkerMeasure {
  const steps = timed(r.stats);
  const details = steps.map((s) => s.detail[rank]);
  const sendMs = mean(details.map((d) => d?.sendMs ?? 0));
  const optimizerMs = mean(details.map((d) => d?.optimizerMs ?? 0));
  const split: StepSplit = {
    compute: Math.max(0, mean(steps.map((s) => s.computeMs[rank]!)) - sendMs - optimizerMs),
    send: sendMs,
    wait: mean(steps.map((s) => s.waitMs[rank]!)),
    optimizer: optimizerMs,
  };
  const sentByLink: Record<string, number> = {};
  for (const d of details) for (const [k, v] of Object.entries(d?.sentByLink ?? {})) sentByLink[k] = (sentByLink[k] ?? 0) + v / details.length;
  // Every step on one timeline: step k starts where the coordinator's steps before it ended.
  const spans: Span[] = [];
  let at = 0;
  r.stats.forEach((s, k) => {
    for (const sp of s.detail[rank]?.spans ?? []) spans.push({ ...sp, startMs: at + sp.startMs, step: k });
    at += s.wallMs;
  });
  return {
    rank,
    stepMs: split,
    bytesSentPerStep: mean(steps.map((s) => s.bytesSent[rank]!)),
    bytesReceivedPerStep: mean(details.map((d) => d?.bytesReceived ?? 0)),
    sentByLink,
    cpuMsPerStep: mean(details.map((d) => d?.cpuMs ?? 0)),
    peakRssBytes: Math.max(0, ...r.stats.map((s) => s.detail[rank]?.rssBytes ?? 0)),
    peakBackendBytes: Math.max(0, ...r.stats.map((s) => s.detail[rank]?.backendBytes ?? 0)),
    predicted,
    spans,
  };
}

/** A compare run that did not reach its last step: stopped by a signal (exit 130/143), or by anything else (a failure). */
function stoppedCompare(r: TrainResult, what: string): Error {
  const message = `compare: ${what} stopped before its last step; nothing was written`;
  return r.stoppedBy !== undefined ? new RunStopped(r.stoppedBy, `${message} (${r.stoppedBy})`) : new Error(message);
}

/** Worker counts, beyond the config's, at which the step-time model is checked against a run (oversubscribed on small machines). */
const CHECK_SIZES = [3, 4];

/** Host work on a machine where `slowdown` processes' worth of compute contend: slowed as the layers are. */
const slowedOverheads = (o: StepOverheads, slowdown: number): StepOverheads =>
  ({ ...o, inputMs: o.inputMs * slowdown, inputMsAtHalfBatch: o.inputMsAtHalfBatch * slowdown, moveMsPerFloat: o.moveMsPerFloat * slowdown, ringMsPerParam: o.ringMsPerParam * slowdown });
/** The name of the unshaped link (--link's default). */
export const LOOPBACK = 'loopback';

/**
 * Namespaces behind `rate` for the widest mode on the link (`workers`): each
 * mode's workers are placed in the first of them. The workers are all on
 * this host (command.ts refused remote ones; local clusters are local).
 */
function shapedFor(o: CompareOptions, rate: LinkRate, workers: number, log: (line: string) => void): ShapedNetwork | undefined {
  if (planDevices(o.cluster).single !== undefined) return undefined; // one process: nothing to shape (the mode says so)
  log(`link ${rate.text}: up to ${workers} workers in network namespaces, each behind a ${rate.text} link`);
  return ShapedNetwork.create(workers, rate);
}
/** Steps of each check run (the first is not timed). */
const CHECK_STEPS = 4;

/**
 * A local cluster of `n` workers on fresh ports, on the device of the
 * config's first worker (shared when it is a GPU): the prediction check's
 * extra sizes compute where the measured modes did.
 */
async function localCluster(base: ClusterConfig, n: number): Promise<ClusterConfig> {
  const [coord, ...ports] = await freePorts(n + 1);
  const device = base.workers[0]!.device;
  return parseClusterConfig({
    coordinator: { host: '127.0.0.1', port: coord }, transport: base.transport, security: base.security,
    workers: ports.map((port) => ({ host: '127.0.0.1', device, ...(device === 'cpu' ? {} : { shared: true }), port })),
    timeouts: base.timeouts, heartbeat: base.heartbeat, bucketBytes: base.bucketBytes,
  }, `a local cluster of ${n} workers`);
}

/** The workers a mode runs on: the cluster's first `world`, or a local cluster of `world` where the config names fewer. */
async function workersFor(o: CompareOptions, world: number): Promise<ClusterConfig> {
  const usable = planDevices(o.cluster).workers;
  if (usable.length >= world) return { ...o.cluster, workers: usable.slice(0, world) };
  return localCluster(o.cluster, world);
}

export async function runCompare(o: CompareOptions): Promise<CompareResult> {
  const { config: cfg, log } = o;
  const spec = specOf(cfg);
  const cores = availableParallelism();
  const devices = planDevices(o.cluster);
  const plans = o.modes.map((m) => planMode(m, cfg, spec, devices.workers.length));
  // What would fail halfway is refused before anything runs (in one process for want of devices, the cluster modes check nothing).
  if (devices.single === undefined) for (const p of plans) if (p.skipped === undefined) checkModePlan(p, cfg, spec);
  /** Worker counts of the cluster runs, as they will run. */
  const clusterWorlds = devices.single === undefined ? plans.filter((p) => p.skipped === undefined && p.layout !== 'single').map((p) => p.world) : [];
  log(`compare: ${cfg.arch} AlexNet ${cfg.resolution}×${cfg.resolution}×${cfg.channels}, width ${cfg.width}, batch ${cfg.batch}, seed ${cfg.seed}, ` +
    `${cfg.trainSamples / cfg.batch} steps per mode; modes ${o.modes.join(', ')}`);

  const secure = o.cluster.security === 'curve';
  const transport = o.cluster.transport;
  log(`  probing the link (${transport === 'ipc' ? 'ipc in a private directory' : 'loopback TCP'} through zeromq${secure ? ', CURVE-encrypted as the run\'s links' : ''}) and timing every layer in one process`);
  const link = await probeLink({ secure, transport });
  // The layers are timed where the workers compute: the config's device, this backend.
  const device = String(o.cluster.workers[0]!.device);
  await initBackend(cfg.backend, adapterFor(device, cfg.adapter));
  const { layers, optimizerMs } = await profileLayers(cfg);
  // At half the batch too: what each layer costs regardless of the samples (a worker's shard is smaller).
  const halfBatch = Math.max(1, Math.floor(cfg.batch / 2));
  const { layers: layersAtHalfBatch } = await profileLayers(cfg, halfBatch);
  const overheads = await profileOverheads(cfg, cfg.batch, halfBatch);
  const computeMs = layers.reduce((n, l) => n + l.forwardMs + l.backwardMs, 0);
  log(`  link: ${link.latencyMs.toFixed(3)} ms latency, ${(link.bandwidth / 1e9).toFixed(2)} GB/s; one step's layers: ${computeMs.toFixed(1)} ms; ` +
    `its batch ${overheads.inputMs.toFixed(1)} ms; host work ${(overheads.moveMsPerFloat * 1e6).toFixed(2)} ms per Mfloat moved, ${(overheads.ringMsPerParam * 1e6).toFixed(2)} ms per Mparam reduced`);

  // Workers on this machine compute at once and slow each other down: measured, not assumed.
  // A size the data run measures already is not run again.
  const dataWorld = plans.some((p) => p.mode === 'data' && p.skipped === undefined) && devices.single === undefined ? devices.workers.length : undefined;
  const checkSizes = o.checkForecast ? CHECK_SIZES.filter((n) => cfg.batch >= n && n !== dataWorld) : [];
  const clusterModes = o.modes.some((m) => m !== 'single');
  const sizes = [...new Set([...(clusterModes ? [2] : []), ...clusterWorlds, ...checkSizes])].sort((a, b) => a - b);
  const contention = await measureContention(cfg, sizes, device);
  log(`  compute slowdown with n processes computing at once: ${[...contention].map(([n, c]) => `${n}: ×${c.toFixed(2)}`).join(', ')}`);
  // A worker among two computes slower still than two plain processes do (calibrate.ts): measured in a short run.
  let calibration: Calibration | undefined;
  if (clusterModes && devices.single === undefined && halfBatch * 2 === cfg.batch) {
    calibration = await calibrate(cfg, await localCluster(o.cluster, 2), halfBatch, layersAtHalfBatch);
    log(`  a worker among 2 in a run: layers ×${calibration.slowdown.toFixed(2)} their time alone; ${calibration.envelopeMs.toFixed(1)} ms per step through the coordinator`);
    // The n-process figures keep their proportion to 2's.
    const two = contention.get(2) ?? 1;
    for (const [n, c] of contention) if (n > 1) contention.set(n, c * calibration.slowdown / two);
  }
  const envelopeMs = calibration?.envelopeMs ?? 0;
  /** Layer times of a worker among `world` on this machine. */
  const slowed = (ls: LayerTiming[], world: number): LayerTiming[] => {
    const c = contention.get(world) ?? 1;
    return ls.map((l) => ({ ...l, forwardMs: l.forwardMs * c, backwardMs: l.backwardMs * c }));
  };
  const inputs = (world: number, batch: number, optimizerMsPerParam: number, over: LinkProbe = link): StepInputs => ({
    layers: slowed(layers, world), layersAtHalfBatch: slowed(layersAtHalfBatch, world), halfBatch, link: over, world, batch, measuredBatch: cfg.batch, spec,
    bucketBytes: o.cluster.bucketBytes, optimizerMsPerParam: optimizerMsPerParam * (contention.get(world) ?? 1), wire: cfg.wire,
    overheads: { ...slowedOverheads(overheads, contention.get(world) ?? 1), envelopeMs },
  });
  const params = layers.reduce((n, l) => n + l.params, 0);
  const optimizerMsPerParam = optimizerMs / params;

  /** One mode over one link: its run, measured, beside what the models predicted for it (for each worker's rank). */
  const runMode = async (p: ModePlan, linkName: string, network: ShapedNetwork | undefined, at: (world: number, batch: number) => StepInputs): Promise<ModeMeasure> => {
    const { mode } = p;
    log(`mode: ${mode}${linkName === LOOPBACK ? '' : ` over ${linkName}`}`);
    const link = linkName;
    const grid = p.replicas !== undefined ? { replicas: p.replicas, towers: p.towers! } : {};
    if (p.skipped !== undefined) {
      log(`  skipped: ${p.skipped}`);
      return { mode, layout: p.layout, link, world: 0, skipped: p.skipped, imagesPerSec: 0, stepMs: 0, workers: [], losses: [], testAccuracy: 0, predicted: { bytesSentPerStep: 0, sentByLink: {}, stepMs: 0 } };
    }
    let layout: Mode = p.layout;
    let fallback: string | undefined;
    let cluster: ClusterConfig | undefined;
    if (layout !== 'single') {
      if (devices.single !== undefined) {
        fallback = devices.single;
        layout = 'single';
        log(`  ${fallback}`);
      } else {
        const workers = await workersFor(o, p.world);
        // Over a shaped link the workers run in their namespaces, over TCP with CURVE (ShapedNetwork.place).
        cluster = network !== undefined ? network.place(workers) : workers;
      }
    }
    const world = cluster?.workers.length ?? 1;
    const replicas = layout === 'model' ? p.replicas : undefined;
    const predictedBytes = predictBytesByRank(layout, spec, world, cfg.batch, o.cluster.bucketBytes, cfg.wire, replicas);
    const predictedMs = predictStepMs(layout, { ...at(world, cfg.batch), ...(replicas !== undefined ? { replicas } : {}) });
    const r = await train({
      config: cfg, outDir: join(o.outDir, 'runs', linkName === LOOPBACK ? mode : `${mode}-${linkName}`), mode: layout, progress: o.progress, log: (l) => log(`  ${l}`),
      ...(cluster !== undefined ? { cluster, workers: cluster.workers } : {}),
      ...(replicas !== undefined && replicas > 1 ? { replicas } : {}),
      ...(network !== undefined && cluster !== undefined ? { workerCommand: network.workerCommand } : {}),
    });
    if (!r.finished) throw stoppedCompare(r, `the ${mode} run${linkName === LOOPBACK ? '' : ` over ${linkName}`}`);
    if (r.world !== world) throw new Error(`compare: the ${mode} run trained on ${r.world} workers, expected ${world}`);
    return {
      mode, layout, ...(layout === 'model' ? grid : {}), link, world: r.world, ...(fallback !== undefined ? { fallback } : {}),
      imagesPerSec: r.imagesPerSec, stepMs: mean(timed(r.stats).map((s) => s.wallMs)),
      workers: Array.from({ length: r.world }, (_, rank) => workerMeasure(r, rank, predictedBytes[rank]!)),
      losses: r.losses, testAccuracy: r.epochs.at(-1)?.accuracy ?? NaN,
      predicted: { ...meanBytes(predictedBytes), stepMs: predictedMs },
    };
  };

  const modes: ModeMeasure[] = [];
  const links: CompareResult['links'] = [{ name: LOOPBACK, ...link }];
  const forecastCheck: CompareResult['forecastCheck'] = [];
  for (const [li, linkName] of o.links.entries()) {
    // Single runs once: one process has no link.
    const todo = plans.filter((p) => p.mode !== 'single' || li === 0);
    const widest = Math.max(0, ...todo.filter((p) => p.skipped === undefined && p.layout !== 'single').map((p) => p.world));
    const shaped = linkName === LOOPBACK || widest === 0 ? undefined : shapedFor(o, parseLinkRate(linkName), widest, log);
    try {
      let linkHere = link;
      if (shaped !== undefined) {
        linkHere = await shaped.probe(0); // CURVE, as place() makes the workers' links
        links.push({ name: linkName, ...linkHere });
        log(`link ${linkName}: ${linkHere.latencyMs.toFixed(3)} ms latency, ${(linkHere.bandwidth / 1e9).toFixed(3)} GB/s (workers in network namespaces, tc tbf)`);
      }
      for (const p of todo) {
        // One process has no link: single is labelled loopback, whichever link it ran beside.
        const m = await runMode(p, p.mode === 'single' ? LOOPBACK : linkName, shaped, (world, batch) => inputs(world, batch, optimizerMsPerParam, linkHere));
        modes.push(m);
        if (m.skipped !== undefined || m.fallback !== undefined) continue;
        const predictedMs = m.predicted.stepMs;
        forecastCheck.push({ mode: m.mode, link: m.link, workers: m.world, oversubscribed: m.world > cores, measuredMs: m.stepMs, predictedMs, error: relativeError(m.stepMs, predictedMs) });
      }
    } finally {
      shaped?.close();
    }
  }

  // The prediction against every size measurable here: 1 worker (the single run), 2, and 3 and 4 local ones.
  for (const n of checkSizes) {
    const batch = cfg.batch - (cfg.batch % n); // equal shards
    const config = { ...cfg, batch, epochs: 1, trainSamples: CHECK_STEPS * batch, testSamples: batch };
    const cluster = await localCluster(o.cluster, n);
    log(`prediction check: data-parallel on ${n} local workers${n > cores ? ` (${cores} cores: oversubscribed)` : ''}, batch ${batch}`);
    const r = await train({ config, outDir: join(o.outDir, 'runs', `data-${n}`), mode: 'data', cluster, workers: cluster.workers, progress: false, log: () => {} });
    if (!r.finished) throw stoppedCompare(r, `the check at ${n} workers`);
    const measuredMs = mean(timed(r.stats).map((s) => s.wallMs));
    const predictedMs = predictStepMs('data', inputs(n, batch, optimizerMsPerParam));
    forecastCheck.push({ mode: 'data', link: LOOPBACK, workers: n, oversubscribed: n > cores, measuredMs, predictedMs, error: relativeError(measuredMs, predictedMs) });
  }

  const forecastPoints = forecast({ layers, layersAtHalfBatch, halfBatch, link, measuredBatch: cfg.batch, spec, bucketBytes: o.cluster.bucketBytes, optimizerMsPerParam, overheads, wire: cfg.wire }, undefined, undefined,
    [...new Set([cfg.batch, cfg.batch * 2, cfg.batch * 8])]);
  return {
    date: new Date().toISOString(),
    config: {
      arch: cfg.arch, width: cfg.width, resolution: cfg.resolution, batch: cfg.batch, seed: cfg.seed, wire: cfg.wire,
      steps: Math.max(0, ...modes.map((m) => m.losses.length)), backend: cfg.backend,
    },
    link, links, layers, overheads: { ...overheads, envelopeMs }, ...(calibration ? { calibration } : {}), contention: [...contention].map(([workers, slowdown]) => ({ workers, slowdown })), modes, forecast: forecastPoints, forecastCheck,
  };
}
