import type { ModelSpec } from './spec.js';
import { shapesOf } from './shapes.js';

export interface SummaryRow {
  name: string;
  /** the tower's output (the whole layer's with one tower): [C, H, W] or [F] */
  outputShape: number[];
  params: number;
  /** present for towered nets: the tower (and so the worker) that owns the row */
  tower?: number;
}

export interface ModelSummary {
  arch: string;
  input: number[];
  towers: number;
  layers: SummaryRow[];
  /** parameters per tower: what each model-parallel worker holds */
  towerParams: number[];
  totalParams: number;
}

export function summarize(spec: ModelSpec): ModelSummary {
  const rows: SummaryRow[] = [];
  const shapes = shapesOf(spec);
  for (const s of shapes) {
    if (spec.towers === 1) {
      rows.push({ name: s.layer.name, outputShape: s.outputShape, params: s.params });
    } else {
      s.towers.forEach((ts, t) => rows.push({ name: s.layer.name, outputShape: ts.output, params: ts.params, tower: t }));
    }
  }
  const towerParams = Array.from({ length: spec.towers }, (_, t) => shapes.reduce((sum, s) => sum + s.towers[t]!.params, 0));
  return {
    arch: spec.arch,
    input: spec.input,
    towers: spec.towers,
    layers: rows,
    towerParams,
    totalParams: towerParams.reduce((a, b) => a + b, 0),
  };
}

const fmtShape = (s: number[]): string => s.join('×');
const fmtInt = (n: number): string => n.toLocaleString('en-US');

/** The table `splitnet model summary` prints. */
export function formatSummary(spec: ModelSpec): string {
  const sum = summarize(spec);
  const shapes = shapesOf(spec);
  const towered = spec.towers > 1;
  // An uneven division shows each tower's part: '43×27×27 | 42×27×27'.
  const perTower = (xs: string[]) => (new Set(xs).size === 1 ? xs[0]! : xs.join(' | '));
  const head = ['layer', 'link', towered ? 'output per tower' : 'output', towered ? 'params per tower' : 'params'];
  const body = shapes.map((s) => {
    const link = 'link' in s.layer && towered ? s.layer.link : '';
    return [s.layer.name, link, perTower(s.towers.map((t) => fmtShape(t.output))), s.params === 0 ? '' : perTower(s.towers.map((t) => fmtInt(t.params)))];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i >= 2 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  const lines = [
    `${spec.arch} AlexNet: input ${fmtShape(spec.input)}, ${spec.classes} classes, width ${spec.width}` +
      (towered ? `, ${spec.towers} towers` : ''),
    line(head),
    ...body.map(line),
  ];
  if (towered) {
    sum.towerParams.forEach((p, t) => lines.push(`tower ${t} (worker ${t}): ${fmtInt(p)} parameters`));
    if (new Set(sum.towerParams).size > 1) lines.push(`the ${spec.towers} towers divide the kernels unevenly: the first towers hold one more where a layer does not divide`);
  }
  lines.push(`total: ${fmtInt(sum.totalParams)} parameters (${(sum.totalParams * 4 / 2 ** 20).toFixed(1)} MiB as float32)`);
  return lines.join('\n');
}
