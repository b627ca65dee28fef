/**
 * `splitnet compare` as a user runs it: a real process that trains every
 * mode (single, data, model, hybrid and the 2 × 2 grid) on real
 * Fashion-MNIST with real worker processes (a tiny two-tower net, 3 steps
 * each), then its table, compare.json, report.html (opened in chromium) and
 * traces. Bad flags are refused before anything starts.
 *
 * The modes compute the same steps, so their losses agree to float32
 * rounding of differently ordered sums (1e-5 relative, as the equivalence
 * tests allow); the bytes each worker sent equal the prediction from the
 * layer shapes for its rank exactly.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseModes } from '../src/compare/command.js';
import { predictBytes } from '../src/compare/predict-bytes.js';
import type { CompareResult } from '../src/compare/types.js';
import { loadClusterConfig } from '../src/config/cluster.js';
import { alexnet } from '../src/model/alexnet.js';
import { splitnet, type CliResult } from './helpers/cli.js';
import { tempDir } from './helpers/idx-files.js';
import { ReportBrowser } from './helpers/report-browser.js';

const TINY = ['--backend', 'wasm', 'compare', '--width', '0.0625', '--resolution', '67', '--batch', '8', '--steps', '3', '--test-samples', '16', '--no-progress'];
/** Every mode compare has; the default leaves out grid (4 workers here). */
const ALL_MODES = ['single', 'data', 'model', 'hybrid', 'grid'];
const CLUSTER_MODES = ALL_MODES.slice(1);
/** The net TINY trains (compare takes the 2012 net in RGB). */
const TINY_NET = alexnet({ arch: 'original', width: 0.0625, resolution: 67, channels: 3, classes: 10 });

