/**
 * `npm run bench -- compute`: images/s of one SGD training step, d2l AlexNet
 * (default 96×96, width 1, batch 32), each variant in its own process, all in
 * one run so the figures compare (the machine is shared and noisy):
 *   - wasm with all of splitnet's composed kernels (what training uses)
 *   - wasm with only the missing Conv2DBackpropFilter added (the starting point)
 *   - PyTorch on the CPU with one thread, where /usr/bin/python3 imports torch
 * Writes bench/results/compute.json.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));

export interface ComputeOptions {
  resolution: number;
  width: number;
  batch: number;
  steps: number;
  warmup: number;
  torch: boolean;
  python: string;
}

interface StepResult {
  framework: string;
  kernels?: string;
  medianStepMs: number;
  imagesPerSec: number;
  stepMs: number[];
  error?: string;
}

async function tfjsVariant(o: ComputeOptions, kernels: 'all' | 'filter-only'): Promise<StepResult> {
  const args = ['--import', 'tsx', join(here, 'compute-step.ts'),
    '--resolution', String(o.resolution), '--width', String(o.width), '--batch', String(o.batch),
    '--steps', String(o.steps), '--warmup', String(o.warmup)];
  const { stdout } = await run(process.execPath, args, {
    env: { ...process.env, SPLITNET_WASM_KERNELS: kernels },
    maxBuffer: 16 * 2 ** 20,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!) as StepResult;
}

/**
 * Debian's python3-torch runs its Linear layers on whatever libblas.so.3 the
 * loader finds. The reference BLAS is a plain loop (~5x slower at this size
 * than OpenBLAS), so PyTorch is timed on each BLAS present, chosen per process
 * with LD_LIBRARY_PATH.
 */
const BLAS_DIRS: Array<{ label: string; dir: string }> = [
  { label: 'OpenBLAS', dir: '/usr/lib/x86_64-linux-gnu/openblas-pthread' },
  { label: 'reference BLAS', dir: '/usr/lib/x86_64-linux-gnu/blas' },
];

async function torchVariant(o: ComputeOptions, blasDir: string | undefined): Promise<StepResult> {
  const args = [join(here, 'torch_alexnet.py'), '--resolution', String(o.resolution), '--width', String(o.width),
    '--batch', String(o.batch), '--steps', String(o.steps), '--warmup', String(o.warmup), '--threads', '1'];
  // One thread for OpenMP (torch.set_num_threads) and for OpenBLAS's own pool.
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: '1', OMP_NUM_THREADS: '1' };
  if (blasDir !== undefined) env.LD_LIBRARY_PATH = blasDir;
  try {
    const { stdout } = await run(o.python, args, { env });
    return JSON.parse(stdout.trim().split('\n').pop()!) as StepResult;
  } catch (err) {
    const e = err as { stdout?: string; message: string };
    let detail = e.message.split('\n')[0];
    try {
      detail = (JSON.parse(e.stdout?.trim() ?? '') as { error?: string }).error ?? detail;
    } catch { /* not our JSON: keep the process error */ }
    return { framework: 'pytorch', medianStepMs: NaN, imagesPerSec: NaN, stepMs: [], error: detail ?? 'failed' };
  }
}

async function torchVariants(o: ComputeOptions): Promise<Array<StepResult & { blas: string }>> {
  const present = BLAS_DIRS.filter((b) => existsSync(join(b.dir, 'libblas.so.3')));
  if (present.length === 0) return [{ ...(await torchVariant(o, undefined)), blas: 'system default' }];
  const out: Array<StepResult & { blas: string }> = [];
  for (const b of present) out.push({ ...(await torchVariant(o, b.dir)), blas: b.label });
  return out;
}

export async function computeBench(o: ComputeOptions): Promise<void> {
  console.log(`compute: d2l AlexNet ${o.resolution}×${o.resolution}, width ${o.width}, batch ${o.batch}, ` +
    `one SGD step, median of ${o.steps} after ${o.warmup} warm-up, one thread each`);
  const splitnet = await tfjsVariant(o, 'all');
  const startingPoint = await tfjsVariant(o, 'filter-only');
  const torch = o.torch ? await torchVariants(o) : [];
  const row = (name: string, r: StepResult) =>
    console.log(`  ${name.padEnd(44)} ${r.error ? `skipped: ${r.error}` : `${r.imagesPerSec.toFixed(2).padStart(7)} img/s  (${r.medianStepMs.toFixed(0)} ms/step)`}`);
  row('wasm + splitnet kernels', splitnet);
  row('wasm + Conv2DBackpropFilter only', startingPoint);
  for (const t of torch) row(`${t.framework}, 1 thread, ${t.blas}`, t);
  const speedup = splitnet.imagesPerSec / startingPoint.imagesPerSec;
  console.log(`  splitnet kernels vs starting point: ${speedup.toFixed(2)}×`);
  const ratios: Record<string, { splitnet: number; startingPoint: number }> = {};
  for (const t of torch.filter((t) => !t.error)) {
    ratios[t.blas] = { splitnet: splitnet.imagesPerSec / t.imagesPerSec, startingPoint: startingPoint.imagesPerSec / t.imagesPerSec };
    console.log(`  wasm / PyTorch (${t.blas}): ${ratios[t.blas]!.splitnet.toFixed(2)} (starting point: ${ratios[t.blas]!.startingPoint.toFixed(2)})`);
  }
  const out = join(here, 'results', 'compute.json');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({
    bench: 'compute', date: new Date().toISOString(), options: o,
    results: { splitnet, startingPoint, torch },
    speedupVsStartingPoint: speedup, ratioToTorch: ratios,
  }, null, 2) + '\n');
  console.log(`  wrote ${out}`);
}
