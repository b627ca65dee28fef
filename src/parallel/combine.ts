/**
 * How the coordinator merges its workers' replies to one call, per layout
 * (the worker-side strategies know nothing of it).
 *
 * Grid: R rows × T towers, rank = r·T + t (data: T = 1; the split: R = 1).
 *   The towers of a row compute the same loss from all logits of the row's
 *   samples; rows train disjoint shards: the global loss is the rows' mean
 *   weighted by their samples. Replicas of one tower must hold identical
 *   weights (their checksums are compared). Evaluation: rows split the test
 *   set, a row's towers walk it together. State: row 0's workers hold the
 *   whole net between them (tower t's on rank t, momentum gathered from its
 *   replicas); each worker loads its tower's part.
 * Hybrid: every worker computes the same loss over the whole batch (the
 *   logits are all-gathered), evaluates every test sample together with the
 *   others, and rank 0 answers state for all (the others send it their fc
 *   units and momentum shards).
 */
import type { TrainState } from '../checkpoint/checkpoint.js';
import type { Combine, EvalResult, StepResult } from './strategy.js';

/** The workers' step replies side by side: slowest compute and wait, bytes added up. */
function merged(results: StepResult[], loss: number, samples: number): StepResult {
  return {
    loss, samples,
    computeMs: Math.max(...results.map((r) => r.computeMs)),
    waitMs: Math.max(...results.map((r) => r.waitMs)),
    bytesSent: results.reduce((n, r) => n + r.bytesSent, 0),
    tensors: Math.max(...results.map((r) => r.tensors)),
    workers: results,
  };
}

function agree(what: string, losses: Array<{ rank: number; loss: number }>): void {
  const [a] = losses;
  for (const b of losses.slice(1)) {
    if (Math.abs(a!.loss - b.loss) > 1e-5 * Math.max(1, Math.abs(a!.loss))) {
      throw new Error(`${what} disagree on the loss: worker ${a!.rank} ${a!.loss} vs worker ${b.rank} ${b.loss}`);
    }
  }
}

/** The part of a whole state that tower `t` of `towers` holds (`conv1.t0.kernel` is tower 0's). */
export function towerShare(state: TrainState, t: number, towers: number): TrainState {
  if (towers === 1) return state;
  const mine = (p: { name: string }) => p.name.includes(`.t${t}.`);
  return { params: state.params.filter(mine), momentum: state.momentum.filter(mine) };
}

export function combineGrid(towers: number): Combine {
  const rowsOf = <T>(xs: T[]): T[][] => Array.from({ length: xs.length / towers }, (_, r) => xs.slice(r * towers, (r + 1) * towers));
  return {
    step(results) {
      const rows = rowsOf(results);
      rows.forEach((row, r) => agree(`the towers of row ${r}`, row.map((x, t) => ({ rank: r * towers + t, loss: x.loss }))));
      for (let t = 0; t < towers; t++) {
        const sums = rows.map((row) => row[t]!.checksum);
        if (sums[0] !== undefined && new Set(sums).size !== 1) {
          throw new Error(`replicas diverged: checksums ${sums.map((c, r) => `worker ${r * towers + t} ${c}`).join(', ')}`);
        }
      }
      const samples = rows.reduce((n, row) => n + row[0]!.samples, 0);
      // Equal shards: the global batch's mean is the mean of the rows' means.
      const loss = rows.reduce((s, row) => s + row[0]!.loss * row[0]!.samples, 0) / samples;
      const checksum = results[0]!.checksum;
      return { ...merged(results, loss, samples), ...(checksum !== undefined && towers === 1 ? { checksum } : {}) };
    },
    evaluate: (results) => rowsOf(results).reduce<EvalResult>((sum, row) => ({
      correct: sum.correct + row[0]!.correct, lossSum: sum.lossSum + row[0]!.lossSum, samples: sum.samples + row[0]!.samples,
    }), { correct: 0, lossSum: 0, samples: 0 }),
    stateHolders: () => Array.from({ length: towers }, (_, t) => t),
    shareOf: (state, rank) => towerShare(state, rank % towers, towers),
  };
}

export const combineHybrid: Combine = {
  step(results) {
    agree('the hybrid workers', results.map((x, rank) => ({ rank, loss: x.loss })));
    const sums = results.map((r) => r.checksum);
    if (sums[0] !== undefined && new Set(sums).size !== 1) {
      throw new Error(`the conv layers' replicas diverged: checksums ${sums.map((c, r) => `worker ${r} ${c}`).join(', ')}`);
    }
    return { ...merged(results, results[0]!.loss, results[0]!.samples), ...(sums[0] !== undefined ? { checksum: sums[0] } : {}) };
  },
  evaluate: (results) => results[0]!, // every worker evaluated every sample, together
  stateHolders: () => [0],
  shareOf: (state) => state, // every worker takes its own units from the whole
};
