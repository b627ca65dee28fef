/**
 * How compare runs each of its modes: the layout, its workers and (model,
 * grid) its rows of the net's towers; or why the net cannot run it.
 *
 *   mode     layout  workers
 *   single   single  1
 *   data     data    the cluster's
 *   hybrid   hybrid  the cluster's
 *   model    model   the net's towers T (one row)
 *   grid     model   GRID_ROWS × T (rows of the towers, each on its share of the batch)
 *
 * model and grid take as many workers as the net has towers, whatever the
 * cluster config names: where it names fewer, they run on a local cluster of
 * that many (run-compare.ts), as the forecast check's extra sizes do.
 */
import type { TrainConfig } from '../config/train.js';
import { UsageError } from '../errors.js';
import type { ModelSpec } from '../model/spec.js';
import { denseLayers } from '../parallel/head-shards.js';
import { planLayout } from '../parallel/layouts.js';
import type { Mode } from '../run/loop.js';
import type { CompareMode } from './types.js';

/** Rows of the towers in the grid: the smallest that is a grid, so it stays cheap on one machine. */
export const GRID_ROWS = 2;

export interface ModePlan {
  mode: CompareMode;
  layout: Mode;
  world: number;
  /** model and grid: rows of the net's towers */
  replicas?: number;
  towers?: number;
  /** why the net cannot run this mode (it is reported, not run) */
  skipped?: string;
}

/** The plan of `mode` for the net `spec` on a cluster of `clusterWorkers`; what the net cannot do is `skipped`. */
export function planMode(mode: CompareMode, cfg: TrainConfig, spec: ModelSpec, clusterWorkers: number): ModePlan {
  const plan = planOf(mode, spec, clusterWorkers);
  const skipped = whyNot(plan, cfg, spec);
  return skipped === undefined ? plan : { ...plan, skipped };
}

/**
 * Refuses, before anything runs, a plan its layout would refuse at its
 * start (a batch its workers or rows cannot share): the layout's own check.
 */
export function checkModePlan(plan: ModePlan, cfg: TrainConfig, spec: ModelSpec): void {
  try {
    planLayout(plan.layout, cfg, spec, plan.world, plan.replicas !== undefined && plan.replicas > 1 ? { replicas: plan.replicas } : {});
  } catch (err) {
    if (err instanceof UsageError) throw new UsageError(`--modes ${plan.mode} (${plan.world} worker${plan.world === 1 ? '' : 's'}): ${err.message}`);
    throw err;
  }
}

function planOf(mode: CompareMode, spec: ModelSpec, clusterWorkers: number): ModePlan {
  switch (mode) {
    case 'single': return { mode, layout: 'single', world: 1 };
    case 'data': return { mode, layout: 'data', world: clusterWorkers };
    case 'hybrid': return { mode, layout: 'hybrid', world: clusterWorkers };
    case 'model': return { mode, layout: 'model', world: spec.towers, replicas: 1, towers: spec.towers };
    case 'grid': return { mode, layout: 'model', world: GRID_ROWS * spec.towers, replicas: GRID_ROWS, towers: spec.towers };
  }
}

/** What about the net rules the mode out (the batch is the flags', refused instead). */
function whyNot(plan: ModePlan, cfg: TrainConfig, spec: ModelSpec): string | undefined {
  if (plan.layout === 'model' && spec.towers < 2) return `the ${cfg.arch} net has one tower: the split needs --arch original`;
  if (plan.layout === 'hybrid') {
    const narrow = denseLayers(spec).find((l) => l.units < plan.world);
    if (narrow !== undefined) return `hybrid splits every fc layer's units over the ${plan.world} workers: ${narrow.name} has ${narrow.units}`;
  }
  return undefined;
}
