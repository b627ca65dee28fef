/**
 * Every layout splitnet runs, as data: one registry from a mode's name to
 * where each layer lives (its placement), the checks a run of it must pass
 * before any process starts, how a worker opens its strategy, and how the
 * coordinator combines the workers' replies. Nothing else branches on the
 * mode.
 *
 *   layout   workers  conv layers                     fc layers
 *   single   1        all towers                      all towers
 *   data     R        all towers, replicated R ways   all towers, replicated R ways
 *   model    R × T    tower t on worker r·T + t,      the same
 *                     replicated over the R rows
 *   hybrid   N        all towers, replicated N ways   units split N ways (whole batch)
 *
 * A replicated part trains on its row's (or worker's) shard of the batch and
 * all-reduces its gradients among its replicas (replicated-params.ts); a
 * tower exchanges activations with the other towers of its row at every
 * cross link (model-parallel.ts); hybrid's fc units exchange the features
 * and their activations with all workers (hybrid.ts).
 */
import type { TrainConfig } from '../config/train.js';
import type { RunData } from '../data/run-data.js';
import { UsageError } from '../errors.js';
import type { ModelSpec } from '../model/spec.js';
import type { RingAllReduce } from '../wire/ring-allreduce.js';
import { combineGrid, combineHybrid } from './combine.js';
import { DataParallelReplica } from './data-parallel.js';
import { denseLayers } from './head-shards.js';
import { HybridWorker } from './hybrid.js';
import { ModelParallelTower, type Peers } from './model-parallel.js';
import type { Combine, Strategy } from './strategy.js';

export const LAYOUTS = ['single', 'data', 'model', 'hybrid'] as const;
export type LayoutName = (typeof LAYOUTS)[number];
export type ClusterLayout = Exclude<LayoutName, 'single'>;
export const CLUSTER_LAYOUTS = LAYOUTS.filter((l): l is ClusterLayout => l !== 'single');

/** A run's layout: its name, its workers, and (model) its replicas of each tower. */
export interface Placement {
  layout: LayoutName;
  world: number;
  /** rows: batch shards of the towers (model); 1 elsewhere */
  replicas: number;
  /** towers per row (model: the net's towers); 1 elsewhere */
  towers: number;
}

/** Where one worker sits in its layout, and whom it talks to. */
export interface WorkerPlace {
  rank: number;
  /** its row (model) or its batch shard (data, hybrid) */
  replica: number;
  /** model: its tower */
  tower: number;
  /** the ranks it exchanges activations with, in tower (or shard) order, itself included; [rank] where it exchanges none */
  row: number[];
  /** the ranks its replicated parameters are all-reduced among, ascending, itself included */
  ring: number[];
  /** every rank it sends to or receives from */
  talksTo: number[];
}

/** How one layer is held: replicated over `ways` workers, or cut into `ways` towers or unit shards. */
export interface LayerPlace { layer: string; held: 'whole' | 'replicated' | 'towers' | 'units'; ways: number }

export function placeWorker(p: Placement, rank: number): WorkerPlace {
  const all = Array.from({ length: p.world }, (_, r) => r);
  let row: number[];
  let ring: number[];
  let replica = rank;
  let tower = 0;
  switch (p.layout) {
    case 'single': row = [0]; ring = [0]; replica = 0; break;
    case 'data': row = [rank]; ring = all; break;
    case 'hybrid': row = all; ring = all; break;
    case 'model':
      replica = Math.floor(rank / p.towers);
      tower = rank % p.towers;
      row = Array.from({ length: p.towers }, (_, t) => replica * p.towers + t);
      ring = Array.from({ length: p.replicas }, (_, r) => r * p.towers + tower);
      break;
  }
  // The ring talks to its neighbours only; the row to everyone in it.
  const at = ring.indexOf(rank);
  const neighbours = ring.length > 1 ? [ring[(at + 1) % ring.length]!, ring[(at - 1 + ring.length) % ring.length]!] : [];
  const talksTo = [...new Set([...row, ...neighbours])].filter((r) => r !== rank).sort((a, b) => a - b);
  return { rank, replica, tower, row, ring, talksTo };
}

