/**
 * The GPU check: what splitnet does on a real GPU through WebGPU, in one
 * command of a few minutes. `scripts/gpu-check.sh` bundles it for a bare GPU
 * machine (no Node, no network); here it runs with `npm run gpu-check`, and
 * `--adapter software --quick` rehearses every part of it on Mesa's llvmpipe.
 *
 * Parts, each recorded in gpu-check.json even when one fails:
 *   1. adapter   the WebGPU adapter found (name, vendor, software or not)
 *   2. step      one SGD step of d2l AlexNet (224×224, batch 128) on WebGPU: images/s
 *   3. torch     the same net, batch and step in PyTorch on the same GPU (cuDNN): the ratio
 *   4. wasm      the same step on this project's wasm backend (one CPU thread): the ratio
 *   5. modes     data- and model-parallel, two workers sharing the GPU, each
 *                against one process on the same GPU (relative error of the updates)
 *   6. train     a short real run on Fashion-MNIST, the seed's recipe: test accuracy
 *   7. kernels   per conv layer, tfjs's naive filter gradient against ours (matmul),
 *                and the direct input gradient against tfjs's matmul form (batch 32)
 *   8. layers    per layer, forward and backward of one training step, the GPU
 *                waited for after each (which layer to fix next)
 *   9. devices   each GPU of this host opened by its PCI address in a process of
 *                its own (Mesa's device-select layer), and the adapter it got
 */
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync, appendFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { initBackend, type BackendInfo } from '../src/backend.js';
import { parseClusterConfig } from '../src/config/cluster.js';
import { CPU_DEFAULTS, D2L_RECIPE, type TrainConfig } from '../src/config/train.js';
import { readFloats } from '../src/kernels/read.js';
import { specOf } from '../src/model/alexnet.js';
import { buildModel, disposeModel } from '../src/model/build.js';
import { train } from '../src/run/loop.js';
import { freePorts } from '../src/wire/free-ports.js';
import { closeWebGpu, parseAdapterWant } from '../src/webgpu.js';
import { listPciGpus } from '../src/gpu-pci.js';
import { profileLayers } from '../src/compare/profile-layers.js';
import { timeConvGradients } from './webgpu-kernels.js';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const fromSource = fileURLToPath(import.meta.url).endsWith('.ts');

const { values: o } = parseArgs({
  options: {
    out: { type: 'string', default: join(here, 'results', 'gpu-check') },
    adapter: { type: 'string', default: 'hardware' },
    python: { type: 'string', default: 'python3' },
    data: { type: 'string' },
    'train-steps': { type: 'string', default: '300' },
    quick: { type: 'boolean', default: false },
  },
  strict: true,
});

/** Sizes: the issue's on a GPU; --quick shrinks everything so llvmpipe finishes in a minute or two. */
const SIZE = o.quick
  ? { resolution: 67, width: 0.25, batch: 16, steps: 2, warmup: 1, wasmSteps: 1, modeWidth: 1 / 16, modeResolution: 67, modeBatch: 8, trainResolution: 67, trainWidth: 0.25, trainBatch: 32, kernelBatch: 4, kernelRuns: 1 }
  : { resolution: 224, width: 1, batch: 128, steps: 5, warmup: 2, wasmSteps: 1, modeWidth: 1 / 4, modeResolution: 131, modeBatch: 32, trainResolution: 224, trainWidth: 1, trainBatch: 128, kernelBatch: 32, kernelRuns: 3 };
/** Relative error allowed on the weight updates of the parallel modes: the CI tests' tolerance. */
const MODE_TOLERANCE = 1e-4;

mkdirSync(o.out, { recursive: true });
const logFile = join(o.out, 'gpu-check.log');
writeFileSync(logFile, '');
const log = (line: string) => {
  console.log(line);
  appendFileSync(logFile, `${line}\n`);
};

const report: Record<string, unknown> = { date: new Date().toISOString(), options: o, sizes: SIZE };
let failures = 0;
const save = () => writeFileSync(join(o.out, 'gpu-check.json'), `${JSON.stringify(report, null, 2)}\n`);

/** Runs one part; a failure is recorded with its message and the check goes on. */
async function part(name: string, fn: () => Promise<unknown>): Promise<void> {
  log(`== ${name}`);
  const t0 = performance.now();
  try {
    report[name] = { ...(await fn() as object), seconds: Math.round(performance.now() - t0) / 1000 };
  } catch (err) {
    failures++;
    const message = err instanceof Error ? err.message : String(err);
    report[name] = { error: message, seconds: Math.round(performance.now() - t0) / 1000 };
    log(`   FAILED: ${message}`);
  }
  save();
}

