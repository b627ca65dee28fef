import type { TrainResult } from './loop.js';

/** The one-screen summary at the end of `splitnet train`. */
export function formatRunSummary(r: TrainResult, outDir: string): string {
  const c = r.config;
  const last = r.epochs[r.epochs.length - 1];
  const lines = [
    '',
    `summary: ${c.arch} AlexNet, width ${c.width}, ${c.resolution}×${c.resolution}, batch ${c.batch}, seed ${c.seed}`,
    `  steps this run   ${r.losses.length} (at epoch ${r.position.epoch}, global step ${r.position.globalStep})`,
    `  wall time        ${r.wallSeconds.toFixed(1)} s (training steps ${r.trainSeconds.toFixed(1)} s, ${r.imagesPerSec.toFixed(1)} img/s)`,
    ...r.epochs.map((e) => `  epoch ${String(e.epoch + 1).padEnd(10)} train loss ${e.trainLoss.toFixed(4)}, test accuracy ${(e.accuracy * 100).toFixed(2)}%`),
    last ? `  final test accuracy ${(last.accuracy * 100).toFixed(2)}% on ${last.samples} images` : '  no epoch finished in this run',
    `  run directory    ${outDir} (metrics.jsonl; checkpoint.manifest.json names the checkpoint's .safetensors and .json)`,
    r.finished ? '' : `  not finished: continue with --resume ${outDir}`,
    `splitnet compare runs single, data, model and hybrid side by side on this net and explains the difference: npx splitnet compare`,
  ];
  return lines.filter((l, i) => l !== '' || i === 0).join('\n');
}
