/**
 * The coordinator: a Strategy whose work runs in worker processes. It starts
 * one worker per device, hands out the config, and then only fans each call
 * (step, evaluate, state, load) out to every worker and their replies back
 * in, merged with the mode's Combine. Epochs, checkpoints and progress are
 * the loop's (run/loop.ts), as in one process.
 *
 * When anything fails, everything stops: the first failure (a worker's
 * error, an exit, a disconnect, a malformed message, a missed deadline) fails
 * every pending call; close() then tells every worker to abort, terminates
 * them, and the error names the worker and the reason.
 */
import * as zmq from 'zeromq';
import { checkState, flattenState, mergeStates, type TrainState } from '../checkpoint/checkpoint.js';
import type { ClusterConfig, WorkerSpec } from '../config/cluster.js';
import type { TrainConfig } from '../config/train.js';
import { specOf } from '../model/alexnet.js';
import { parameterShapes } from '../model/build.js';
import { combineOf, describeLayout, placeWorker, type ClusterLayout, type Placement } from '../parallel/layouts.js';
import type { Combine, EvalResult, StepInput, StepResult, Strategy } from '../parallel/strategy.js';
import { decodeToCoordinator, encodeToWorker, type Decoded, type ToCoordinator } from '../wire/protocol.js';
import { checkHelloProof, curveServer, generateRunKeys, workerKeys, ZapGate, type RunKeys } from '../wire/curve.js';
import { readRunKeys } from '../wire/key-file.js';
import { createPrivateDir, removePrivateDir } from '../wire/private-dir.js';
import { Refusals } from '../wire/refusals.js';
import { SendQueue } from '../wire/send-queue.js';
import { bindAddress, countRefusedHandshakes, endpoint, Inbox, receiveLoop, socketOptions } from '../wire/transport.js';
import { startWorker, stopWorkers, type LaunchedWorker, type WorkerCommandOverride } from './launcher.js';

const firstWorkers = (keys: RunKeys, world: number): RunKeys => ({ coordinator: keys.coordinator, workers: keys.workers.slice(0, world) });

export class ClusterError extends Error {
  override readonly name = 'ClusterError';
}

export type ClusterMode = ClusterLayout;

export interface ClusterOptions {
  cluster: ClusterConfig;
  workers: WorkerSpec[];
  config: TrainConfig;
  mode: ClusterMode;
  /** where each layer lives (layouts.ts planLayout, checked before anything started) */
  placement: Placement;
  /** model mode: micro-batches per step */
  microBatches?: number;
  log: (line: string) => void;
  /** extra environment for local workers (tests) */
  workerEnv?: NodeJS.ProcessEnv;
  /** replaces a rank's worker command (tests: hung or hostile workers) */
  workerCommand?: WorkerCommandOverride;
  /** observes the run (tests: kill a worker at a given step) */
  onStarted?: (pids: number[]) => void;
  /** the run's CURVE keys (tests); default: fresh keys, or the config's key file */
  keys?: RunKeys;
}

type Msg = Decoded<ToCoordinator>;

/** A step deadline is at least timeouts.stepMs, and this many times the median of the last DEADLINE_WINDOW steps. */
const DEADLINE_MEDIANS = 10;
const DEADLINE_WINDOW = 101;
/** Evaluation walks the whole test set: its deadline is this many step deadlines. */
const EVAL_DEADLINES = 10;
/** How long telling a worker to stop may take before it is terminated anyway, ms. */
const TELL_MS = 500;

export class Cluster implements Strategy {
  readonly world: number;
  private readonly combine: Combine;
  private readonly router: zmq.Router;
  private readonly sends: SendQueue;
  /** undefined: plain TCP ("security": "none") */
  private readonly keys: RunKeys | undefined;
  private gate: ZapGate | undefined;
  /** this cluster's own ZAP domain: two clusters in one process (tests, compare) admit their own workers */
  private readonly zapDomain: string;
  /** what the workers refused from strangers, by reason, as each said goodbye */
  private readonly refusedByWorkers = new Refusals();
  /** what the coordinator's own router refused: messages under unknown ids, handshakes, hellos without their key */
  private readonly refusedHere = new Refusals();
  private readonly inboxes: Array<Inbox<Msg>>;
  private readonly launched: LaunchedWorker[] = [];
  private readonly stepMsSeen: number[] = [];
  private failure: ClusterError | undefined;
  private closing = false;
  /** transport ipc: the run's private socket directory, removed by close() (or, failing that, as the process exits) */
  private ipcDir: string | undefined;
  private readonly removeIpcDir = () => { if (this.ipcDir !== undefined) removePrivateDir(this.ipcDir); };
  /** where the run stands, for messages */
  where = 'start-up';

