/**
 * The forecast check as a grid: one row per configuration (mode × workers),
 * one column group per link (predicted, measured, error), as the terminal
 * table and report.html both show it.
 */
import type { CompareResult } from './types.js';

type Check = CompareResult['forecastCheck'][number];

export interface CheckGrid {
  /** the links, in the order the comparison ran them */
  links: string[];
  rows: Array<{ mode: Check['mode']; workers: number; oversubscribed: boolean; byLink: Map<string, Check> }>;
}

/**
 * On each link, the fastest of the modes compared there (each at the worker
 * count it ran at; the forecast check's extra sizes are not among them), as
 * predicted and as measured: the forecast is only useful if it picks the
 * same one. Every mode trains the same global batch, so their step times
 * compare directly.
 */
export function winners(r: CompareResult): Array<{ link: string; predicted: string; measured: string }> {
  const out: Array<{ link: string; predicted: string; measured: string }> = [];
  const compared = (c: Check) => r.modes.some((m) => m.mode === c.mode && m.link === c.link && m.world === c.workers && m.fallback === undefined);
  for (const link of [...new Set(r.forecastCheck.map((c) => c.link))]) {
    const here = r.forecastCheck.filter((c) => c.link === link && compared(c));
    if (here.length < 2) continue;
    const by = (k: 'predictedMs' | 'measuredMs') => here.reduce((a, b) => (b[k] < a[k] ? b : a)).mode;
    out.push({ link, predicted: by('predictedMs'), measured: by('measuredMs') });
  }
  return out;
}

export function checkGrid(r: CompareResult): CheckGrid {
  const links = [...new Set(r.forecastCheck.map((c) => c.link))];
  const rows: CheckGrid['rows'] = [];
  for (const c of r.forecastCheck) {
    let row = rows.find((x) => x.mode === c.mode && x.workers === c.workers);
    if (row === undefined) {
      row = { mode: c.mode, workers: c.workers, oversubscribed: c.oversubscribed, byLink: new Map() };
      rows.push(row);
    }
    row.byLink.set(c.link, c);
  }
  return { links, rows };
}

/** The grid as aligned text: `mode ×n | link: predicted/measured ms (error) | …`. */
export function formatCheckGrid(r: CompareResult): string[] {
  const { links, rows } = checkGrid(r);
  if (rows.length === 0) return ['step-time model: no configuration was measured against it'];
  const cell = (c: Check | undefined) => (c === undefined ? '-' : `${c.predictedMs.toFixed(1)} / ${c.measuredMs.toFixed(1)} (${c.error >= 0 ? '+' : ''}${(c.error * 100).toFixed(0)}%)`);
  const table = [['step-time model', ...links.map((l) => `${l}: predicted / measured ms (error)`)],
    ...rows.map((row) => [`${row.mode} ×${row.workers}${row.oversubscribed ? ' (oversubscribed)' : ''}`, ...links.map((l) => cell(row.byLink.get(l)))])];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((t) => t[i]!.length)));
  const worst = Math.max(...r.forecastCheck.filter((c) => !c.oversubscribed).map((c) => Math.abs(c.error)));
  const picks = winners(r);
  return [...table.map((t) => t.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()),
    ...(Number.isFinite(worst) ? [`worst error where not oversubscribed: ${(worst * 100).toFixed(0)}%`] : []),
    ...(picks.length > 0 ? [`fastest as compared, predicted / measured: ${picks.map((p) => `${p.link} ${p.predicted} / ${p.measured}${p.predicted === p.measured ? '' : ' (MISSED)'}`).join(', ')}`] : [])];
}