/** Runs compute-step in its own process (a fresh backend, as the compute benchmark does); returns its JSON. */
async function computeStep(backend: 'webgpu' | 'wasm', steps: number, warmup: number, flags: string[] = []): Promise<{ imagesPerSec: number; medianStepMs: number }> {
  const script = join(here, `compute-step.${fromSource ? 'ts' : 'js'}`);
  const args = [...(fromSource ? ['--import', 'tsx'] : []), script, '--backend', backend, '--adapter', o.adapter,
    '--resolution', String(SIZE.resolution), '--width', String(SIZE.width), '--batch', String(SIZE.batch),
    '--steps', String(steps), '--warmup', String(warmup), ...flags.flatMap((f) => ['--flag', f])];
  const { stdout, stderr } = await run(process.execPath, args, { maxBuffer: 16 * 2 ** 20, timeout: 20 * 60_000 });
  for (const line of stderr.split('\n')) if (line.trim() !== '' && !line.includes('artificially reduced')) log(`   ${line}`);
  return JSON.parse(stdout.trim().split('\n').pop()!) as { imagesPerSec: number; medianStepMs: number };
}

/** Worst relative error of (got − w0) against (want − w0) over every parameter. */
function worstUpdateError(got: Map<string, Float32Array>, want: Map<string, Float32Array>, w0: Map<string, Float32Array>): number {
  let worst = 0;
  for (const [name, w] of want) {
    const g = got.get(name)!;
    const z = w0.get(name)!;
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < w.length; i++) {
      diff = Math.max(diff, Math.abs((g[i]! - z[i]!) - (w[i]! - z[i]!)));
      scale = Math.max(scale, Math.abs(w[i]! - z[i]!));
    }
    worst = Math.max(worst, scale === 0 ? diff : diff / scale);
  }
  return worst;
}

async function initialWeights(config: TrainConfig): Promise<Map<string, Float32Array>> {
  const model = buildModel(specOf(config), { seed: config.seed });
  const out = new Map<string, Float32Array>();
  for (const [name, v] of model.params) out.set(name, await readFloats(v));
  disposeModel(model);
  return out;
}

const dataSettings = (): Partial<TrainConfig> => (o.data === undefined ? {} : { dataDir: o.data });
let gpu: BackendInfo | undefined;
let step: { imagesPerSec: number } | undefined;

await part('adapter', async () => {
  gpu = await initBackend('webgpu', parseAdapterWant(o.adapter));
  log(`   ${gpu.reason}`);
  return { ...gpu.adapter, backend: gpu.name };
});

await part('step', async () => {
  const r = await computeStep('webgpu', SIZE.steps, SIZE.warmup);
  step = r;
  log(`   webgpu: ${r.imagesPerSec.toFixed(1)} img/s (${r.medianStepMs.toFixed(1)} ms/step), d2l ${SIZE.resolution}×${SIZE.resolution}, batch ${SIZE.batch}`);
  // tfjs computes Conv2DBackpropInput with a naive shader by default; its matmul
  // form may be faster on a real GPU. Measured here, where it matters.
  const matmulInput = await computeStep('webgpu', SIZE.steps, SIZE.warmup, ['WEBGPU_USE_NAIVE_CONV2D_TRANSPOSE=false']);
  log(`   webgpu, input gradients as matmuls (WEBGPU_USE_NAIVE_CONV2D_TRANSPOSE=false): ${matmulInput.imagesPerSec.toFixed(1)} img/s (${matmulInput.medianStepMs.toFixed(1)} ms/step)`);
  return { ...r, matmulInputGradient: matmulInput };
});

/** PyTorch's step on the same device; strict: no TF32 in convolutions (float32 throughout, as WebGPU). */
async function torchStep(strict: boolean): Promise<{ imagesPerSec: number; medianStepMs: number; device: string }> {
  const device = o.adapter === 'software' ? 'cpu' : 'cuda';
  const { stdout } = await run(o.python, [join(here, 'torch_alexnet.py'), '--device', device, '--resolution', String(SIZE.resolution),
    '--width', String(SIZE.width), '--batch', String(SIZE.batch), '--steps', String(SIZE.steps), '--warmup', String(SIZE.warmup),
    '--threads', '1', ...(strict ? ['--strict-fp32'] : [])], { timeout: 10 * 60_000 }).catch((err: { stdout?: string; message: string }) => {
    const said = (() => { try { return (JSON.parse(err.stdout ?? '') as { error?: string }).error; } catch { return undefined; } })();
    throw new Error(said ?? err.message.split('\n')[0]!);
  });
  return JSON.parse(stdout.trim().split('\n').pop()!) as { imagesPerSec: number; medianStepMs: number; device: string };
}

