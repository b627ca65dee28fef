/**
 * How a worker among two computes on this machine, measured in a short
 * data-parallel run before the compared runs start.
 *
 * Why: the layers of a worker in a 2-worker run take longer than the same
 * layers timed alone, and longer than two independent processes computing at
 * once (contention.ts) suggest. Measured on the 2-vCPU VMs this was built
 * on (layer spans of the workers' traces against the one-process profile at
 * the same samples): ×1.26–1.37 in a run against ×1.0–1.15 for two plain
 * processes, and each step spent a further 5–10 ms between the slowest
 * worker's reply and the coordinator's next step. A run's workers compute in
 * lockstep (both start each step on the coordinator's word, both hit conv1
 * and fc7 at once), their event loops serve sockets between layers and
 * their libzmq threads move frames, where two unrelated processes drift
 * apart: the machine's two vCPUs (hyperthreads of one core, on such VMs)
 * are then contended harder. Rather than a model of a hypervisor, the
 * factor is measured where it arises: the run's own layers, in a run.
 *
 *   slowdown  = Σ the workers' layer spans / (2 × the profile's layers at B/2)
 *   envelopeMs = coordinator's step − the slowest worker's own step
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClusterConfig } from '../config/cluster.js';
import type { TrainConfig } from '../config/train.js';
import { train } from '../run/loop.js';
import type { LayerTiming } from './types.js';

/** Steps of the calibration run; only the last COUNTED are (the first ones still allocate and grow heaps). */
const CALIBRATION_STEPS = 6;
const COUNTED = 3;

export interface Calibration {
  /** a 2-worker run's layer time over the same layers' time alone */
  slowdown: number;
  /** per step, ms: the coordinator's round trip beyond the slowest worker's step */
  envelopeMs: number;
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const isLayerSpan = (name: string) => / (forward|backward)$/.test(name) && !name.startsWith('forward + backward');

/**
 * Runs data-parallel on `cluster` (2 local workers) for a few steps of
 * `cfg` at global batch 2·`half` and compares its workers' layer spans with
 * `layersAtHalf` (the same layers timed alone at `half` samples).
 */
export async function calibrate(cfg: TrainConfig, cluster: ClusterConfig, half: number, layersAtHalf: LayerTiming[]): Promise<Calibration> {
  const outDir = mkdtempSync(join(tmpdir(), 'splitnet-calibrate-'));
  try {
    const batch = 2 * half;
    const r = await train({
      config: { ...cfg, batch, epochs: 1, trainSamples: CALIBRATION_STEPS * batch, testSamples: batch, checkpointEvery: 0 },
      outDir, mode: 'data', cluster, workers: cluster.workers, progress: false, log: () => {},
    });
    if (!r.finished) throw new Error('compare: the calibration run stopped before its last step');
    const steps = r.stats.slice(-COUNTED);
    const alone = layersAtHalf.reduce((n, l) => n + l.forwardMs + l.backwardMs, 0);
    const inRun = mean(steps.flatMap((s) => s.detail.map((d) => (d?.spans ?? []).filter((sp) => sp.cat === 'compute' && isLayerSpan(sp.name)).reduce((n, sp) => n + sp.durMs, 0))));
    const envelopeMs = mean(steps.map((s) => Math.max(0, s.wallMs - Math.max(...s.computeMs.map((c, w) => c + s.waitMs[w]!)))));
    return { slowdown: alone > 0 && inRun > 0 ? Math.max(1, inRun / alone) : 1, envelopeMs };
  } finally {
    rmSync(outDir, { recursive: true, force: true });
  }
}
