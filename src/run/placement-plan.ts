/**
 * Where a `train` or `launch` command runs, before any process starts: the
 * cluster (the config's, or the one a scheduler placed), the workers its
 * devices give, the fallback to one process where fewer than two devices
 * exist (said aloud), and shaped links when asked for.
 */
import { loadClusterConfig, type ClusterConfig, type WorkerSpec } from '../config/cluster.js';
import { UsageError } from '../errors.js';
import { planDevices, type WorkerCommandOverride } from './launcher.js';
import type { Mode } from './loop.js';
import { parseLinkRate, shapeLinks, type ShapedNetwork } from './shaped-network.js';

export interface RunPlacementRequest {
  mode: Mode;
  /** the cluster config file (ignored when `placed` is given) */
  config?: string;
  /** the cluster and how its workers start, when someone else placed them (Slurm) */
  placed?: { cluster: ClusterConfig; workerCommand: WorkerCommandOverride };
  /** shape each local worker's link to this rate ('1gbit') */
  link?: string;
  insecure: boolean;
  log: (line: string) => void;
}

export interface RunPlacement {
  mode: Mode;
  /** the mode asked for could not run: the run is one process (flags of the mode asked for are then dropped) */
  fellBack: boolean;
  cluster?: ClusterConfig;
  workers: WorkerSpec[];
  workerCommand?: WorkerCommandOverride;
  /** the shaped network to close when the run ends */
  network?: ShapedNetwork;
}

export function placeRun(r: RunPlacementRequest): RunPlacement {
  let mode = r.mode;
  let workers: WorkerSpec[] = [];
  let cluster: ClusterConfig | undefined;
  if (mode !== 'single' && r.placed !== undefined) {
    cluster = r.placed.cluster;
    workers = cluster.workers;
  } else if (mode !== 'single') {
    cluster = loadClusterConfig(r.config ?? 'cluster.config.json');
    const plan = planDevices(cluster);
    if (plan.single !== undefined) {
      r.log(`splitnet: ${plan.single}`);
      mode = 'single';
    } else {
      if (plan.note !== undefined) r.log(`splitnet: ${plan.note}`);
      workers = plan.workers;
    }
  }
  const fellBack = mode !== r.mode;
  const link = r.link === undefined ? undefined : parseLinkRate(r.link);
  if (link !== undefined && (mode === 'single' || cluster === undefined)) throw new UsageError(`--link ${link.text}: a one-process run has no link to shape`);
  const shaped = link !== undefined && cluster !== undefined ? shapeLinks(cluster, workers, link, r.insecure) : undefined;
  if (shaped !== undefined) {
    r.log(`splitnet: ${workers.length} workers in network namespaces, each behind a ${link!.text} link (tc tbf)`);
    cluster = shaped.cluster;
    workers = shaped.cluster.workers;
  }
  const workerCommand = shaped ? shaped.network.workerCommand : r.placed?.workerCommand;
  return {
    mode, fellBack, workers,
    ...(cluster && !fellBack ? { cluster } : {}),
    ...(workerCommand ? { workerCommand } : {}),
    ...(shaped ? { network: shaped.network } : {}),
  };
}
