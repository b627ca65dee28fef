/**
 * The worker process (`splitnet worker`, started by the launcher, one per
 * device). It registers with the coordinator, opens its strategy (a
 * data-parallel replica or a model-parallel tower, on its communicator) and
 * then does what it is told, one command at a time, by calling that
 * strategy. It exits when told to, when the coordinator
 * disconnects (no orphans), or on any error, which it first reports to the
 * coordinator.
 */
import { hostname } from 'node:os';
import * as zmq from 'zeromq';
import { backendLabel, initBackend, type BackendChoice } from '../backend.js';
import { adapterFor } from '../webgpu.js';
import { flattenState, mergeStates, type TrainState } from '../checkpoint/checkpoint.js';
import { parseTrainConfig, type TrainConfig } from '../config/train.js';
import { loadRunData } from '../data/run-data.js';
import { parameterShapes } from '../model/build.js';
import { specOf } from '../model/alexnet.js';
import { openWorkerStrategy, placeWorker, planLayout, unclaimedBound, type Placement } from '../parallel/layouts.js';
import type { Strategy } from '../parallel/strategy.js';
import { Communicator, MAX_UNCLAIMED } from '../wire/communicator.js';
import { curveClient, helloProof, ZapGate, type WorkerKeys } from '../wire/curve.js';
import { decodeToWorker, encodeToCoordinator, MAX_STEP_LINKS, MAX_STEP_SPANS, type ToWorker } from '../wire/protocol.js';
import { Refusals } from '../wire/refusals.js';
import { SendQueue } from '../wire/send-queue.js';
import { checkEndpoint } from '../wire/private-dir.js';
import { Inbox, receiveLoop, socketOptions, watchOutgoing, type Heartbeat } from '../wire/transport.js';

export interface WorkerArgs {
  coordinator: string;
  rank: number;
  device: string;
  backend: BackendChoice;
  /** how long to wait for the coordinator's setup, ms */
  registerMs: number;
  /** ZMTP heartbeats on the link to the coordinator: the cluster's, given before it connects (libzmq applies them per connection) */
  heartbeat?: Heartbeat;
  /** CURVE keys (from the launcher, on stdin); undefined: plain TCP */
  keys?: WorkerKeys;
  /** aborted when the launcher is gone (its pipe to this worker closed): stop at once */
  launcherGone?: AbortSignal;
}

type Setup = Extract<ToWorker, { kind: 'setup' }>;

/** Why this worker stops: reported to the coordinator before exiting. */
class WorkerFailure extends Error {}

/** How long a worker's last message (usually its error report) may take to leave before the socket closes, ms. */
const LINGER_MS = 1000;
/** How long a failing worker waits for its error report to be sent, ms. */
const ERROR_REPORT_MS = 500;
/** How long a worker waits for the next command: the coordinator's own deadlines end a stuck run first, ms. */
const IDLE_MS = 24 * 3600_000;
/**
 * A peer lost between commands is reported after this long, ms, unless a
 * shutdown arrives meanwhile: at the end of a run the workers leave one by
 * one, and a peer that has already left is then no fault.
 */
const BROKEN_LINK_GRACE_MS = 1000;
/**
 * A worker whose coordinator or launcher is gone exits within this, ms, even
 * if something still holds its event loop (a send that can never finish).
 */
const ORPHAN_EXIT_MS = 3000;
/** ZMTP heartbeats on the link to the coordinator when none are given: a ping a second, the coordinator gone after 15 s of silence. */
const DEFAULT_HEARTBEAT = { intervalMs: 1000, timeoutMs: 15_000 };
/** The largest message accepted before the setup says the cluster's limit (1 GiB, the config's default), bytes. */
const REGISTER_MAX_BYTES = 2 ** 30;

interface Opened {
  strategy: Strategy;
  /** the parameters this worker holds (its ready message counts them) */
  model: { params: Map<string, { size: number }> };
  /** of the weights it replicates; undefined where it holds weights no other worker holds */
  checksum: () => string | undefined;
  dropped: Refusals;
  /** the net's parameter names in order: a loaded state is sorted by them */
  order: string[];
}

