/**
 * Every check of a run's input that can be made before anything is created
 * or started (the run directory, a worker, an ssh): the checkpoint to
 * resume, the config against the mode and the cluster, the data files, the
 * memory the net needs, every host name. Each failure is a UsageError
 * (exit 2) that leaves nothing behind; what passes is the plan the loop runs.
 */
import { readCheckpointState, type CheckpointState } from '../checkpoint/checkpoint.js';
import { checkSecurity, isLocal, type ClusterConfig, type WorkerSpec } from '../config/cluster.js';
import { parseTrainConfig, type TrainConfig } from '../config/train.js';
import { resumeOverrides, type ResumeOverrides } from '../config/train-flags.js';
import { parseAdapterWant } from '../webgpu.js';
import { initBackend, type BackendInfo } from '../backend.js';
import { readRunKeys } from '../wire/key-file.js';
import { loadRunDataCounts } from '../data/data-counts.js';
import { UsageError } from '../errors.js';
import { specOf } from '../model/alexnet.js';
import { checkMemory, perProcessBatch } from '../model/memory.js';
import type { ModelSpec } from '../model/spec.js';
import { MAX_MICRO_BATCHES } from '../wire/protocol.js';
import { planLayout, type LayoutName, type Placement } from '../parallel/layouts.js';
import { resolveHosts } from './resolve-hosts.js';

export type Mode = LayoutName;

/** What a run is asked to be: the part of train()'s options that preflight checks. */
export interface RunRequest {
  config: TrainConfig;
  /** run directory: metrics.jsonl and the checkpoint */
  outDir: string;
  /** continue from the checkpoint in outDir (its saved config wins) */
  resume?: boolean;
  /**
   * on resume: the config keys the command line gives; where the run computes,
   * reads its data and how often it saves are taken (said aloud), anything
   * else must equal the saved config (train-flags.ts)
   */
  resumeGiven?: Partial<TrainConfig>;
  /** single (default without a cluster), data (default with one), model or hybrid (parallel/layouts.ts) */
  mode?: Mode;
  /** data and model modes: the cluster and the workers to start on it */
  cluster?: ClusterConfig;
  workers?: WorkerSpec[];
  /** model mode: replicas of each tower (a grid of replicas × towers workers) */
  replicas?: number;
  /** model mode: pipelined micro-batches per step */
  microBatches?: number;
  /** data mode: start bucket reductions while backward runs (default true) */
  overlap?: boolean;
  /** allow "security": "none" with non-loopback hosts (plain TCP on a network the user trusts) */
  insecure?: boolean;
}

/** Checks what a mode needs of the config and the cluster before anything starts: its workers and placement. */
function checkMode(mode: Mode, cfg: TrainConfig, spec: ModelSpec, opts: RunRequest): { workers: WorkerSpec[]; placement: Placement } {
  if (mode === 'single') return { workers: [], placement: planLayout('single', cfg, spec, 1, opts) };
  if (opts.cluster === undefined) throw new UsageError(`--mode ${mode} needs a cluster config`);
  const workers = opts.workers ?? opts.cluster.workers;
  checkSecurity(opts.cluster, opts.insecure ?? false);
  const micro = opts.microBatches ?? 1;
  if (!Number.isInteger(micro) || micro < 1 || micro > MAX_MICRO_BATCHES) throw new UsageError(`--micro-batches: expected an integer in 1..${MAX_MICRO_BATCHES}, got ${micro}`);
  return { workers, placement: planLayout(mode, cfg, spec, workers.length, opts) };
}

/** What preflight found: everything the run needs to know before anything is created or started. */
export interface Preflight {
  saved: CheckpointState | undefined;
  cfg: TrainConfig;
  spec: ModelSpec;
  mode: Mode;
  workers: WorkerSpec[];
  placement: Placement;
  stepsPerEpoch: number;
  /** single mode: the backend, already started (a backend that is missing is bad input, found here) */
  backend?: BackendInfo;
}

/**
 * Every check of the run's input that can be made before anything is
 * created or started: the checkpoint to resume, the config against the mode
 * and the cluster, the data files, the memory the net needs, every host name.
 * Each failure is a UsageError (exit 2) and leaves nothing behind.
 */
export async function preflight(opts: RunRequest, log: (line: string) => void): Promise<Preflight> {
  const saved = opts.resume ? readCheckpointState(opts.outDir) : undefined;
  const cfg = saved !== undefined ? resumedConfig(saved.config, resumeOverrides(opts.outDir, saved.config, opts.resumeGiven ?? {}), log) : opts.config;
  if (cfg.adapter !== undefined) parseAdapterWant(cfg.adapter);
  const spec = specOf(cfg);
  const mode: Mode = opts.mode ?? (opts.cluster ? 'data' : 'single');
  const { workers, placement } = checkMode(mode, cfg, spec, opts);
  // A tower of the split holds 1 of the net's towers; a replica or one process all of them. Checked for
  // the processes on this host (a remote host's memory is its own: its workers find out there).
  const local = workers.filter((w) => isLocal(w.host));
  const here = mode === 'single' ? { count: 1, gpu: true } : { count: local.length, gpu: local.some((w) => w.device !== 'cpu') };
  // Hybrid is checked as a replica: that over-counts its fc weights (it holds 1/N of them) and under-counts its
  // fc activations (the head runs on the whole batch); the conv layers' activations, which dominate, are counted right.)
  if (here.count > 0) checkMemory(spec, cfg, perProcessBatch(mode, cfg.batch, workers.length, placement.replicas), mode === 'model' ? 1 : spec.towers, here);
  const counts = loadRunDataCounts(cfg);
  const { available } = counts;
  if (cfg.trainSamples > available.train) log(`splitnet: --train-samples ${cfg.trainSamples} is more than the data set's ${available.train} training images: training on all of them`);
  if (cfg.testSamples > available.test) log(`splitnet: --test-samples ${cfg.testSamples} is more than the data set's ${available.test} test images: evaluating on all of them`);
  const stepsPerEpoch = Math.floor(counts.train / cfg.batch);
  if (stepsPerEpoch === 0) throw new UsageError(`batch ${cfg.batch} is larger than the ${counts.train} training samples`);
  if (opts.cluster !== undefined && mode !== 'single') {
    await resolveHosts(opts.cluster, workers);
    if (opts.cluster.security === 'curve' && opts.cluster.keys !== undefined) readRunKeys(opts.cluster.keys, workers.length);
  }
  const backend = mode === 'single' ? await initBackend(cfg.backend, parseAdapterWant(cfg.adapter ?? 'hardware')) : undefined;
  return { saved, cfg, spec, mode, workers, placement, stepsPerEpoch, ...(backend ? { backend } : {}) };
}

/** The saved config, with the overrides a resume allows, each said aloud where it changes something. */
function resumedConfig(saved: TrainConfig, overrides: ResumeOverrides, log: (line: string) => void): TrainConfig {
  const cfg = { ...saved };
  for (const [key, value] of Object.entries(overrides) as Array<[keyof ResumeOverrides, string | number | undefined]>) {
    if (value === undefined || value === saved[key]) continue;
    log(`splitnet: resuming with ${key} ${value} (the run was saved with ${saved[key] ?? 'none'})`);
    (cfg as Record<string, unknown>)[key] = value;
  }
  return parseTrainConfig(cfg, 'resumed config');
}