await part('torch', async () => {
  const r = await torchStep(false);
  const ratio = step ? step.imagesPerSec / r.imagesPerSec : undefined;
  log(`   pytorch on ${r.device} (its defaults: cuDNN autotuned, TF32 convolutions): ${r.imagesPerSec.toFixed(1)} img/s (${r.medianStepMs} ms/step)` +
    (ratio === undefined ? '' : `; splitnet webgpu / pytorch = ${ratio.toFixed(3)} (target ≥ 0.25)`));
  const strict = await torchStep(true);
  const strictRatio = step ? step.imagesPerSec / strict.imagesPerSec : undefined;
  log(`   pytorch, float32 throughout (no TF32): ${strict.imagesPerSec.toFixed(1)} img/s (${strict.medianStepMs} ms/step)` +
    (strictRatio === undefined ? '' : `; splitnet webgpu / pytorch = ${strictRatio.toFixed(3)}`));
  return { ...r, webgpuOverTorch: ratio, strictFp32: { ...strict, webgpuOverTorch: strictRatio } };
});

await part('wasm', async () => {
  const r = await computeStep('wasm', SIZE.wasmSteps, 1);
  const ratio = step ? step.imagesPerSec / r.imagesPerSec : undefined;
  log(`   wasm (one thread): ${r.imagesPerSec.toFixed(2)} img/s (${r.medianStepMs.toFixed(0)} ms/step)` +
    (ratio === undefined ? '' : `; webgpu / wasm = ${ratio.toFixed(1)}× (target ≥ 50×)`));
  return { ...r, webgpuOverWasm: ratio };
});

await part('modes', async () => {
  const base: TrainConfig = {
    ...CPU_DEFAULTS, ...dataSettings(), backend: 'webgpu', adapter: o.adapter, width: SIZE.modeWidth, resolution: SIZE.modeResolution,
    batch: SIZE.modeBatch, epochs: 1, trainSamples: 4 * SIZE.modeBatch, testSamples: 2 * SIZE.modeBatch, checkpointEvery: 0,
  };
  const results: Record<string, unknown> = {};
  for (const [mode, config] of [['data', base], ['model', { ...base, arch: 'original', channels: 3, init: 'xavier-uniform' }]] as const) {
    const quiet = { log: () => {}, progress: false };
    const one = await train({ config, outDir: mkdtempSync(join(tmpdir(), 'gpu-check-')), ...quiet });
    const w0 = await initialWeights(config);
    const ports = await freePorts(3);
    // Both workers on the same GPU: the config says they share it.
    const device = o.adapter === 'hardware' ? 0 : o.adapter;
    const cluster = parseClusterConfig({
      coordinator: { host: '127.0.0.1', port: ports[0] }, transport: 'tcp',
      workers: [1, 2].map((i) => ({ host: '127.0.0.1', device: /^\d+$/.test(String(device)) ? Number(device) : device, shared: true, port: ports[i] })),
    }, 'gpu-check cluster');
    const split = await train({ config, outDir: mkdtempSync(join(tmpdir(), 'gpu-check-')), mode, cluster, workers: cluster.workers, ...quiet });
    const err = worstUpdateError(split.params, one.params, w0);
    const lossDiff = Math.max(...split.losses.map((l, i) => Math.abs(l - one.losses[i]!)));
    const ok = err < MODE_TOLERANCE && Number.isFinite(err);
    log(`   ${mode}-parallel, 2 workers sharing the GPU, ${config.arch} width ${config.width}, ${config.resolution}×${config.resolution}, batch ${config.batch}, ${split.losses.length} steps: ` +
      `worst relative error of the updates ${err.toExponential(2)} (tolerance ${MODE_TOLERANCE}), largest loss difference ${lossDiff.toExponential(2)} ${ok ? 'ok' : 'TOO LARGE'}`);
    if (!ok) failures++;
    results[mode] = { worstUpdateError: err, largestLossDifference: lossDiff, tolerance: MODE_TOLERANCE, ok, losses: split.losses, single: one.losses, steps: split.losses.length };
  }
  return results;
});

