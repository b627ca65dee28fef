/**
 * What `splitnet compare` writes besides compare.json: each mode's Chrome
 * trace and report.html. The report is opened in a real browser (Debian's
 * chromium, driven by playwright-core) as a file, with no network, and every
 * chart is checked to carry the run's own numbers and to have drawn pixels.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chromeTrace, micros, pidOf, type TraceEvent } from '../src/compare/chrome-trace.js';
import { renderReport } from '../src/compare/report-html.js';
import type { CompareResult, ForecastPoint, ModeMeasure, Span, StepSplit, WorkerMeasure } from '../src/compare/types.js';
import { CHART_IDS, ReportBrowser } from './helpers/report-browser.js';

const LINKS = ['loopback (measured)', '10 Gb/s', '100 Gb/s', 'NVLink-class'];
const BATCH = 32;
const STEPS = 6;

/** A step's spans on one worker: forward, a send and a wait (when it talks to peers), backward, the update. */
function stepSpans(step: number, stepStartMs: number, split: StepSplit): Span[] {
  const half = split.compute / 2;
  const spans: Span[] = [{ cat: 'compute', name: 'forward', startMs: stepStartMs, durMs: half, step }];
  let t = stepStartMs + half;
  if (split.send > 0) {
    spans.push({ cat: 'send', name: 'fc6 activations', startMs: t, durMs: split.send, step });
    t += split.send;
  }
  if (split.wait > 0) {
    spans.push({ cat: 'wait', name: 'bucket 0 all-reduce', startMs: t, durMs: split.wait, step });
    t += split.wait;
  }
  spans.push({ cat: 'compute', name: 'backward', startMs: t, durMs: half, step });
  // a layer's kernel inside the backward span: nested, so it stays on the same thread
  spans.push({ cat: 'compute', name: 'conv3 bwd', startMs: t + half / 4, durMs: half / 2, step });
  t += half;
  spans.push({ cat: 'optimizer', name: 'sgd', startMs: t, durMs: split.optimizer, step });
  return spans;
}

/** A worker that sent `bytesSent` per step where `predicted` were expected (exact unless given). */
function worker(rank: number, split: StepSplit, bytesSent: number, predicted = bytesSent): WorkerMeasure {
  const stepMs = split.compute + split.send + split.wait + split.optimizer;
  return {
    rank,
    stepMs: split,
    bytesSentPerStep: bytesSent,
    bytesReceivedPerStep: bytesSent,
    sentByLink: bytesSent > 0 ? { 'bucket 0': bytesSent } : {},
    cpuMsPerStep: stepMs * 1.1,
    peakRssBytes: 900e6 + rank * 1e6,
    peakBackendBytes: 310e6,
    predicted: { bytesSentPerStep: predicted, sentByLink: predicted > 0 ? { 'bucket 0': predicted } : {} },
    spans: Array.from({ length: STEPS }, (_, i) => stepSpans(i + 1, 5.25 + i * (stepMs + 0.4), split)).flat(),
  };
}

/** The losses every mode computes, with float32-sized differences between them. */
function losses(drift: number): number[] {
  return Array.from({ length: STEPS }, (_, i) => 2.3026 - 0.11 * i + 0.004 * Math.sin(i) + drift * i);
}

function mode(m: Omit<ModeMeasure, 'stepMs' | 'testAccuracy' | 'link'>): ModeMeasure {
  const stepMs = Math.max(...m.workers.map((w) => w.stepMs.compute + w.stepMs.send + w.stepMs.wait + w.stepMs.optimizer));
  return { ...m, link: 'loopback', stepMs, testAccuracy: 0.1875 };
}

function forecastPoint(workers: number, link: string, li: number, batch = BATCH): ForecastPoint {
  const stepMs = {
    data: 40 / workers + 12 * (li === 0 ? 1 : 0.1 * (4 - li)) * Math.log2(workers),
    model: 40 / workers + 30 / (li + 1),
    hybrid: 40 / workers + 8 / (li + 1) + 0.5 * workers,
  };
  const best = (['data', 'model', 'hybrid'] as const).reduce((a, b) => (stepMs[b] < stepMs[a] ? b : a));
  return { workers, link, batch, stepMs, best };
}