  private constructor(private readonly opts: ClusterOptions) {
    this.world = opts.workers.length;
    this.combine = combineOf(opts.placement);
    const { cluster } = opts;
    this.zapDomain = `coordinator@${cluster.coordinator.port}`;
    this.keys = cluster.security === 'none' ? undefined : opts.keys ?? (cluster.keys !== undefined ? firstWorkers(readRunKeys(cluster.keys, this.world), this.world) : generateRunKeys(this.world));
    this.router = new zmq.Router({
      ...socketOptions(cluster.heartbeat, cluster.maxMessageBytes), mandatory: true,
      ...(this.keys ? curveServer(this.keys.coordinator, this.zapDomain) : {}),
    });
    this.sends = new SendQueue(this.router);
    this.inboxes = opts.workers.map(() => new Inbox<Msg>());
  }

  /** Listens, starts the workers, waits for every hello, sends the setup, waits until all are ready. */
  static async start(opts: ClusterOptions): Promise<Cluster> {
    const c = new Cluster(opts);
    try {
      await c.launch();
      return c;
    } catch (err) {
      await c.close();
      throw c.failure ?? err;
    }
  }

  private name(rank: number): string {
    return this.launched[rank]?.describe() ?? `worker ${rank}`;
  }

  private fail(err: ClusterError): ClusterError {
    if (this.failure || this.closing) return this.failure ?? err;
    this.failure = err;
    for (const b of this.inboxes) b.fail(err);
    return err;
  }

  private enqueue(rank: number, msg: Parameters<typeof encodeToWorker>[0], tensors: Float32Array[] = []): Promise<void> {
    const frames = [Buffer.from(`w${rank}`), ...encodeToWorker(msg, tensors)];
    return this.sends.send(() => frames);
  }

  private async send(rank: number, msg: Parameters<typeof encodeToWorker>[0], tensors: Float32Array[] = []): Promise<void> {
    if (this.failure) throw this.failure;
    await this.enqueue(rank, msg, tensors)
      .catch((err: Error) => { throw this.fail(new ClusterError(`${this.name(rank)}: cannot be reached: ${err.message}`)); });
  }

  /** The next message of `kind` from `rank`; a worker's error, or anything else, fails the run. */
  private async expect<K extends ToCoordinator['kind']>(rank: number, kind: K, ms: number, what: string): Promise<Decoded<Extract<ToCoordinator, { kind: K }>>> {
    let m: Msg;
    try {
      m = await this.inboxes[rank]!.next(ms, `${this.name(rank)}: ${what}`);
    } catch (err) {
      throw this.failure ?? this.fail(new ClusterError((err as Error).message));
    }
    if (m.msg.kind === kind) return m as Decoded<Extract<ToCoordinator, { kind: K }>>;
    throw this.fail(new ClusterError(m.msg.kind === 'error'
      ? `${this.name(rank)} failed: ${m.msg.reason}`
      : `${this.name(rank)} sent '${m.msg.kind}' while ${what} was awaited`));
  }

  /** Sends `msg` to every worker and awaits every reply of `kind`. */
  private async all<K extends ToCoordinator['kind']>(msg: Parameters<typeof encodeToWorker>[0], kind: K, ms: number, what: string, tensors: Float32Array[] = []) {
    for (let r = 0; r < this.world; r++) await this.send(r, msg, tensors);
    return Promise.all(this.inboxes.map((_, r) => this.expect(r, kind, ms, what)));
  }

  private deadline(): number {
    const sorted = [...this.stepMsSeen].sort((a, b) => a - b);
    const median = sorted.length > 0 ? sorted[Math.floor(sorted.length / 2)]! : 0;
    return Math.max(this.opts.cluster.timeouts.stepMs, DEADLINE_MEDIANS * median);
  }

