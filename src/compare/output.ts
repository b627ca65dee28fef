/**
 * What `splitnet compare` leaves behind: the terminal table, compare.json,
 * the self-contained report.html, and a Chrome trace per mode.
 */
import { mkdirSync } from 'node:fs';
import { writeFileDurably } from '../checkpoint/durable-write.js';
import { join } from 'node:path';
import { chromeTrace } from './chrome-trace.js';
import { renderReport } from './report-html.js';
import type { CompareResult, ModeMeasure } from './types.js';
import { formatCheckGrid } from './check-grid.js';

const MiB = 2 ** 20;
const mb = (bytes: number): string => (bytes / MiB).toFixed(2);

function pad(cells: string[], widths: number[]): string {
  return cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
}

/** A mode's name with the link it ran over, where that was not loopback: 'data @ 1gbit'. */
export const modeName = (m: ModeMeasure): string => (m.link === undefined || m.link === 'loopback' ? m.mode : `${m.mode} @ ${m.link}`);

/** Measured against predicted bytes: 'exact' (the expectation), else the difference in bytes and as a signed percentage. */
export function bytesError(measured: number, predicted: number): string {
  if (measured === predicted) return 'exact';
  const diff = `${measured > predicted ? '+' : ''}${(measured - predicted).toLocaleString('en-US', { maximumFractionDigits: 1 })} B`;
  if (predicted === 0) return `${diff}, none predicted`;
  const e = ((measured - predicted) / predicted) * 100;
  return `${diff}, ${e >= 0 ? '+' : ''}${e.toFixed(2)}%`;
}

/** 'grid' with its shape, 2×2 (rows × towers); every other mode by its name. */
const shapeOf = (m: ModeMeasure): string => (m.mode === 'grid' && m.replicas !== undefined ? ` ${m.replicas}×${m.towers}` : '');

function modeRows(m: ModeMeasure): string[][] {
  if (m.skipped !== undefined) return [[modeName(m), '-', `skipped: ${m.skipped}`]];
  const label = m.fallback !== undefined ? `${modeName(m)} (in one process)` : `${modeName(m)}${shapeOf(m)}`;
  const sent = m.workers.length ? m.workers.reduce((n, w) => n + w.bytesSentPerStep, 0) / m.workers.length : 0;
  const head = [
    label, String(m.world), m.imagesPerSec.toFixed(1), m.stepMs.toFixed(1), m.predicted.stepMs.toFixed(1),
    mb(sent), mb(m.predicted.bytesSentPerStep), (m.testAccuracy * 100).toFixed(2), m.losses.at(-1)?.toFixed(4) ?? '-',
  ];
  const rows = [head];
  for (const w of m.workers) {
    const s = w.stepMs;
    const predicted = w.predicted.bytesSentPerStep;
    rows.push([
      `  worker ${w.rank}`, '', '', (s.compute + s.send + s.wait + s.optimizer).toFixed(1),
      `c ${s.compute.toFixed(1)} s ${s.send.toFixed(1)} w ${s.wait.toFixed(1)} o ${s.optimizer.toFixed(1)}`,
      mb(w.bytesSentPerStep), `${mb(predicted)} (${bytesError(w.bytesSentPerStep, predicted)})`,
      `recv ${mb(w.bytesReceivedPerStep)}`, `cpu ${(w.cpuMsPerStep ?? 0).toFixed(0)} ms`, `rss ${mb(w.peakRssBytes)}`, `tensors ${mb(w.peakBackendBytes)}`,
    ]);
  }
  return rows;
}

/** The side-by-side table: one row per mode, one per worker beneath it (MiB; ms). */
export function formatCompareTable(r: CompareResult): string {
  const header = ['mode', 'workers', 'img/s', 'step ms', 'predicted', 'sent MiB', 'predicted', 'test acc %', 'last loss'];
  const rows = [header, ...r.modes.flatMap(modeRows)];
  const skippedRow = (row: string[]) => row.length === 3 && row[2]!.startsWith('skipped');
  // A skipped mode's reason runs across the columns: it does not set their widths.
  const widths = header.map((_, i) => Math.max(...rows.filter((row) => !skippedRow(row)).map((row) => (row[i] ?? '').length)));
  const lines = rows.map((row) => (skippedRow(row) ? `${row[0]!.padEnd(widths[0]!)}  ${row[2]}` : pad(row, widths)));
  const wins = new Map<string, string[]>();
  for (const p of r.forecast.filter((f) => f.batch === r.config.batch)) wins.set(p.link, [...(wins.get(p.link) ?? []), `${p.workers}: ${p.best}`]);
  return [
    ...lines,
    '',
    ...formatCheckGrid(r),
    `forecast at batch ${r.config.batch} (workers: fastest mode): ${[...wins].map(([link, w]) => `${link} ${w.join(', ')}`).join(' | ')}`,
    `  (its data, hybrid and N-way model points come from the step-time model checked above against measured runs of those layouts)`,
  ].join('\n');
}

/** Writes compare.json, report.html and trace-<mode>.json into `dir`; returns their paths. */
export function writeCompareOutputs(r: CompareResult, dir: string): string[] {
  mkdirSync(dir, { recursive: true });
  const paths = [join(dir, 'compare.json'), join(dir, 'report.html')];
  // Each file whole or absent, and a failed write names it (durable-write.ts).
  const write = (path: string, text: string) => writeFileDurably(path, [Buffer.from(text)]);
  write(paths[0]!, `${JSON.stringify(r, null, 2)}\n`);
  write(paths[1]!, renderReport(r));
  for (const m of r.modes) {
    if (m.skipped !== undefined) continue;
    const p = join(dir, `trace-${m.link === undefined || m.link === 'loopback' ? m.mode : `${m.mode}-${m.link}`}.json`);
    write(p, JSON.stringify(chromeTrace(m)));
    paths.push(p);
  }
  return paths;
}