function fixture(): CompareResult {
  const single = mode({
    mode: 'single', world: 1, imagesPerSec: 412.5,
    workers: [worker(0, { compute: 71.2, send: 0, wait: 0, optimizer: 6.4 }, 0)],
    losses: losses(0),
    predicted: { bytesSentPerStep: 0, sentByLink: {}, stepMs: 75 },
  });
  const data = mode({
    mode: 'data', world: 2, imagesPerSec: 655.25,
    workers: [
      worker(0, { compute: 38.5, send: 2.25, wait: 4.5, optimizer: 6.1 }, 7_480_000),
      worker(1, { compute: 39.75, send: 2.5, wait: 3.25, optimizer: 6.2 }, 7_520_000),
    ],
    losses: losses(1e-7),
    predicted: { bytesSentPerStep: 7_300_000, sentByLink: { 'bucket 0': 7_300_000 }, stepMs: 49 },
  });
  const model = mode({
    mode: 'model', replicas: 1, towers: 2, world: 2, imagesPerSec: 530.125,
    workers: [
      worker(0, { compute: 36.25, send: 1.5, wait: 14.75, optimizer: 3.25 }, 1_240_000),
      worker(1, { compute: 35.5, send: 1.75, wait: 15.5, optimizer: 3.5 }, 1_310_000),
    ],
    losses: losses(-1e-7),
    predicted: { bytesSentPerStep: 1_179_648, sentByLink: { conv3: 393_216, fc6: 786_432 }, stepMs: 58 },
  });
  const hybrid = mode({
    mode: 'hybrid', world: 2, imagesPerSec: 601.5,
    workers: [
      worker(0, { compute: 37.5, send: 2, wait: 6.25, optimizer: 4.5 }, 2_100_000),
      worker(1, { compute: 37.25, send: 2.25, wait: 6.5, optimizer: 4.75 }, 2_140_000),
    ],
    losses: losses(2e-7),
    predicted: { bytesSentPerStep: 2_120_000, sentByLink: { 'bucket 0': 2_120_000 }, stepMs: 51 },
  });
  // rows × towers: rank r·2 + t; worker 3's bytes 4 short of its prediction, to show an error
  const grid = mode({
    mode: 'grid', replicas: 2, towers: 2, world: 4, imagesPerSec: 700.75,
    workers: [0, 1, 2, 3].map((rank) => worker(rank, { compute: 20.5 + rank, send: 1.25, wait: 9.5, optimizer: 2.5 }, 3_000_000 - (rank === 3 ? 4 : 0), 3_000_000)),
    losses: losses(-2e-7),
    predicted: { bytesSentPerStep: 3_000_000, sentByLink: { 'bucket 0': 3_000_000 }, stepMs: 40 },
  });

  const forecast = [2, 4, 8, 16].flatMap((w) => LINKS.map((link, li) => forecastPoint(w, link, li)));
  // a point at another batch, which the report (drawn at the run's batch) leaves out
  forecast.push(forecastPoint(2, LINKS[0]!, 0, BATCH * 2));
  return {
    date: '2025-03-14T09:26:53.589Z',
    config: { arch: 'alexnet', width: 0.25, resolution: 67, batch: BATCH, seed: 7, steps: STEPS, backend: 'wasm' },
    link: { latencyMs: 0.042, bandwidth: 2.35e9 },
    links: [{ name: 'loopback', latencyMs: 0.042, bandwidth: 2.35e9 }],
    overheads: { inputMs: 9.5, inputMsAtHalfBatch: 5.25, moveMsPerFloat: 2e-6, ringMsPerParam: 4e-6 },
    contention: [{ workers: 1, slowdown: 1 }, { workers: 2, slowdown: 1.6 }],
    layers: [
      { name: 'conv1', forwardMs: 4.1, backwardMs: 7.9, params: 34_944, outputFloats: 74_400 },
      { name: 'fc6', forwardMs: 2.2, backwardMs: 4.5, params: 9_438_208, outputFloats: 1024 },
    ],
    modes: [single, data, model, hybrid, grid],
    forecast,
    forecastCheck: [
      { mode: 'data', link: 'loopback', workers: 2, oversubscribed: false, measuredMs: data.stepMs, predictedMs: 49, error: (49 - data.stepMs) / data.stepMs },
      { mode: 'model', link: 'loopback', workers: 2, oversubscribed: true, measuredMs: model.stepMs, predictedMs: 58, error: (58 - model.stepMs) / model.stepMs },
      { mode: 'hybrid', link: 'loopback', workers: 2, oversubscribed: false, measuredMs: hybrid.stepMs, predictedMs: 51, error: (51 - hybrid.stepMs) / hybrid.stepMs },
      { mode: 'grid', link: 'loopback', workers: 4, oversubscribed: true, measuredMs: grid.stepMs, predictedMs: 40, error: (40 - grid.stepMs) / grid.stepMs },
    ],
  };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('chromeTrace', () => {
  const data = fixture().modes[1]!;
  const trace = chromeTrace(data);
  const complete = trace.traceEvents.filter((e): e is Extract<TraceEvent, { ph: 'X' }> => e.ph === 'X');
  const meta = trace.traceEvents.filter((e) => e.ph === 'M');

  it('is a trace object with millisecond display and only complete and metadata events', () => {
    expect(trace.displayTimeUnit).toBe('ms');
    expect(new Set(trace.traceEvents.map((e) => e.ph))).toEqual(new Set(['X', 'M']));
    expect(JSON.parse(JSON.stringify(trace))).toEqual(trace); // plain JSON, nothing lost in writing it
  });

  it('has one complete event per span, with its cat, name and step, on the worker\'s pid', () => {
    const spans = data.workers.flatMap((w) => w.spans.map((s) => ({ pid: pidOf(w.rank), cat: s.cat, name: s.name, step: s.step })));
    expect(complete).toHaveLength(spans.length);
    const key = (e: { pid: number; cat: string; name: string; step: number }) => `${e.pid}|${e.cat}|${e.name}|${e.step}`;
    expect(complete.map((e) => key({ ...e, step: e.args.step })).sort()).toEqual(spans.map(key).sort());
  });

  it('gives each worker rank its own pid (rank + 1, never 0), named "worker <rank>"', () => {
    const names = meta.filter((e) => e.name === 'process_name').map((e) => [e.pid, (e.args as { name: string }).name]);
    expect(names).toEqual([[1, 'worker 0'], [2, 'worker 1']]);
    expect(new Set(complete.map((e) => e.pid))).toEqual(new Set([1, 2]));
  });

  it('writes ts and dur in microseconds', () => {
    const first = data.workers[0]!.spans[0]!;
    const event = complete.find((e) => e.pid === 1 && e.args.step === first.step && e.name === first.name)!;
    expect(event.ts).toBe(first.startMs * 1000);
    expect(event.dur).toBe(first.durMs * 1000);
    expect(micros(1.1)).toBe(1100); // not 1100.0000000000002
  });

  it('puts each kind of work on its own named thread, and nested spans on the same one', () => {
    const threads = meta.filter((e) => e.name === 'thread_name' && e.pid === 1).map((e) => (e.args as { name: string }).name);
    expect(threads).toEqual(['compute', 'send', 'wait', 'optimizer']);
    const tidOf = (name: string) => complete.find((e) => e.pid === 1 && e.name === name)!.tid;
    expect(tidOf('conv3 bwd')).toBe(tidOf('backward'));
    expect(tidOf('sgd')).not.toBe(tidOf('backward'));
  });

  it("draws every worker of a 4-worker grid as a process of its own, named by its row and tower", () => {
    const grid = fixture().modes.find((m) => m.mode === 'grid')!;
    const t = chromeTrace(grid);
    const names = t.traceEvents.filter((e) => e.name === 'process_name').map((e) => [e.pid, (e.args as { name: string }).name]);
    expect(names).toEqual([[1, 'worker 0 · row 0, tower 0'], [2, 'worker 1 · row 0, tower 1'], [3, 'worker 2 · row 1, tower 0'], [4, 'worker 3 · row 1, tower 1']]);
    expect(new Set(t.traceEvents.filter((e) => e.ph === 'X').map((e) => e.pid))).toEqual(new Set([1, 2, 3, 4]));
    const model = chromeTrace(fixture().modes.find((m) => m.mode === 'model')!);
    expect(model.traceEvents.filter((e) => e.name === 'process_name').map((e) => (e.args as { name: string }).name)).toEqual(['worker 0 · tower 0', 'worker 1 · tower 1']);
  });

  it('moves a span that partly overlaps another of its kind to a second thread', () => {
    const overlapping: ModeMeasure = {
      ...data,
      workers: [{ ...data.workers[0]!, spans: [
        { cat: 'send', name: 'bucket 0', startMs: 0, durMs: 2, step: 1 },
        { cat: 'send', name: 'bucket 1', startMs: 1, durMs: 2, step: 1 },
        { cat: 'send', name: 'bucket 2', startMs: 3, durMs: 1, step: 1 },
      ] }],
    };
    const t = chromeTrace(overlapping);
    const threads = t.traceEvents.filter((e) => e.name === 'thread_name').map((e) => (e.args as { name: string }).name);
    expect(threads).toEqual(['send 1', 'send 2']);
    const tid = (name: string) => t.traceEvents.find((e) => e.name === name)!.tid;
    expect(tid('bucket 1')).not.toBe(tid('bucket 0'));
    expect(tid('bucket 2')).toBe(tid('bucket 0'));
  });
});

describe('renderReport', () => {
  it('names no URL and loads no script from outside the page', () => {
    const html = renderReport(fixture());
    expect(html).not.toMatch(/https?:\/\//i);
    expect(html).not.toMatch(/<script[^>]*\ssrc\s*=/i);
    expect(html).not.toMatch(/sourceMappingURL/);
  });

  it('escapes the data so a string in it cannot end the script element', () => {
    const r = fixture();
    r.config.arch = '</script><img src=x onerror=alert(1)>';
    const html = renderReport(r);
    expect(html).not.toContain('</script><img');
    const json = /<script type="application\/json" id="compare-data">([^<]*)<\/script>/.exec(html);
    expect(JSON.parse(json![1]!).config.arch).toBe(r.config.arch);
  });

  it('leaves the spans out of the page data (the traces carry them)', () => {
    const html = renderReport(fixture());
    expect(html).not.toContain('"spans"');
    expect(html).not.toContain('bucket 0 all-reduce');
  });

  it('says why a mode was skipped or ran in one process', () => {
    const r = fixture();
    r.modes[2] = { ...r.modes[2]!, skipped: 'model mode needs the two-tower net' };
    r.modes[1] = { ...r.modes[1]!, fallback: 'one device: both workers share it' };
    const html = renderReport(r);
    expect(html).toContain('<b>model</b> skipped: model mode needs the two-tower net');
    expect(html).toContain('<b>data</b> ran in one process: one device: both workers share it');
  });
});


describe('report.html in chromium', () => {
  const reports = new ReportBrowser();
  afterAll(async () => { await reports.close(); });
  const openReport = (result: CompareResult) => reports.openHtml(renderReport(result));

  it('draws all five charts from the run\'s own numbers, offline, without errors', async () => {
    const result = fixture();
    const { page, charts, errors, requests, dir } = await openReport(result);
    expect(Object.keys(charts).sort()).toEqual([...CHART_IDS].sort());
    const series = (id: string) => Object.fromEntries(charts[id]!.datasets.map((d) => [d.label, d.data]));
    const [single, data, model, hybrid, grid] = result.modes as [ModeMeasure, ModeMeasure, ModeMeasure, ModeMeasure, ModeMeasure];
    const label = (m: ModeMeasure) => (m.mode === 'grid' ? 'grid 2×2' : m.mode);

    // throughput: one bar per mode, its images/s
    expect(charts['chart-throughput']!.labels).toEqual(['single', 'data', 'model', 'hybrid', 'grid 2×2']);
    expect(charts['chart-throughput']!.datasets[0]!.data).toEqual(result.modes.map((m) => m.imagesPerSec));

    // breakdown: a stacked bar per worker of each mode, a dataset per part of the step
    const workers = result.modes.flatMap((m) => m.workers.map((w) => ({ label: `${label(m)} · worker ${w.rank}`, w })));
    expect(charts['chart-breakdown']!.labels).toEqual(workers.map((x) => x.label));
    for (const part of ['compute', 'send', 'wait', 'optimizer'] as const) {
      expect(series('chart-breakdown')[part]).toEqual(workers.map((x) => x.w.stepMs[part]));
    }

    // loss: x is the step, one line per mode with that mode's losses
    expect(charts['chart-loss']!.labels).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    expect(series('chart-loss')).toEqual({ single: single.losses, data: data.losses, model: model.losses, hybrid: hybrid.losses, 'grid 2×2': grid.losses });

    // bytes: predicted against the mean the workers measured
    expect(series('chart-bytes')).toEqual({
      'predicted': result.modes.map((m) => m.predicted.bytesSentPerStep),
      'measured (mean of workers)': result.modes.map((m) => mean(m.workers.map((w) => w.bytesSentPerStep))),
    });
    expect(series('chart-bytes')['measured (mean of workers)']).toEqual([0, 7_500_000, 1_275_000, 2_120_000, 2_999_999]);

    // forecast: at the run's batch only, a line per (mode, link) over the worker counts
    expect(charts['chart-forecast']!.labels).toEqual([2, 4, 8, 16]);
    const expected: Record<string, number[]> = {};
    for (const link of LINKS) {
      for (const m of ['data', 'model', 'hybrid'] as const) {
        expected[`${m} · ${link}`] = [2, 4, 8, 16].map((w) => result.forecast.find((p) => p.link === link && p.workers === w && p.batch === BATCH)!.stepMs[m]);
      }
    }
    expect(series('chart-forecast')).toEqual(expected);

    // every canvas laid out and painted
    const canvases = await page.evaluate((ids) => ids.map((id) => {
      const c = document.getElementById(id) as HTMLCanvasElement;
      const px = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
      let painted = 0;
      for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) painted++;
      return { id, width: c.width, height: c.height, paintedShare: painted / (c.width * c.height || 1) };
    }), CHART_IDS);
    for (const c of canvases) {
      expect(c.width * c.height, `${c.id} size`).toBeGreaterThan(0);
      expect(c.paintedShare, `${c.id} painted share of pixels`).toBeGreaterThan(0.01);
    }

    // the tables under the charts and the forecast check
    const rows = await page.evaluate(() => ({
      throughput: document.querySelectorAll('#chart-throughput-table tbody tr').length,
      forecast: document.querySelectorAll('#chart-forecast-table tbody tr').length,
      bestCells: document.querySelectorAll('#chart-forecast-table td.best').length,
      check: document.querySelectorAll('#forecast-check tbody tr').length,
      bytes: [...document.querySelectorAll('#chart-bytes-table tbody tr')].map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
    }));
    expect(rows).toMatchObject({ throughput: 5, forecast: 16, bestCells: 16, check: 4 });
    // bytes: every worker against the prediction for its rank
    expect(rows.bytes).toHaveLength(11);
    expect(rows.bytes[1]).toEqual(['data', '0', '7,480,000', '7,480,000', '0', '0.00 %']);
    expect(rows.bytes.at(-1)).toEqual(['grid 2×2', '3', '3,000,000', '2,999,996', '-4', '-0.00 %']);
    expect(await page.locator('#forecast-winners').textContent()).toContain('predicted / measured');

    expect(errors).toEqual([]);
    expect(requests.filter((u) => !u.startsWith('file://'))).toEqual([]);

    const shot = join(dir, 'report.png'); // beside the report.html it shows
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`report screenshot: ${shot}`);
    await page.close();
  });

  it('shows a skipped mode as skipped, with no bar, and draws the rest', async () => {
    const result = fixture();
    const skipped = (mode: 'model' | 'grid'): ModeMeasure => ({
      mode, link: 'loopback', world: 0, skipped: 'the d2l net has one tower: the split needs --arch original', imagesPerSec: 0, stepMs: 0, workers: [], losses: [],
      testAccuracy: 0, predicted: { bytesSentPerStep: 0, sentByLink: {}, stepMs: 0 },
    });
    result.modes[2] = skipped('model');
    result.modes[4] = skipped('grid');
    const { page, charts, errors } = await openReport(result);
    expect(charts['chart-throughput']!.labels).toEqual(['single', 'data', 'model (skipped)', 'hybrid', 'grid (skipped)']);
    expect(charts['chart-throughput']!.datasets[0]!.data).toEqual([412.5, 655.25, null, 601.5, null]);
    expect(charts['chart-loss']!.datasets.map((d) => d.label)).toEqual(['single', 'data', 'hybrid']);
    expect(charts['chart-bytes']!.labels).toEqual(['single', 'data', 'hybrid']);
    expect(await page.locator('#chart-throughput-table').textContent()).toContain('skipped: the d2l net has one tower: the split needs --arch original');
    expect(errors).toEqual([]);
    await page.close();
  });
});