/** Each weighted layer's placement (for the summary and the byte prediction). */
export function layerPlaces(spec: ModelSpec, p: Placement): LayerPlace[] {
  const dense = new Set(denseLayers(spec).map((l) => l.name));
  return spec.layers.filter((l) => l.kind === 'conv' || l.kind === 'dense').map((l) => {
    switch (p.layout) {
      case 'single': return { layer: l.name, held: 'whole', ways: 1 };
      case 'data': return { layer: l.name, held: 'replicated', ways: p.world };
      case 'model': return { layer: l.name, held: 'towers', ways: p.towers };
      case 'hybrid': return dense.has(l.name) ? { layer: l.name, held: 'units', ways: p.world } : { layer: l.name, held: 'replicated', ways: p.world };
    }
  });
}

/** What a run asks of its layout beyond the config. */
export interface LayoutRequest {
  /** model: replicas of each tower (default 1) */
  replicas?: number;
  microBatches?: number;
  overlap?: boolean;
}

/**
 * The placement of `layout` on `workers` processes for the net `spec`, or a
 * UsageError naming what does not fit: checked once, before anything starts.
 */
export function planLayout(layout: LayoutName, cfg: TrainConfig, spec: ModelSpec, workers: number, req: LayoutRequest): Placement {
  const replicas = req.replicas ?? 1;
  if (req.replicas !== undefined && layout !== 'model') throw new UsageError(`--replicas ${req.replicas}: replicas of each tower are --mode model's (a grid of replicas × towers); this run is --mode ${layout}`);
  if (req.microBatches !== undefined && layout !== 'model') throw new UsageError(`--micro-batches ${req.microBatches}: micro-batches pipeline the towers (--mode model); this run is --mode ${layout}`);
  if (req.overlap === false && layout !== 'data' && layout !== 'hybrid') throw new UsageError(`--no-overlap: overlapping the all-reduce with backward is --mode data's and hybrid's; this run is --mode ${layout}`);
  if (layout === 'single') return { layout, world: 1, replicas: 1, towers: 1 };
  if (!Number.isInteger(replicas) || replicas < 1) throw new UsageError(`--replicas: expected a positive integer, got ${replicas}`);
  switch (layout) {
    case 'data':
      if (cfg.batch % workers !== 0) throw new UsageError(`global batch ${cfg.batch} does not split evenly over ${workers} workers`);
      return { layout, world: workers, replicas: workers, towers: 1 };
    case 'model': {
      if (cfg.arch !== 'original') throw new UsageError(`--mode model splits the towered 'original' net: add --arch original (this run is '${cfg.arch}')`);
      if (spec.towers < 2) throw new UsageError(`--mode model needs at least 2 towers, one per worker: this net has ${spec.towers} (--towers)`);
      if (replicas * spec.towers !== workers) {
        throw new UsageError(`--mode model runs ${replicas} replica${replicas > 1 ? 's' : ''} × ${spec.towers} towers = ${replicas * spec.towers} workers; the cluster has ${workers} (set --towers and --replicas so that replicas × towers = workers)`);
      }
      const micro = req.microBatches ?? 1;
      if (cfg.batch % replicas !== 0) throw new UsageError(`global batch ${cfg.batch} does not split evenly over ${replicas} replicas`);
      if ((cfg.batch / replicas) % micro !== 0) throw new UsageError(`batch ${cfg.batch / replicas}${replicas > 1 ? ' per replica' : ''} does not split into ${micro} micro-batches`);
      return { layout, world: workers, replicas, towers: spec.towers };
    }
    case 'hybrid': {
      if (workers < 2) throw new UsageError(`--mode hybrid needs at least 2 workers; the cluster has ${workers}`);
      if (cfg.batch % workers !== 0) throw new UsageError(`global batch ${cfg.batch} does not split evenly over ${workers} workers`);
      const narrow = denseLayers(spec).find((l) => l.units < workers);
      if (narrow) throw new UsageError(`--mode hybrid splits every fc layer's units over the workers: ${narrow.name} has ${narrow.units}, fewer than the ${workers} workers`);
      return { layout, world: workers, replicas: 1, towers: 1 };
    }
  }
}