  private async launch(): Promise<void> {
    const { cluster, config: cfg, mode, log } = this.opts;
    const world = this.world;
    if (cluster.transport === 'ipc') {
      try {
        this.ipcDir = createPrivateDir();
      } catch (err) {
        throw this.fail(new ClusterError(`transport ipc: cannot make the run's private socket directory: ${(err as Error).message}`));
      }
      process.once('exit', this.removeIpcDir);
    }
    const coordinatorEp = endpoint(cluster.transport, cluster.coordinator.host, cluster.coordinator.port, this.ipcDir);
    const peers = this.opts.workers.map((w) => endpoint(cluster.transport, w.host, w.port, this.ipcDir));
    if (this.keys) {
      // The run's worker keys only; which key may be which worker is the hello's proof (below).
      this.gate = await ZapGate.admit(this.zapDomain, new Set(this.keys.workers.map((k) => k.publicKey)));
    }
    countRefusedHandshakes(this.router, (why) => this.refusedHere.count(why));
    try {
      await this.router.bind(bindAddress(coordinatorEp));
    } catch (err) {
      throw this.fail(new ClusterError(`the coordinator cannot listen on ${coordinatorEp}: ${(err as Error).message}`));
    }
    // A ROUTER's disconnect events do not say which peer left (and unknown
    // peers come and go): a worker's death is seen by its process's exit (the
    // local child, or the ssh session of a remote one) and by deadlines.
    receiveLoop(this.router, (frames) => {
      const id = frames[0]!.toString();
      const rank = /^w(\d+)$/.test(id) ? Number(id.slice(1)) : -1;
      if (rank < 0 || rank >= world) {
        // Only without CURVE can a stranger get this far: counted, not logged line by line (a flood would fill the log).
        this.refusedHere.count(`message from unknown peer id (not w0..w${world - 1})`);
        return;
      }
      let m: Msg;
      try {
        m = decodeToCoordinator(frames.slice(1), cluster.maxMessageBytes);
      } catch (err) {
        this.fail(new ClusterError(`${this.name(rank)} sent a malformed message: ${(err as Error).message}`));
        return;
      }
      // A worker's error fails the run now, not when its reply is next awaited. A worker that has
      // answered (its share of an evaluation, its tower's state) and then loses its peer (stopped:
      // only heartbeats say so) reports while the peer's reply is still awaited; unread, the report
      // waited for the reporter's exit (a local worker: it blamed that exit, not the peer) or, where
      // no exit is seen (a worker Slurm started), for the deadline: 10 step deadlines in an evaluation.
      if (m.msg.kind === 'error') this.fail(new ClusterError(`${this.name(rank)} failed: ${m.msg.reason}`));
      this.inboxes[rank]!.push(m);
    }, (err) => this.fail(new ClusterError(`coordinator socket: ${err.message}`)));
    this.opts.workers.forEach((w, rank) => {
      const secrets = JSON.stringify(this.keys ? { keys: workerKeys(this.keys, rank) } : {});
      const lw = startWorker(rank, w, cluster, coordinatorEp, this.opts.workerEnv, this.opts.workerCommand, secrets);
      this.launched.push(lw);
      void lw.exited.then(({ code, signal }) => {
        if (this.closing) return;
        const last = lw.stderrTail.length > 0 ? `: ${lw.stderrTail[lw.stderrTail.length - 1]}` : '';
        this.fail(new ClusterError(`${lw.describe()} exited ${signal ? `on ${signal}` : `with code ${code}`} at ${this.where}${last}`));
      });
    });
    this.opts.onStarted?.(this.launched.map((w) => w.child.pid ?? -1));
    const micro = this.opts.microBatches ?? 1;
    const wire = cfg.wire === 'bf16' ? ', bf16 on the wire' : '';
    log(describeLayout(this.opts.placement, cfg, micro, cluster.bucketBytes, (r) => this.launched[r]!.describe()) + wire);
    const register = cluster.timeouts.registerMs;
    const hellos = await Promise.all(this.inboxes.map((_, r) => this.expect(r, 'hello', register, `registration (hello) within ${register / 1000} s`)));
    hellos.forEach((h, r) => {
      if (h.msg.rank !== r) throw this.fail(new ClusterError(`${this.name(r)} registered as rank ${h.msg.rank}`));
      // The setup (and, on --resume, every weight) goes only to the holder of worker r's key.
      if (this.keys && (h.msg.proof === undefined || !checkHelloProof(this.keys.coordinator, this.keys.workers[r]!.publicKey, r, h.msg.proof))) {
        this.refusedHere.count(`a hello as w${r} without w${r}'s key`);
        throw this.fail(new ClusterError(`the hello as w${r} does not prove it holds worker ${r}'s key: another process of the run claimed its place (it was sent neither the setup nor any weight)`));
      }
    });
    for (let r = 0; r < world; r++) {
      await this.send(r, {
        kind: 'setup', rank: r, world, mode, replicas: mode === 'model' ? this.opts.placement.replicas : 1, microBatches: micro, train: cfg as unknown as Record<string, unknown>, peers,
        bucketBytes: cluster.bucketBytes, heartbeat: cluster.heartbeat, maxMessageBytes: cluster.maxMessageBytes,
        peerWaitMs: cluster.timeouts.stepMs,
      });
    }
    const readies = await Promise.all(this.inboxes.map((_, r) => this.expect(r, 'ready', register * 2, 'ready (model built)')));
    // One backend for all, or each worker's (workers may sit on different GPUs).
    const labels = readies.map((m) => m.msg.backend);
    const backends = new Set(labels).size === 1 ? `${labels[0]} backend` : labels.map((b, r) => `worker ${r}: ${b}`).join('; ');
    this.checkReplicas(readies.map((m) => m.msg.checksum), 'replicas start from different weights');
    const params = readies.map((m) => m.msg.params);
    const data = this.opts.placement.layout === 'data';
    log(`  ${new Set(params).size === 1 ? `${params[0]!.toLocaleString('en-US')} parameters per ${data ? 'replica' : 'worker'}` : params.map((n, r) => `worker ${r}: ${n.toLocaleString('en-US')} parameters`).join(', ')}` +
      `${data ? `, weights identical (checksum ${readies[0]!.msg.checksum})` : ''}, ${backends}`);
  }

