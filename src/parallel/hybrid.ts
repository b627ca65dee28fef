/**
 * One worker of the hybrid layout (--mode hybrid; Krizhevsky 2014, "One
 * weird trick for parallelizing convolutional neural networks"; cuda-convnet2
 * implements it): the conv layers data-parallel, the fully connected layers
 * model-parallel. N workers, worker k:
 *
 *   trunk  every conv layer of every tower (head-shards.ts), replicated: the
 *          forward and backward of samples k·B/N … (k+1)·B/N − 1, features
 *          f_k [B/N, F]; its gradients summed over the workers on the ring
 *          with ZeRO-1 and bucket overlap (replicated-params.ts, scale 1:
 *          each worker's gradient is already its part of the global mean,
 *          since the loss is the mean over the whole batch).
 *   head   units splitUnits(U, N)[k] of every dense layer, for the whole
 *          batch; its weights are this worker's alone, never all-reduced.
 *
 * The exchange: the paper's variants differ in when the features move. (a)
 * all workers all-gather all features once, then run the head on the whole
 * batch B; (b) the workers take turns: each one's B/N features go to all,
 * the head runs on those, and the next batch's transfer overlaps that
 * compute. Both move the same bytes. This is (a): one exchange per step and
 * per direction, the head's matrix products on B rows at once (the larger
 * products are what make the fc layers efficient on one device), and no
 * interleaving of N head passes with the conv backward. (b) would hide the
 * transfer behind head compute, which pays where the link is slow against
 * the GPU; on CPUs the head's compute dwarfs the transfer already.
 *
 *   forward   f_k to every other worker ('<step>/0/fc6/fwd'); the features of
 *             the whole batch X [B, F] in worker (= sample) order; the head
 *             on X with the towers' exchanges over all N workers at fc7, fc8
 *             and the logits (model-parallel.ts crossLinks); every worker
 *             computes the same loss from all logits.
 *   backward  the head's backward gives this worker's units' part of
 *             dL/dX [B, F]; the rows of worker j's samples go to j
 *             ('<step>/0/fc6/bwd'), and each worker adds up, in worker
 *             order, every part of its own rows: dL/df_k [B/N, F], the
 *             trunk's backward input.
 *
 * Evaluation: every worker runs the trunk on the whole test batch (replicated
 * compute, no feature exchange), then the head with the same exchanges; all
 * count the same hits.
 *
 * State: a collective. The trunk's momentum is gathered on the ring; every
 * worker sends its head parameters and momentum to worker 0
 * ('state<n>/<0|1>/<name>/fwd'), which re-cuts them into the net's own
 * names: the checkpoint is the same file one process writes. Load: every
 * worker is given the whole state and cuts its own units.
 */
import * as tf from '@tensorflow/tfjs';
import { performance } from 'node:perf_hooks';
import type { PlainTensor, TrainState } from '../checkpoint/checkpoint.js';
import type { TrainConfig } from '../config/train.js';
import { specOf } from '../model/alexnet.js';
import { TrainBatches, type RunData } from '../data/run-data.js';
import { readFloats, readScalar } from '../kernels/read.js';
import { buildModel, disposeModel, parameterShapes, type Model } from '../model/build.js';
import { backward, forward, disposeTape, predict } from '../model/engine.js';
import { softmaxCrossEntropy } from '../model/layers.js';
import { Sgd } from '../model/sgd.js';
import type { ModelSpec } from '../model/spec.js';
import type { RingAllReduce } from '../wire/ring-allreduce.js';
import { yieldToSockets } from './data-parallel.js';
import { evaluate } from './evaluate.js';
import { firstDenseIndex, headSpec, initialHead, netOf, shardOf, trunkSpec } from './head-shards.js';
import { crossLinks, type Peers } from './model-parallel.js';
import { ReplicatedParams } from './replicated-params.js';
import { StepMeter } from './step-timing.js';
import type { EvalResult, StepInput, StepResult, Strategy } from './strategy.js';