/**
 * The most keyed messages a worker of `p` may hold unclaimed at once: every
 * exchange one step (or one test batch, or one state gather) may have in
 * flight from every peer it exchanges with. Towers: each micro-batch sends,
 * per cross link, its output forward and the gradient slice backward, and
 * its logits forward, to each other tower of the row; all m micro-batches run
 * at once. Hybrid: the features and each later fc layer both ways, the
 * logits forward, and at a checkpoint every fc parameter and its momentum
 * to worker 0. Never below MAX_UNCLAIMED.
 */
export function unclaimedBound(p: Placement, spec: ModelSpec, microBatches: number, floor: number): number {
  const crossLinks = spec.layers.filter((l, i) => i > 0 && (l.kind === 'conv' || l.kind === 'dense') && l.link === 'cross').length;
  const dense = denseLayers(spec).length;
  switch (p.layout) {
    case 'model': return Math.max(floor, microBatches * (2 * crossLinks + 1) * (p.towers - 1));
    case 'hybrid': return Math.max(floor, (2 * dense + 1 + 2 * 2 * dense) * (p.world - 1));
    default: return floor;
  }
}

/** What a worker's communicator gives a strategy: keyed tensors to any peer, and one ring. */
export interface WorkerLinks extends Peers {
  ring(group: number[]): RingAllReduce;
  close(): void;
}

export interface OpenContext {
  cfg: TrainConfig;
  data: RunData;
  links: WorkerLinks;
  place: WorkerPlace;
  placement: Placement;
  microBatches: number;
  bucketBytes: number;
}

/** A worker's strategy for its layout. */
export async function openWorkerStrategy(c: OpenContext): Promise<Strategy & { checksum(): string | undefined; model: { params: Map<string, { size: number }> } }> {
  const close = () => c.links.close();
  switch (c.placement.layout) {
    case 'data':
      return DataParallelReplica.open(c.cfg, c.data, c.links.ring(c.place.ring), c.bucketBytes, close);
    case 'model':
      return ModelParallelTower.open(c.cfg, c.data, c.links, { tower: c.place.tower, replica: c.place.replica, replicas: c.placement.replicas, row: c.place.row },
        c.microBatches, c.placement.replicas > 1 ? c.links.ring(c.place.ring) : undefined, c.bucketBytes, close);
    case 'hybrid':
      return HybridWorker.open(c.cfg, c.data, c.links, c.links.ring(c.place.ring), c.bucketBytes, close);
    case 'single':
      throw new Error('a single-process run has no workers');
  }
}

/** How the coordinator combines the workers' replies. */
export function combineOf(p: Placement): Combine {
  return p.layout === 'hybrid' ? combineHybrid : combineGrid(p.layout === 'model' ? p.towers : 1);
}

/** The coordinator's line about a layout's workers. */
export function describeLayout(p: Placement, cfg: TrainConfig, microBatches: number, bucketBytes: number, worker: (rank: number) => string): string {
  const all = Array.from({ length: p.world }, (_, r) => worker(r)).join(', ');
  const mib = (bucketBytes / 2 ** 20).toFixed(1);
  switch (p.layout) {
    case 'data':
      return `splitnet: data-parallel over ${p.world} workers (${all}), global batch ${cfg.batch} (${cfg.batch / p.world} per worker), bucket ${mib} MiB, optimizer sharded ${p.world} ways`;
    case 'model': {
      const towers = Array.from({ length: p.world }, (_, r) => `tower ${r % p.towers}${p.replicas > 1 ? ` of row ${Math.floor(r / p.towers)}` : ''} on ${worker(r)}`).join(', ');
      return `splitnet: model-parallel, ${p.replicas > 1 ? `${p.replicas} replicas × ` : ''}${p.towers} towers: ${towers}, batch ${cfg.batch}` +
        `${p.replicas > 1 ? ` (${cfg.batch / p.replicas} per row; each tower's gradients all-reduced over its ${p.replicas} replicas)` : ''}` +
        `${microBatches > 1 ? ` in ${microBatches} pipelined micro-batches` : ''}`;
    }
    case 'hybrid':
      return `splitnet: hybrid over ${p.world} workers (${all}): conv layers data-parallel (${cfg.batch / p.world} samples each, bucket ${mib} MiB), fc layers split ${p.world} ways by unit over the batch of ${cfg.batch}`;
    case 'single':
      return 'splitnet: one process';
  }
}