  /** Workers that replicate parameters (a ring's members) must hold the same ones. */
  private checkReplicas(sums: Array<string | undefined>, what: string): void {
    const rings = new Set(sums.map((_, r) => placeWorker(this.opts.placement, r).ring.join(',')));
    for (const ring of rings) {
      const ranks = ring.split(',').map(Number);
      if (ranks.length < 2) continue;
      if (new Set(ranks.map((r) => sums[r])).size !== 1) throw this.fail(new ClusterError(`${what}: checksums ${ranks.map((r) => `worker ${r} ${sums[r]}`).join(', ')}`));
    }
  }

  async step(s: StepInput): Promise<StepResult> {
    this.where = `epoch ${s.epoch} step ${s.step}`;
    const t0 = performance.now();
    const done = await this.all({
      kind: 'step', globalStep: s.globalStep, epoch: s.epoch, step: s.step, lr: s.lr,
      checksum: s.checksum ?? false, overlap: s.overlap ?? true,
    }, 'stepDone', this.deadline(), `step ${s.globalStep}`);
    this.stepMsSeen.push(performance.now() - t0);
    if (this.stepMsSeen.length > DEADLINE_WINDOW) this.stepMsSeen.shift();
    const stale = done.findIndex((d) => d.msg.globalStep !== s.globalStep);
    if (stale >= 0) throw this.fail(new ClusterError(`${this.name(stale)} answered step ${s.globalStep} with step ${done[stale]!.msg.globalStep}`));
    try {
      return this.combine.step(done.map(({ msg: { loss, samples, computeMs, waitMs, bytesSent, liveTensors: tensors, checksum, detail } }) =>
        ({ loss, samples, computeMs, waitMs, bytesSent, tensors, ...(checksum !== undefined ? { checksum } : {}), ...(detail !== undefined ? { detail } : {}) })));
    } catch (err) {
      throw this.fail(new ClusterError(`at step ${s.globalStep}: ${(err as Error).message}`));
    }
  }

  async evaluate(epoch: number): Promise<EvalResult> {
    this.where = `evaluation of epoch ${epoch}`;
    const evs = await this.all({ kind: 'evaluate', epoch }, 'evalDone', this.deadline() * EVAL_DEADLINES, `evaluation of epoch ${epoch}`);
    const stale = evs.findIndex((e) => e.msg.epoch !== epoch);
    if (stale >= 0) throw this.fail(new ClusterError(`${this.name(stale)} answered the evaluation of epoch ${epoch} with epoch ${evs[stale]!.msg.epoch}`));
    return this.combine.evaluate(evs.map(({ msg: { correct, lossSum, samples } }) => ({ correct, lossSum, samples })));
  }