export async function runWorker(args: WorkerArgs): Promise<number> {
  const dealer = new zmq.Dealer({
    routingId: `w${args.rank}`, ...socketOptions(args.heartbeat ?? DEFAULT_HEARTBEAT, REGISTER_MAX_BYTES), linger: LINGER_MS,
    ...(args.keys ? curveClient(args.keys.own, args.keys.coordinator) : {}),
  });
  const fromCoordinator = new Inbox<{ msg: ToWorker; tensors: Float32Array[] }>();
  let maxBytes = REGISTER_MAX_BYTES;
  // Every path that reports to the coordinator goes through one queue: no two race a send.
  const toCoordinator = new SendQueue(dealer);
  const sendUp = (msg: Parameters<typeof encodeToCoordinator>[0], tensors: Float32Array[] = []): Promise<void> =>
    toCoordinator.send(() => encodeToCoordinator(msg, tensors));
  let exitCode = 1;
  let coordinatorGone = false;
  let shuttingDown = false;
  let opened: Opened | undefined;
  // Gone (the coordinator disconnected, or the launcher's pipe closed): nothing
  // to work for. Every wait fails now (the peers' too, so a step in flight
  // ends), and the process exits even if a send could never finish: no orphans.
  let finished = false;
  const orphaned = (why: string) => {
    if (coordinatorGone || finished) return; // after a clean end the pipe closing is expected
    coordinatorGone = true;
    fromCoordinator.fail(new WorkerFailure(why));
    void opened?.strategy.close();
    setImmediate(() => { if (!dealer.closed) dealer.close(); });
    setTimeout(() => {
      process.stderr.write(`worker ${args.rank}: ${why}; exiting\n`);
      process.exit(1);
    }, ORPHAN_EXIT_MS).unref();
  };
  args.launcherGone?.addEventListener('abort', () => orphaned('the launcher is gone (its pipe to this worker closed)'), { once: true });
  if (args.launcherGone?.aborted) orphaned('the launcher is gone (its pipe to this worker closed)');
  // A communicator broken while no command runs (e.g. a peer stopped during
  // another worker's evaluation) is told to the coordinator at once, not at the next step.
  const linkBroken = (err: Error) => {
    setTimeout(() => {
      if (!shuttingDown && !coordinatorGone) fromCoordinator.fail(new WorkerFailure(err.message));
    }, BROKEN_LINK_GRACE_MS).unref();
  };
  try {
    // The coordinator is gone (it exited, crashed or was killed, or its heartbeats stopped).
    watchOutgoing(dealer, `coordinator ${args.coordinator}`, (why) => orphaned(why));
    dealer.connect(checkEndpoint(args.coordinator)); // ipc: only inside the run's private directory
    receiveLoop(dealer, (frames) => {
      try {
        fromCoordinator.push(decodeToWorker(frames, maxBytes));
      } catch (err) {
        // Refuse and report; a coordinator that sends garbage cannot run this worker.
        fromCoordinator.fail(new WorkerFailure(`refused a message from the coordinator: ${(err as Error).message}`));
      }
    }, (err) => fromCoordinator.fail(err));

    await sendUp({
      kind: 'hello', rank: args.rank, pid: process.pid, host: hostname(), device: args.device,
      ...(args.keys ? { proof: helloProof(args.keys.own, args.keys.coordinator, args.rank) } : {}),
    });
    const first = await fromCoordinator.next(args.registerMs, `setup from the coordinator at ${args.coordinator}`);
    if (first.msg.kind !== 'setup') throw new WorkerFailure(`expected 'setup' first, got '${first.msg.kind}'`);
    const setup = first.msg;
    maxBytes = setup.maxMessageBytes;
    const cfg = parseTrainConfig(setup.train, 'setup.train');
    const backend = await initBackend(cfg.backend === 'auto' ? args.backend : cfg.backend, adapterFor(args.device, cfg.adapter));
    opened = await openStrategy(args, setup, cfg, linkBroken);
    if (coordinatorGone) throw new WorkerFailure('the coordinator left during the set-up');
    const { strategy } = opened;
    const checksum = opened.checksum();
    await sendUp({ kind: 'ready', ...(checksum !== undefined ? { checksum } : {}), backend: backendLabel(backend), params: [...opened.model.params.values()].reduce((n, v) => n + v.size, 0) });

    for (;;) {
      const { msg, tensors } = await fromCoordinator.next(IDLE_MS, 'the next command');
      switch (msg.kind) {
        case 'step': {
          const cpuBefore = process.cpuUsage();
          const r = await strategy.step(msg);
          const cpu = process.cpuUsage(cpuBefore);
          // A loss that is not a number cannot travel (the protocol refuses it): say what it means here.
          if (!Number.isFinite(r.loss)) throw new WorkerFailure(`loss is ${r.loss} at epoch ${msg.epoch} step ${msg.step}: lower --lr`);
          await sendUp({
            kind: 'stepDone', globalStep: msg.globalStep, loss: r.loss, samples: r.samples, computeMs: r.computeMs,
            waitMs: r.waitMs, bytesSent: r.bytesSent, liveTensors: r.tensors, ...(r.checksum !== undefined ? { checksum: r.checksum } : {}),
            // Diagnostics must never fail a step: beyond what a report may carry, the first spans go and the per-link split is left out.
            ...(r.detail !== undefined ? {
              detail: {
                ...r.detail, cpuMs: (cpu.user + cpu.system) / 1000, spans: r.detail.spans.slice(0, MAX_STEP_SPANS),
                sentByLink: Object.keys(r.detail.sentByLink).length <= MAX_STEP_LINKS ? r.detail.sentByLink : {},
              },
            } : {}),
          });
          break;
        }
        case 'evaluate':
          await sendUp({ kind: 'evalDone', epoch: msg.epoch, ...(await strategy.evaluate(msg.epoch)) });
          break;
        case 'getState': {
          const state = await strategy.state();
          const flat = msg.reply ? flattenState(state) : [];
          await sendUp({ kind: 'state', tensors: flat.map((t) => ({ name: t.name, shape: t.shape })) }, flat.map((t) => t.data));
          break;
        }
        case 'load': {
          const state: TrainState = mergeStates([msg.tensors.map((m, i) => ({ ...m, data: tensors[i]! }))], opened.order);
          await strategy.load(state);
          const checksum = opened.checksum();
          await sendUp({ kind: 'loaded', ...(checksum !== undefined ? { checksum } : {}) });
          break;
        }
        case 'shutdown':
          shuttingDown = true;
          await sendUp({ kind: 'bye', refused: refusals(opened) });
          exitCode = 0;
          return exitCode;
        case 'abort':
          shuttingDown = true;
          return 1;
        case 'setup':
          throw new WorkerFailure("a second 'setup' during training");
        default: {
          const never: never = msg;
          throw new WorkerFailure(`unknown command ${JSON.stringify(never)}`);
        }
      }
    }
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    process.stderr.write(`worker ${args.rank}: ${reason}\n`);
    if (!coordinatorGone && !dealer.closed) {
      try {
        await Promise.race([sendUp({ kind: 'error', reason }), new Promise((r) => setTimeout(r, ERROR_REPORT_MS))]);
      } catch { /* the coordinator may be gone: nothing more to tell */ }
    }
    return exitCode === 0 ? 1 : exitCode;
  } finally {
    finished = true;
    await opened?.strategy.close(); // closes its peer sockets
    if (!dealer.closed) dealer.close();
    ZapGate.running()?.close(); // its socket would keep the process alive
  }
}

