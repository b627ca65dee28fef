/**
 * How a run trains, behind one interface. The loop (run/loop.ts) calls these
 * and nothing else; it does not know whether the step runs here, in one
 * process per tower, or on N replicas.
 *
 *   single          the whole net in this process (parallel/single.ts)
 *   data-parallel   one replica per worker (parallel/data-parallel.ts)
 *   model-parallel  one tower per worker, rows of towers replicated (parallel/model-parallel.ts)
 *   hybrid          conv layers replicated, fc units split (parallel/hybrid.ts)
 *   a cluster       the coordinator (run/coordinator.ts): fans each call out
 *                   to its workers' strategies and combines their replies
 *                   with the layout's `Combine` (parallel/combine.ts)
 *
 * Every call is asynchronous; the step is addressed by (epoch, step): each
 * process builds its own batch (or shard) from the run's keyed data order.
 */
import type { TrainState } from '../checkpoint/checkpoint.js';

export interface StepInput {
  globalStep: number;
  epoch: number;
  step: number;
  lr: number;
  /** also report a checksum of the replicated weights (the coordinator compares replicas'; a layout without replicas reports none) */
  checksum?: boolean;
  /** a layout with a ring (data, hybrid's conv layers): start each gradient bucket's reduction while backward still runs (default) */
  overlap?: boolean;
}

export interface StepResult {
  /** mean loss over the samples this strategy trained on */
  loss: number;
  samples: number;
  /** forward, backward and update, minus `waitMs` */
  computeMs: number;
  /** waiting on a peer: all-reduce time not hidden behind backward, or cross-link waits */
  waitMs: number;
  /** bytes sent to peers during the step */
  bytesSent: number;
  checksum?: string;
  /** live backend tensors after the step (flat from the second step on, or something leaks) */
  tensors: number;
  /** a cluster: what each worker reported, by rank */
  workers?: StepResult[];
  /** where the time went and what moved, for splitnet compare */
  detail?: StepDetail;
}

/** A stretch of a step on one process's timeline, in ms from the step's start ('conv3 forward', 'send bucket 0', 'sgd'; see step-timing.ts). */
export interface StepSpan { cat: 'compute' | 'send' | 'wait' | 'optimizer'; name: string; startMs: number; durMs: number }

/**
 * The step's time beyond compute and wait, its traffic and its memory.
 * sendMs and optimizerMs are main-thread time inside StepResult.computeMs:
 * the step's wall time is (computeMs − sendMs − optimizerMs) of compute,
 * plus sendMs, optimizerMs and waitMs.
 */
export interface StepDetail {
  sendMs: number;
  optimizerMs: number;
  bytesReceived: number;
  /** bytes sent by link ('conv3', 'fc6', …) or bucket ('bucket 0', …) */
  sentByLink: Record<string, number>;
  /** process resident set at the step's end, bytes */
  rssBytes: number;
  /** the backend's tensor memory with the step's gradients alive (its peak), bytes */
  backendBytes: number;
  /**
   * CPU time the worker process used during the step, ms, all its threads
   * together (the main thread's compute, libzmq's I/O threads encrypting and
   * moving frames, the backend's own threads): beside the step's wall time
   * it says how much of the machine a worker takes. Set by the worker
   * process around the strategy's step.
   */
  cpuMs?: number;
  spans: StepSpan[];
}

export interface EvalResult {
  correct: number;
  /** summed (not mean) loss */
  lossSum: number;
  samples: number;
}

export interface Strategy {
  step(s: StepInput): Promise<StepResult>;
  /** test-set accuracy and loss (no dropout) */
  evaluate(epoch: number): Promise<EvalResult>;
  /** parameters and momentum buffers, in our layout */
  state(): Promise<TrainState>;
  /** resumes from a checkpoint's state */
  load(state: TrainState): Promise<void>;
  close(): Promise<void>;
}

/** How a cluster merges its workers' replies to one call, for one mode. */
export interface Combine {
  step(results: StepResult[]): StepResult;
  evaluate(results: EvalResult[]): EvalResult;
  /** which workers' state replies make the whole state (all of them take part in the call) */
  stateHolders(world: number): number[];
  /** the part of a whole state that worker `rank` loads */
  shareOf(state: TrainState, rank: number): TrainState;
}

/** FNV-1a over the 32-bit words of `arrays`: a cheap check that replicas hold the same weights. */
export function checksumOf(arrays: Iterable<Float32Array>): string {
  let h = 0x811c9dc5;
  for (const a of arrays) {
    const words = new Uint32Array(a.buffer, a.byteOffset, a.length);
    for (let i = 0; i < words.length; i++) h = Math.imul(h ^ words[i]!, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}