  /** Every worker takes part (a replica's momentum is sharded); the mode says whose replies make the state. */
  async state(): Promise<TrainState> {
    // A failure during the gather names the checkpoint, not the step before it.
    this.where = `the checkpoint after ${this.where.replace(/^the checkpoint after /, '')}`;
    const holders = this.combine.stateHolders(this.world);
    for (let r = 0; r < this.world; r++) await this.send(r, { kind: 'getState', reply: holders.includes(r) });
    const states = await Promise.all(this.inboxes.map((_, r) => this.expect(r, 'state', this.deadline(), 'the model state for a checkpoint')));
    const shapes = parameterShapes(specOf(this.opts.config));
    const state = mergeStates(holders.map((r) => states[r]!.msg.tensors.map((m, i) => ({ ...m, data: states[r]!.tensors[i]! }))), [...shapes.keys()]);
    try {
      checkState(state, shapes);
    } catch (err) {
      throw this.fail(new ClusterError(`the workers' state for a checkpoint: ${(err as Error).message}`));
    }
    return state;
  }

  /** Each worker gets its share: the whole state for a replica, its tower's half for a tower. */
  async load(state: TrainState): Promise<void> {
    this.where = 'loading the checkpoint';
    for (let r = 0; r < this.world; r++) {
      const flat = flattenState(this.combine.shareOf(state, r));
      await this.send(r, { kind: 'load', tensors: flat.map((t) => ({ name: t.name, shape: t.shape })) }, flat.map((t) => t.data));
    }
    const loaded = await Promise.all(this.inboxes.map((_, r) => this.expect(r, 'loaded', this.deadline(), 'loading the checkpoint')));
    this.checkReplicas(loaded.map((m) => m.msg.checksum), 'replicas loaded different weights');
  }

  /**
   * What this run refused from strangers, by reason: the coordinator's own
   * (its ZAP gate's handshakes, messages under unknown ids) and what each
   * worker said it refused as it left.
   */
  refusals(): Refusals {
    return new Refusals().add(this.refusedHere, 'coordinator: ').add(this.gate?.refused ?? [], 'coordinator: ').add(this.refusedByWorkers, 'workers: ');
  }

  /** The failure that ended the run, if any. */
  get failed(): ClusterError | undefined {
    return this.failure;
  }

  /** A clean shutdown when all went well, abort otherwise; then make sure nothing is left running. */
  async close(): Promise<void> {
    if (this.closing) return;
    const ok = this.failure === undefined;
    this.closing = true;
    const { cluster } = this.opts;
    for (let r = 0; r < this.launched.length; r++) {
      // Best effort, and never a wait without end: a stuck worker is killed below.
      const told = this.enqueue(r, ok ? { kind: 'shutdown' } : { kind: 'abort', reason: this.failure!.message }).catch(() => {});
      await Promise.race([told, new Promise((resolve) => setTimeout(resolve, TELL_MS))]);
    }
    const exits = Promise.all(this.launched.map((w) => w.exited));
    await Promise.race([exits, new Promise((r) => setTimeout(r, cluster.timeouts.shutdownGraceMs))]);
    await stopWorkers(this.launched, cluster.timeouts.shutdownGraceMs);
    for (const inbox of this.inboxes) {
      for (let m = inbox.take(); m !== undefined; m = inbox.take()) {
        if (m.msg.kind === 'bye') this.refusedByWorkers.add(Object.entries(m.msg.refused));
      }
    }
    const refused = this.refusals();
    if (refused.size > 0) this.opts.log(`  refused from strangers: ${refused.line()}`);
    this.router.close();
    this.gate?.release(this.zapDomain);
    // the workers are gone: nothing is bound in the directory any more
    this.removeIpcDir();
    process.off('exit', this.removeIpcDir);
  }

  /** Marks the run failed (the loop's own errors), so close() aborts rather than shuts down. */
  abort(reason: string): void {
    this.fail(new ClusterError(reason));
  }
}
