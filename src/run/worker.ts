/**
 * The worker process (`splitnet worker`, started by the launcher, one per
 * device). It registers with the coordinator, builds its replica, links to its
 * ring neighbours and then does what it is told, one command at a time. It
 * exits when told to, when the coordinator disconnects (no orphans), or on
 * any error, which it first reports to the coordinator.
 */
import * as tf from '@tensorflow/tfjs';
import { hostname } from 'node:os';
import * as zmq from 'zeromq';
import { initBackend, type BackendChoice } from '../backend.js';
import { loadIntoModel, type PlainTensor } from '../checkpoint/checkpoint.js';
import { epochOrder, makeBatch } from '../data/batches.js';
import { buildModel, countParams, type Model } from '../model/build.js';
import { DataParallelReplica, weightChecksum } from '../parallel/data-parallel.js';
import { parseTrainConfig, type TrainConfig, specOf } from '../config/train.js';
import { loadRunData, type RunData } from '../data/run-data.js';
import { evaluate } from '../parallel/evaluate.js';
import { Sgd } from '../model/sgd.js';
import { decodeToPeer, decodeToWorker, encodeToCoordinator, encodeToPeer, type ToWorker } from '../wire/protocol.js';
import { RingAllReduce } from '../wire/ring-allreduce.js';
import { openModelSession } from './model-session.js';
import { modelState, type Session } from './session.js';
import { bindAddress, Inbox, receiveLoop, socketOptions } from '../wire/transport.js';

export interface WorkerArgs {
  coordinator: string;
  rank: number;
  device: string;
  backend: BackendChoice;
  /** how long to wait for the coordinator's setup, ms */
  registerMs: number;
}

type Setup = Extract<ToWorker, { kind: 'setup' }>;

/** Why this worker stops: reported to the coordinator before exiting. */
class WorkerFailure extends Error {}

export async function runWorker(args: WorkerArgs): Promise<number> {
  // linger: a worker's last message is usually its error report; closing must not drop it.
  const dealer = new zmq.Dealer({ routingId: `w${args.rank}`, ...socketOptions({ intervalMs: 1000, timeoutMs: 15_000 }), linger: 1000 });
  const fromCoordinator = new Inbox<{ msg: ToWorker; tensors: Float32Array[] }>();
  let maxBytes = 2 ** 30;
  const sendUp = (msg: Parameters<typeof encodeToCoordinator>[0], tensors: Float32Array[] = []) =>
    dealer.send(encodeToCoordinator(msg, tensors));
  const sockets: zmq.Socket[] = [dealer];
  let exitCode = 1;
  let coordinatorGone = false;
  let session: Session | undefined;
  try {
    dealer.connect(args.coordinator);
    // The coordinator is gone (it exited, crashed or was killed): there is no
    // one to work for. Closing the socket also ends a send that would wait for
    // it forever, so the worker exits instead of lingering as an orphan.
    dealer.events.on('disconnect', () => {
      fromCoordinator.fail(new WorkerFailure(`coordinator ${args.coordinator} disconnected`));
      coordinatorGone = true;
      setImmediate(() => dealer.close());
    });
    receiveLoop(dealer, (frames) => {
      try {
        fromCoordinator.push(decodeToWorker(frames, maxBytes));
      } catch (err) {
        // Refuse and report; a coordinator that sends garbage cannot run this worker.
        fromCoordinator.fail(new WorkerFailure(`refused a message from the coordinator: ${(err as Error).message}`));
      }
    }, (err) => fromCoordinator.fail(err));

    await sendUp({ kind: 'hello', rank: args.rank, pid: process.pid, host: hostname(), device: args.device });
    const first = await fromCoordinator.next(args.registerMs, `setup from the coordinator at ${args.coordinator}`);
    if (first.msg.kind !== 'setup') throw new WorkerFailure(`expected 'setup' first, got '${first.msg.kind}'`);
    const setup = first.msg;
    maxBytes = setup.maxMessageBytes;
    const cfg = parseTrainConfig(setup.train, 'setup.train');
    session = await prepare(args, setup, cfg, first.tensors, sockets);
    await sendUp({ kind: 'ready', checksum: weightChecksum(session.model), backend: session.backendName, params: countParams(session.model) });

    for (;;) {
      const { msg } = await fromCoordinator.next(24 * 3600_000, 'the next command');
      switch (msg.kind) {
        case 'step': {
          const r = await session.step(msg);
          await sendUp(r);
          break;
        }
        case 'evaluate': {
          await sendUp(session.evaluateShard(msg.epoch));
          break;
        }
        case 'getState': {
          const { meta, data } = session.state();
          await sendUp({ kind: 'state', tensors: meta }, data);
          break;
        }
        case 'shutdown':
          await sendUp({ kind: 'bye' });
          exitCode = 0;
          return exitCode;
        case 'abort':
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
        await Promise.race([sendUp({ kind: 'error', reason }), new Promise((r) => setTimeout(r, 500))]);
      } catch { /* the coordinator may be gone: nothing more to tell */ }
    }
    return exitCode === 0 ? 1 : exitCode;
  } finally {
    session?.close(); // a model-parallel link's thread would keep the process alive
    for (const s of sockets) if (!s.closed) s.close();
  }
}

/** Loads the resumed tensors this worker's model owns (a tower owns half of them). */
function resumeLoader(setup: Setup, tensors: Float32Array[]): (model: Model, opt: Sgd) => void {
  return (model, opt) => {
    if (setup.tensors.length === 0) return;
    const params: PlainTensor[] = [];
    const momentum: PlainTensor[] = [];
    setup.tensors.forEach((m, i) => {
      const name = m.name.replace(/^momentum\./, '');
      if (!model.params.has(name)) return;
      (m.name.startsWith('momentum.') ? momentum : params).push({ name, shape: m.shape, data: tensors[i]! });
    });
    if (params.length !== model.params.size) throw new WorkerFailure(`setup carries ${params.length} of this model's ${model.params.size} parameters`);
    loadIntoModel(model, opt, { params, momentum });
  };
}