/** Builds this worker's replica or tower and opens its communicator. */
async function openStrategy(args: WorkerArgs, setup: Setup, cfg: TrainConfig, onBroken: (err: Error) => void): Promise<Opened> {
  if (setup.rank !== args.rank) throw new WorkerFailure(`setup for rank ${setup.rank} sent to worker ${args.rank}`);
  if (setup.peers.length !== setup.world) throw new WorkerFailure(`setup lists ${setup.peers.length} peers for a world of ${setup.world}`);
  if (setup.rank >= setup.world) throw new WorkerFailure(`setup for rank ${setup.rank} in a world of ${setup.world}`);
  const { rank, world } = setup;
  if (args.keys && args.keys.workers.length < world) throw new WorkerFailure(`keys for ${args.keys.workers.length} workers, the setup says ${world}`);
  // The coordinator checked the layout before it started anyone; a worker checks its setup again (it may come from anywhere).
  let placement: Placement;
  try {
    // 1 is the protocol's default for both: only another value is a request planLayout may refuse
    placement = planLayout(setup.mode, cfg, specOf(cfg), world, {
      ...(setup.replicas !== 1 || setup.mode === 'model' ? { replicas: setup.replicas } : {}),
      ...(setup.microBatches !== 1 || setup.mode === 'model' ? { microBatches: setup.microBatches } : {}),
    });
  } catch (err) {
    throw new WorkerFailure(`setup: ${(err as Error).message}`);
  }
  const place = placeWorker(placement, rank);
  const data = loadRunData(cfg);
  const comm = await Communicator.open({
    rank, world, peers: setup.peers, talksTo: place.talksTo, heartbeat: setup.heartbeat, maxMessageBytes: setup.maxMessageBytes, waitMs: setup.peerWaitMs, onBroken,
    maxUnclaimed: unclaimedBound(placement, specOf(cfg), setup.microBatches, MAX_UNCLAIMED),
    ...(args.keys ? { keys: { own: args.keys.own, workers: args.keys.workers } } : {}),
  });
  try {
    const strategy = await openWorkerStrategy({ cfg, data, links: comm, place, placement, microBatches: setup.microBatches, bucketBytes: setup.bucketBytes });
    return { strategy, model: strategy.model, checksum: () => strategy.checksum(), dropped: comm.dropped, order: [...parameterShapes(specOf(cfg)).keys()] };
  } catch (err) {
    comm.close();
    throw err;
  }
}

/** What this worker refused from strangers: plain-TCP messages dropped, and CURVE handshakes its ZAP gate refused. */
function refusals(opened: Opened | undefined): Record<string, number> {
  const all = new Refusals().add(opened?.dropped ?? []).add(ZapGate.running()?.refused ?? []);
  return Object.fromEntries([...all].map(([why, n]) => [why.slice(0, 160), n]));
}