export class HybridWorker implements Strategy {
  readonly model: Model;
  private readonly batches: TrainBatches;
  private readonly group: number[];
  /** a state gather's sequence number: the same on every worker */
  private stateSeq = 0;

  private constructor(
    private readonly cfg: TrainConfig, private readonly data: RunData, private readonly peers: Peers, private readonly ring: RingAllReduce,
    private readonly spec: ModelSpec, private readonly trunk: Model, private readonly head: Model, private readonly replicated: ReplicatedParams,
    private readonly opt: Sgd, private readonly closeLink: () => void,
  ) {
    this.batches = new TrainBatches(data, cfg);
    this.group = Array.from({ length: ring.world }, (_, r) => r);
    // What the worker reports as this process's model: both halves' parameters.
    this.model = { spec, towers: trunk.towers, params: new Map([...trunk.params, ...head.params]) };
  }

  get rank(): number { return this.ring.rank; }
  get world(): number { return this.ring.world; }

  /** Worker `ring.rank` of `ring.world`, exchanging features and the head's activations over `peers`. */
  static async open(cfg: TrainConfig, data: RunData, peers: Peers, ring: RingAllReduce, bucketBytes: number, closeLink: () => void): Promise<HybridWorker> {
    const spec = specOf(cfg);
    const n = ring.world;
    if (cfg.batch % n !== 0) throw new Error(`global batch ${cfg.batch} does not split evenly over ${n} workers`);
    firstDenseIndex(spec);
    const trunk = buildModel(trunkSpec(spec), { seed: cfg.seed });
    const hs = headSpec(spec, n);
    // The head's shard, cut from the net's own initial weights: the same start as one process.
    const init = shardOf(spec, n, ring.rank, initialHead(spec, cfg.seed));
    const shapes = parameterShapes(hs);
    const head: Model = {
      spec: hs, towers: [ring.rank],
      // tidy: a variable shares its initial tensor's data, which would otherwise stay referenced for the worker's life
      params: new Map([...init].map(([name, data]) => [name, tf.tidy(() => tf.variable(tf.tensor(data, shapes.get(name)!)))])),
    };
    try {
      const sgd = { lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay };
      const replicated = await ReplicatedParams.open(trunk.params, ring, { sgd, wire: cfg.wire, bucketBytes, scale: 1 });
      return new HybridWorker(cfg, data, peers, ring, spec, trunk, head, replicated, new Sgd(sgd), closeLink);
    } catch (err) {
      disposeModel(trunk);
      disposeModel(head);
      throw err;
    }
  }