describe('splitnet compare', () => {
  let out: string;
  let run: CliResult;
  let result: CompareResult;

  beforeAll(() => {
    out = tempDir('splitnet-compare-');
    run = splitnet([...TINY, '--modes', ALL_MODES.join(','), '--out', out], {}, 400_000);
    result = JSON.parse(readFileSync(join(out, 'compare.json'), 'utf8')) as CompareResult;
  }, 420_000);

  const mode = (m: string) => result.modes.find((x) => x.mode === m)!;

  it('runs every mode on the same net and steps, each on its workers, and prints the side-by-side table', () => {
    expect(run.code, run.stderr).toBe(0);
    expect(result.modes.map((m) => [m.mode, m.layout, m.world, m.losses.length])).toEqual([
      ['single', 'single', 1, 3], ['data', 'data', 2, 3], ['model', 'model', 2, 3], ['hybrid', 'hybrid', 2, 3], ['grid', 'model', 4, 3]]);
    expect([mode('model').replicas, mode('model').towers, mode('grid').replicas, mode('grid').towers]).toEqual([1, 2, 2, 2]);
    expect(result.config).toMatchObject({ arch: 'original', width: 0.0625, resolution: 67, batch: 8, steps: 3 });
    expect(run.stdout).toMatch(/^mode +workers +img\/s +step ms +predicted +sent MiB +predicted +test acc % +last loss$/m);
    for (const m of ['single', 'data', 'model', 'hybrid', 'grid 2×2']) expect(run.stdout).toMatch(new RegExp(`^${m} +\\d`, 'm'));
    // each worker's bytes beside the prediction for its rank: exact
    const workerLines = run.stdout.split('\n').filter((l) => /^ {2}worker \d/.test(l));
    expect(workerLines).toHaveLength(1 + 2 + 2 + 2 + 4);
    for (const l of workerLines) expect(l).toMatch(/ \d+\.\d\d \(exact\) /);
    expect(run.stdout).toMatch(/^step-time model +loopback: predicted \/ measured ms \(error\)$/m);
    expect(run.stdout).toMatch(/^worst error where not oversubscribed: \d+%$/m);
  });

  it("every mode's losses coincide with one process's step by step (relative 1e-5)", () => {
    const ref = mode('single').losses;
    for (const m of CLUSTER_MODES) {
      mode(m).losses.forEach((l, i) => expect(Math.abs(l - ref[i]!) / Math.abs(ref[i]!), `${m} step ${i}`).toBeLessThan(1e-5));
    }
  });

  it('each worker sent exactly the bytes the layer shapes predict for its rank, by bucket and by cross link', () => {
    const { bucketBytes } = loadClusterConfig('cluster.config.json');
    for (const m of CLUSTER_MODES) {
      const { layout, world, replicas } = mode(m);
      for (const w of mode(m).workers) {
        // the prediction compare wrote for this worker is its rank's, made here again
        const expected = predictBytes(layout!, TINY_NET, world, 8, bucketBytes, 'fp32', { rank: w.rank, ...(layout === 'model' ? { replicas: replicas! } : {}) });
        expect(w.predicted, `${m} worker ${w.rank}`).toEqual(expected);
        expect(w.bytesSentPerStep, `${m} worker ${w.rank}`).toBe(expected.bytesSentPerStep);
        expect(w.sentByLink, `${m} worker ${w.rank}`).toEqual(expected.sentByLink);
      }
      // the mode's figure is the mean over its ranks
      expect(mode(m).predicted.bytesSentPerStep, m).toBeCloseTo(mode(m).workers.reduce((n, w) => n + w.predicted.bytesSentPerStep, 0) / world, 6);
    }
    expect(Object.keys(mode('model').predicted.sentByLink).sort()).toEqual(['conv3', 'fc6', 'fc7', 'fc8', 'logits']);
    expect(Object.keys(mode('grid').workers[0]!.sentByLink).filter((k) => !k.startsWith('bucket')).sort()).toEqual(['conv3', 'fc6', 'fc7', 'fc8', 'logits']);
    expect(Object.keys(mode('grid').workers[0]!.sentByLink).some((k) => k.startsWith('bucket'))).toBe(true);
    expect(Object.keys(mode('hybrid').workers[0]!.sentByLink)).toEqual(expect.arrayContaining(['fc6', 'logits', 'bucket 0']));
    expect(mode('single').workers[0]!.bytesSentPerStep).toBe(0);
    expect(mode('single').workers[0]!.predicted).toEqual({ bytesSentPerStep: 0, sentByLink: {} });
  });

  it("splits each worker's step into compute, send, wait and optimizer, and reports its memory", () => {
    for (const m of result.modes) {
      for (const w of m.workers) {
        const { compute, send, wait, optimizer } = w.stepMs;
        expect(compute, `${m.mode} compute`).toBeGreaterThan(0);
        expect(optimizer, `${m.mode} optimizer`).toBeGreaterThan(0);
        // the parts are the worker's own step: not more than the coordinator saw, nor far less
        const total = compute + send + wait + optimizer;
        expect(total, `${m.mode} worker ${w.rank} parts against the step`).toBeLessThanOrEqual(m.stepMs * 1.05);
        expect(total, `${m.mode} worker ${w.rank} parts against the step`).toBeGreaterThan(m.stepMs * 0.5);
        if (m.mode !== 'single') expect(send, `${m.mode} worker ${w.rank} send`).toBeGreaterThan(0);
        expect(w.peakRssBytes).toBeGreaterThan(50 * 2 ** 20);
        expect(w.peakBackendBytes).toBeGreaterThan(0);
        expect(w.spans.some((s) => s.cat === 'compute')).toBe(true);
      }
    }
    expect(mode('model').workers.every((w) => w.bytesReceivedPerStep === w.bytesSentPerStep)).toBe(true);
  });

  it("reports the step-time model's error for every mode measured, and data at 3 and 4 workers, and forecasts 2–16 workers on four links", () => {
    expect(result.forecastCheck.map((c) => `${c.mode}×${c.workers}`)).toEqual(['single×1', 'data×2', 'model×2', 'hybrid×2', 'grid×4', 'data×3', 'data×4']);
    for (const m of result.modes) {
      const c = result.forecastCheck.find((x) => x.mode === m.mode && x.workers === m.world)!;
      expect(c, m.mode).toMatchObject({ measuredMs: m.stepMs, predictedMs: m.predicted.stepMs });
    }
    expect(run.stdout).toMatch(/^fastest as compared, predicted \/ measured: loopback (single|data|model|hybrid|grid) \/ (single|data|model|hybrid|grid)/m);
    for (const c of result.forecastCheck) expect(Number.isFinite(c.error), `${c.mode}×${c.workers}`).toBe(true);
    const links = [...new Set(result.forecast.map((p) => p.link))];
    expect(links).toEqual(['loopback (measured)', '10 Gb/s', '100 Gb/s', 'NVLink-class']);
    expect([...new Set(result.forecast.map((p) => p.workers))]).toEqual([2, 4, 8, 16]);
    expect(result.link.bandwidth).toBeGreaterThan(0);
    expect(result.layers.map((l) => l.name)).toContain('conv3');
    expect(result.contention.map((c) => c.workers)).toEqual([1, 2, 3, 4]);
  });

  it("feeds the prediction a step's host work and a 2-worker calibration run, all measured", () => {
    const o = result.overheads;
    expect(o.inputMs).toBeGreaterThan(0);
    expect(o.moveMsPerFloat).toBeGreaterThan(0);
    expect(o.ringMsPerParam).toBeGreaterThan(0);
    expect(result.calibration!.slowdown).toBeGreaterThanOrEqual(1);
    expect(result.calibration!.envelopeMs).toBeGreaterThanOrEqual(0);
    expect(result.overheads.envelopeMs).toBe(result.calibration!.envelopeMs);
  });

  it('writes a Chrome trace per mode, with a process per worker', () => {
    for (const m of ALL_MODES) {
      const trace = JSON.parse(readFileSync(join(out, `trace-${m}.json`), 'utf8')) as { traceEvents: Array<{ ph: string; pid: number }> };
      const pids = new Set(trace.traceEvents.filter((e) => e.ph === 'X').map((e) => e.pid));
      expect(pids.size, m).toBe(mode(m).world);
    }
  });

  const browser = new ReportBrowser();
  afterAll(async () => { await browser.close(); });

  it("report.html opens offline in chromium and draws every chart with this run's numbers", async () => {
    expect(existsSync(join(out, 'report.html'))).toBe(true);
    const { page, charts, errors, requests } = await browser.open(join(out, 'report.html'));
    expect(charts['chart-throughput']!.datasets[0]!.data).toEqual(result.modes.map((m) => m.imagesPerSec));
    expect(Object.fromEntries(charts['chart-loss']!.datasets.map((d) => [d.label, d.data]))).toEqual(
      Object.fromEntries(result.modes.map((m) => [m.mode === 'grid' ? 'grid 2×2' : m.mode, m.losses])));
    expect(errors).toEqual([]);
    expect(requests.filter((u) => !u.startsWith('file://'))).toEqual([]);
    const shot = join(out, 'report.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`report of a real compare run: ${shot}`);
    await page.close();
  });
});

describe('splitnet compare when it cannot run as asked: bad flags are refused, missing devices and towers explained', () => {
  it('--modes must name single, data, model, hybrid or grid, each once', () => {
    expect(parseModes('data, model,hybrid ,grid')).toEqual(['data', 'model', 'hybrid', 'grid']);
    expect(() => parseModes('data,pipeline')).toThrow("--modes: 'pipeline' is not a mode: expected single, data, model, hybrid, grid");
    expect(() => parseModes('data,data')).toThrow("--modes: 'data' is given twice");
    expect(() => parseModes(' , ')).toThrow('--modes: expected a comma list of single, data, model, hybrid, grid');
  });

  it('--steps and --epochs together, or a net too small for its input, exit 2 with one line', () => {
    const both = splitnet(['compare', '--steps', '2', '--epochs', '1']);
    expect(both.code).toBe(2);
    expect(both.stderr).toBe('splitnet: --steps and --epochs: give one budget, not both\n');
    const small = splitnet(['compare', '--resolution', '20']);
    expect(small.code).toBe(2);
    expect(small.stderr).toMatch(/^splitnet: .*20/);
    const odd = splitnet(['--backend', 'wasm', 'compare', '--modes', 'single,hybrid', '--width', '0.0625', '--batch', '5', '--out', tempDir('splitnet-compare-odd-')]);
    expect(odd.code).toBe(2);
    expect(odd.stderr).toBe('splitnet: --modes hybrid (2 workers): global batch 5 does not split evenly over 2 workers\n');
  });

  it('falls back to one process where the config names GPUs this machine lacks, and says so', () => {
    const dir = tempDir('splitnet-compare-gpus-');
    const config = join(dir, 'gpus.json');
    writeFileSync(config, JSON.stringify({
      coordinator: { host: '127.0.0.1', port: 5550 }, transport: 'tcp',
      workers: [{ host: '127.0.0.1', device: 0, port: 5560 }, { host: '127.0.0.1', device: 1, port: 5561 }],
    }));
    const r = splitnet(['--backend', 'wasm', 'compare', '--config', config, '--modes', 'data', '--width', '0.0625', '--batch', '8', '--steps', '2',
      '--test-samples', '8', '--no-progress', '--no-forecast-check', '--out', join(dir, 'out')], { SPLITNET_GPUS: '0' }, 120_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/1 of 2 configured devices are available .*: training in one process \(single mode\)/);
    expect(r.stdout).toMatch(/^data \(in one process\) +1 /m);
    const saved = JSON.parse(readFileSync(join(dir, 'out', 'compare.json'), 'utf8')) as CompareResult;
    expect(saved.modes[0]).toMatchObject({ mode: 'data', world: 1, fallback: expect.stringMatching(/training in one process/) as unknown });
  });

  it('says why model and grid are skipped on the one-tower d2l net, and runs the rest', () => {
    const out = tempDir('splitnet-compare-d2l-');
    const r = splitnet(['--backend', 'wasm', 'compare', '--arch', 'd2l', '--modes', 'single,model,grid', '--width', '0.0625', '--batch', '8', '--steps', '2',
      '--test-samples', '8', '--no-progress', '--no-forecast-check', '--out', out], {}, 120_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^model +skipped: the d2l net has one tower: the split needs --arch original$/m);
    expect(r.stdout).toMatch(/^grid +skipped: the d2l net has one tower: the split needs --arch original$/m);
    // the reason does not stretch the table's columns
    expect(r.stdout.split('\n').find((l) => l.startsWith('mode '))!.length).toBeLessThan(120);
    const saved = JSON.parse(readFileSync(join(out, 'compare.json'), 'utf8')) as CompareResult;
    const why = 'the d2l net has one tower: the split needs --arch original';
    expect(saved.modes.map((m) => [m.mode, m.skipped ?? 'ran'])).toEqual([['single', 'ran'], ['model', why], ['grid', why]]);
  });
});