/** Builds the replica or tower, loads resumed weights, opens the peer links. */
async function prepare(args: WorkerArgs, setup: Setup, cfg: TrainConfig, tensors: Float32Array[], sockets: zmq.Socket[]): Promise<Session> {
  if (setup.rank !== args.rank) throw new WorkerFailure(`setup for rank ${setup.rank} sent to worker ${args.rank}`);
  if (setup.peers.length !== setup.world) throw new WorkerFailure(`setup lists ${setup.peers.length} peers for a world of ${setup.world}`);
  if (setup.mode === 'model') {
    const backend = await initBackend(cfg.backend === 'auto' ? args.backend : cfg.backend);
    return openModelSession(setup, cfg, backend.name, resumeLoader(setup, tensors));
  }
  if (cfg.batch % setup.world !== 0) throw new WorkerFailure(`global batch ${cfg.batch} does not split evenly over ${setup.world} replicas`);
  const backend = await initBackend(cfg.backend === 'auto' ? args.backend : cfg.backend);
  const data: RunData = loadRunData(cfg);
  const spec = specOf(cfg);
  const model = buildModel(spec, { seed: cfg.seed });
  const opt = new Sgd({ lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
  resumeLoader(setup, tensors)(model, opt);

  // Ring links: receive from rank-1 on our own PULL, send to rank+1 over a PUSH.
  const world = setup.world;
  const opts = socketOptions(setup.heartbeat);
  const pull = new zmq.Pull(opts);
  const push = new zmq.Push({ ...opts, sendHighWaterMark: 0 });
  sockets.push(pull, push);
  const peerFailure: { err?: Error } = {};
  const ring = new RingAllReduce(args.rank, world, (msg, chunk) => {
    // Not awaited: zeromq queues the frames synchronously and libzmq's I/O
    // thread sends them, also while a synchronous backward pass runs.
    push.send(encodeToPeer(msg, [chunk])).catch((err: Error) => ring.fail(new WorkerFailure(`sending to worker ${(args.rank + 1) % world}: ${err.message}`)));
  }, 10 * 60_000);
  const replica = new DataParallelReplica(model, opt, ring, setup.bucketBytes);
  if (world > 1) {
    await pull.bind(bindAddress(setup.peers[args.rank]!));
    push.connect(setup.peers[(args.rank + 1) % world]!);
    const pred = (args.rank - 1 + world) % world;
    receiveLoop(pull, (frames) => {
      try {
        const { msg, tensors: [chunk] } = decodeToPeer(frames, setup.maxMessageBytes);
        if (msg.kind !== 'ring') throw new Error(`'${msg.kind}' message in data-parallel mode`);
        ring.deliver(msg, chunk!);
      } catch (err) {
        const e = new WorkerFailure(`refused a message from worker ${pred}: ${(err as Error).message}`);
        peerFailure.err = e;
        ring.fail(e);
      }
    }, (err) => ring.fail(err));
    pull.events.on('disconnect', () => ring.fail(new WorkerFailure(`worker ${pred} disconnected`)));
  }
  const shard = cfg.batch / world;
  const stepsPerEpoch = Math.floor(data.train.count / cfg.batch);
  let order: { epoch: number; samples: Uint32Array } = { epoch: -1, samples: new Uint32Array(0) };

  return {
    model,
    backendName: backend.name,
    async step(msg) {
      if (msg.step >= stepsPerEpoch) throw new WorkerFailure(`step ${msg.step} of epoch ${msg.epoch}: an epoch has ${stepsPerEpoch}`);
      if (order.epoch !== msg.epoch) order = { epoch: msg.epoch, samples: epochOrder(data.train.count, cfg.seed, msg.epoch) };
      const first = msg.step * cfg.batch + args.rank * shard;
      const { x, y } = makeBatch(data.train, order.samples.subarray(first, first + shard), {
        resolution: cfg.resolution, channels: cfg.channels,
        ...(cfg.augment ? { augment: { seed: cfg.seed, epoch: msg.epoch } } : {}),
      });
      opt.opts.lr = msg.lr;
      const bytesBefore = ring.bytesSent;
      try {
        const r = await replica.step(x, y, msg.globalStep, { seed: cfg.seed, step: msg.globalStep, firstSample: args.rank * shard }, msg.overlap);
        if (peerFailure.err) throw peerFailure.err;
        return {
          kind: 'stepDone', globalStep: msg.globalStep, loss: r.loss, samples: shard, computeMs: r.computeMs,
          allreduceWaitMs: r.allreduceWaitMs, bytesSent: ring.bytesSent - bytesBefore,
          ...(msg.checksum ? { checksum: weightChecksum(model) } : {}),
        };
      } finally {
        tf.dispose([x, y]);
      }
    },
    evaluateShard(epoch) {
      const n = data.test.count;
      const begin = Math.floor((args.rank * n) / world);
      const end = Math.floor(((args.rank + 1) * n) / world);
      const part = { ...data.test, count: end - begin, images: data.test.images.subarray(begin * 784, end * 784), labels: data.test.labels.subarray(begin, end) };
      const ev = evaluate(model, part, { resolution: cfg.resolution, channels: cfg.channels, batch: cfg.evalBatch, limit: 0 });
      return { kind: 'evalDone', epoch, correct: Math.round(ev.accuracy * ev.samples), lossSum: ev.loss * ev.samples, samples: ev.samples };
    },
    state: () => modelState(model, opt),
    close() { /* its sockets are in `sockets` */ },
  };
}