  async step(s: StepInput): Promise<StepResult> {
    const { cfg, peers, ring } = this;
    const meter = new StepMeter(peers, [peers.traffic, ring.traffic]);
    const { timeline } = meter;
    const { t0 } = timeline;
    const n = this.world;
    const shard = cfg.batch / n;
    const { x, y } = this.batches.batch(s.epoch, s.step, this.rank * shard, shard);
    timeline.span('compute', 'input batch', t0, performance.now());
    peers.forgetSeen(s.globalStep);
    const spans = timeline.layers();
    const dropout = (firstSample: number) => ({ seed: cfg.seed, step: s.globalStep, firstSample });
    const prefix = `${s.globalStep}/0`;
    const fc6 = this.head.spec.layers[0]!.name;
    const owned: tf.Tensor[] = [x, y];
    let trunkTape: Awaited<ReturnType<typeof forward>> | undefined;
    let headTape: Awaited<ReturnType<typeof forward>> | undefined;
    try {
      // trunk forward on this worker's samples: features [b, F]
      trunkTape = await forward(this.trunk, x, { dropout: dropout(this.rank * shard), layerSpans: spans }, true);
      // every worker's features, in sample order: X [B, F]. The towers' all-gather along the batch axis:
      // the same keys, bf16 rounding and order as a cross link's, with workers for towers and rows for channels.
      const links = crossLinks(peers, this.group, this.rank, prefix, cfg.wire);
      const rows = this.group.map(() => shard);
      const all = await links.gather(fc6, trunkTape.logits, 0, rows);
      owned.push(all);
      // Labels follow the keyed data order, the same on every worker: the whole batch's are built here, not sent.
      const labels = this.batches.labels(s.epoch, s.step);
      owned.push(labels);
      headTape = await forward(this.head, all, { dropout: dropout(0), links, layerSpans: spans }, true);
      const { loss, dlogits } = softmaxCrossEntropy(headTape.logits, labels, true);
      owned.push(loss, dlogits!);
      // head backward: its weight gradients, and this worker's part of dL/dX [B, F]
      let dAll: tf.Tensor | undefined;
      const headGrads = await backward(this.head, headTape, dlogits!, { links, layerSpans: spans, inputGradient: (dx) => { dAll = dx; } });
      owned.push(...headGrads.values(), dAll!);
      disposeTape(headTape);
      headTape = undefined;
      // its mirror: the rows of worker j's samples go to j, own rows summed in worker order: dL/df_k [b, F]
      const dFeatures = await links.scatter(fc6, dAll!, 0, rows, false);
      owned.push(dFeatures);
      // trunk backward; its gradients go to the ring as they come (overlap)
      this.replicated.begin(s.lr, s.overlap !== false, timeline);
      const trunkGrads = await backward(this.trunk, trunkTape, dFeatures as tf.Tensor2D, {
        onGradient: (name, g) => this.replicated.onGradient(name, g), afterLayer: yieldToSockets, layerSpans: spans,
      });
      owned.push(...trunkGrads.values());
      const backwardEnd = performance.now();
      const backendBytes = tf.memory().numBytes;
      // the head's own update while the ring finishes
      const u0 = performance.now();
      this.opt.opts.lr = s.lr;
      this.opt.apply(this.head.params, headGrads);
      const u1 = performance.now();
      await this.replicated.reduced();
      const reduced = performance.now();
      this.replicated.loadIntoModel();
      const loaded = performance.now();
      const value = await readScalar(loss);
      const { waitMs, bytesSent, traffic } = meter.finish();
      timeline.span('compute', 'forward + backward', t0, backwardEnd);
      timeline.span('optimizer', 'sgd (fc units)', u0, u1);
      timeline.span('wait', 'all-reduce (conv) after backward', u1, reduced);
      timeline.span('optimizer', 'weights into the model', reduced, loaded);
      timeline.traffic(traffic);
      return {
        loss: value, samples: cfg.batch, computeMs: performance.now() - t0 - waitMs, waitMs,
        bytesSent, tensors: tf.memory().numTensors,
        ...(s.checksum ? { checksum: this.replicated.checksum() } : {}),
        detail: timeline.detail({
          sendMs: traffic.sendMs, optimizerMs: (u1 - u0) + this.replicated.optimizerMs + (loaded - reduced),
          bytesReceived: traffic.receivedBytes, sentByLink: traffic.sentBy, backendBytes,
        }),
      };
    } catch (err) {
      peers.fail(err instanceof Error ? err : new Error(String(err)));
      throw err;
    } finally {
      if (headTape) disposeTape(headTape);
      if (trunkTape) disposeTape(trunkTape);
      tf.dispose(owned);
    }
  }

  evaluate(epoch: number): Promise<EvalResult> {
    return evaluate(this.trunk, this.data.test, {
      resolution: this.cfg.resolution, channels: this.cfg.channels, resize: this.cfg.resize, batch: this.cfg.evalBatch,
      predict: async (x, b) => {
        const features = await predict(this.trunk, x);
        try {
          return await predict(this.head, features, crossLinks(this.peers, this.group, this.rank, `eval${epoch}/${b}`, this.cfg.wire));
        } finally {
          features.dispose();
        }
      },
    });
  }