await part('train', async () => {
  const steps = Number(o['train-steps']);
  const config: TrainConfig = {
    ...CPU_DEFAULTS, ...D2L_RECIPE, ...dataSettings(), backend: 'webgpu', adapter: o.adapter,
    resolution: SIZE.trainResolution, width: SIZE.trainWidth, batch: SIZE.trainBatch, epochs: 1,
    trainSamples: steps * SIZE.trainBatch, testSamples: 0, checkpointEvery: 0, data: 'fashion-mnist',
  };
  const r = await train({ config, outDir: mkdtempSync(join(tmpdir(), 'gpu-check-')), log: (l) => log(`   ${l}`), progress: false });
  const e = r.epochs.at(-1)!;
  log(`   ${r.losses.length} steps of the d2l recipe (lr ${config.lr}, batch ${config.batch}, ${config.resolution}×${config.resolution}): ` +
    `test accuracy ${(e.accuracy * 100).toFixed(2)}% on ${e.samples} images; ${r.imagesPerSec.toFixed(1)} img/s over the training steps, data loading included`);
  return {
    steps: r.losses.length, testAccuracy: e.accuracy, testLoss: e.loss, testImages: e.samples, firstLoss: r.losses[0], lastLoss: r.losses.at(-1),
    imagesPerSec: r.imagesPerSec, trainSeconds: r.trainSeconds,
  };
});

await part('kernels', async () => {
  await initBackend('webgpu', parseAdapterWant(o.adapter));
  const opts = { resolution: SIZE.resolution, width: SIZE.width, batch: SIZE.kernelBatch, runs: SIZE.kernelRuns };
  log(`   d2l ${opts.resolution}×${opts.resolution}, batch ${opts.batch}, median of ${opts.runs}`);
  return { ...opts, rows: await timeConvGradients(opts, (l) => log(`   ${l.trim()}`)) };
});

await part('layers', async () => {
  await initBackend('webgpu', parseAdapterWant(o.adapter));
  const config: TrainConfig = { ...CPU_DEFAULTS, ...D2L_RECIPE, backend: 'webgpu', adapter: o.adapter, resolution: SIZE.resolution, width: SIZE.width, batch: SIZE.batch };
  const { layers, optimizerMs } = await profileLayers(config);
  const total = layers.reduce((n, l) => n + l.forwardMs + l.backwardMs, 0) + optimizerMs;
  for (const l of [...layers].sort((a, b) => (b.forwardMs + b.backwardMs) - (a.forwardMs + a.backwardMs))) {
    if (l.forwardMs + l.backwardMs < 0.01 * total) continue;
    log(`   ${l.name.padEnd(9)} forward ${l.forwardMs.toFixed(1).padStart(7)} ms, backward ${l.backwardMs.toFixed(1).padStart(7)} ms (${(100 * (l.forwardMs + l.backwardMs) / total).toFixed(0)}%)`);
  }
  log(`   optimizer ${optimizerMs.toFixed(1)} ms; one step ${total.toFixed(1)} ms at batch ${config.batch} (the GPU waited for after every layer)`);
  return { batch: config.batch, layers, optimizerMs, totalMs: total };
});

await part('devices', async () => {
  const gpus = listPciGpus();
  if (o.adapter === 'software' || gpus.length === 0) {
    log(`   ${o.adapter === 'software' ? 'the software adapter has no PCI address' : 'no GPU listed by nvidia-smi or sysfs'}: nothing to isolate`);
    return { gpus, skipped: true };
  }
  const cli = join(here, '..', 'src', `cli.${fromSource ? 'ts' : 'js'}`);
  const opened = [];
  for (const g of gpus.slice(0, 2)) {
    // A process of its own per GPU: the layer's environment is read when Vulkan starts.
    const r = await run(process.execPath, [...(fromSource ? ['--import', 'tsx'] : []), cli, '--backend', 'webgpu', '--adapter', g.pci, 'backend'], { timeout: 120_000 })
      .then((x) => ({ ok: true, text: x.stdout.trim() }), (err: { stdout?: string; stderr?: string; message: string }) => ({ ok: false, text: (err.stderr || err.message).trim().split('\n').pop()! }));
    const got = r.ok && r.text.includes(`PCI ${g.pci}`);
    log(`   GPU ${g.index} (${g.pci}${g.name ? `, ${g.name}` : ''}): ${got ? 'isolated' : 'NOT isolated'}: ${r.text}`);
    if (!got) failures++;
    opened.push({ ...g, isolated: got, said: r.text });
  }
  return { gpus, opened };
});

report.failures = failures;
save();
log(`wrote ${join(o.out, 'gpu-check.json')} and ${logFile}: ${failures === 0 ? 'every part passed' : `${failures} part(s) failed`}`);
closeWebGpu();
process.exitCode = failures === 0 ? 0 : 1;