  /** The whole net's parameters and momentum in its own names (worker 0; the others take part and answer with nothing). */
  async state(): Promise<TrainState> {
    const trunk = await this.replicated.state();
    const seq = this.stateSeq++;
    const mine = { params: new Map<string, Float32Array>(), momentum: new Map<string, Float32Array>() };
    for (const [name, v] of this.head.params) mine.params.set(name, await readFloats(v));
    const buffers = this.opt.buffers();
    for (const [name, v] of this.head.params) mine.momentum.set(name, buffers.has(name) ? await readFloats(buffers.get(name)!) : new Float32Array(v.size));
    const key = (which: 0 | 1, name: string) => `state${seq}/${which}/${name}/fwd`;
    if (this.rank !== 0) {
      for (const [name, d] of mine.params) this.peers.send(0, key(0, name), d);
      for (const [name, d] of mine.momentum) this.peers.send(0, key(1, name), d);
      return { params: [], momentum: [] };
    }
    const shards = [mine];
    const hs = this.head.spec;
    const sizes = parameterShapes(hs);
    for (let r = 1; r < this.world; r++) {
      const theirs = { params: new Map<string, Float32Array>(), momentum: new Map<string, Float32Array>() };
      for (const [name, shape] of sizes) {
        if (!name.includes(`.t${r}.`)) continue;
        const count = shape.reduce((a, b) => a * b, 1);
        theirs.params.set(name, await this.peers.receive(r, key(0, name), count));
        theirs.momentum.set(name, await this.peers.receive(r, key(1, name), count));
      }
      shards.push(theirs);
    }
    const plain = (m: Map<string, { shape: number[]; data: Float32Array }>): PlainTensor[] => [...m].map(([name, t]) => ({ name, ...t }));
    const order = [...parameterShapes(this.spec).keys()];
    const sort = (ts: PlainTensor[]) => ts.sort((a, b) => order.indexOf(a.name) - order.indexOf(b.name));
    return {
      params: sort([...trunk.params, ...plain(netOf(this.spec, shards.map((s) => s.params)))]),
      momentum: this.cfg.momentum === 0 ? [] : sort([...trunk.momentum, ...plain(netOf(this.spec, shards.map((s) => s.momentum)))]),
    };
  }

  /** The whole state in the net's names: the trunk's as a replica, the head's own units cut from it. */
  async load(state: TrainState): Promise<void> {
    const trunkNames = new Set(this.trunk.params.keys());
    const part = (ts: PlainTensor[]) => ts.filter((t) => trunkNames.has(t.name));
    this.replicated.load({ params: part(state.params), momentum: part(state.momentum) });
    const byName = (ts: PlainTensor[]) => new Map(ts.map((t) => [t.name, t.data]));
    const get = (m: Map<string, Float32Array>, what: string) => (name: string, shape: number[]) => {
      const d = m.get(name);
      const count = shape.reduce((a, b) => a * b, 1);
      if (d === undefined) {
        if (what === 'momentum') return new Float32Array(count); // absent buffers are zeros, as a fresh optimizer's
        throw new Error(`state has no parameter ${name}`);
      }
      if (d.length !== count) throw new Error(`state: ${what === 'momentum' ? 'momentum of ' : ''}${name} has ${d.length} values, the model ${count}`);
      return d;
    };
    const params = shardOf(this.spec, this.world, this.rank, get(byName(state.params), 'parameter'));
    for (const [name, data] of params) {
      const v = this.head.params.get(name)!;
      tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
    }
    if (this.cfg.momentum === 0) return;
    const momentum = shardOf(this.spec, this.world, this.rank, get(byName(state.momentum), 'momentum'));
    for (const [name, data] of momentum) this.opt.loadBuffer(name, data, this.head.params.get(name)!.shape);
  }

  checksum(): string {
    return this.replicated.checksum();
  }

  async close(): Promise<void> {
    this.closeLink();
    this.opt.dispose();
    disposeModel(this.trunk);
    disposeModel(this.head);
  }
}
