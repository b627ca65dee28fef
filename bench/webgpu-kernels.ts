/**
 * `npm run bench -- webgpu-kernels`: the convolution gradients WebGPU runs,
 * per layer of d2l AlexNet (default 224×224, width 1, batch 32), each variant
 * timed on the same adapter in one run:
 *   filter gradient  tfjs 4.22's naive shader  vs  ours as matrix products
 *                    (src/kernels/conv2d-backprop-filter-matmul.ts)
 *   input gradient   tfjs's direct shader (its default,
 *                    WEBGPU_USE_NAIVE_CONV2D_TRANSPOSE)  vs  tfjs's matmul form
 * Default adapter: 'software' (Mesa's llvmpipe, a CPU rasterizer): a proxy
 * for a GPU. Each figure is the median of --runs timed calls after one
 * untimed call (shader compilation), waiting for the device each time.
 * Writes bench/results/webgpu-kernels.json.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/backend.js';
import { gpuIdle } from '../src/compare/profile-layers.js';
import { CPU_DEFAULTS } from '../src/config/train.js';
import { registerWebGpuTrainingKernels, type WebGpuFilterGradient } from '../src/kernels/register.js';
import { specOf } from '../src/model/alexnet.js';
import { shapesOf } from '../src/model/shapes.js';
import { closeWebGpu, parseAdapterWant } from '../src/webgpu.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface WebGpuKernelOptions { resolution: number; width: number; batch: number; runs: number; adapter: string; layers?: string; inputGradients?: boolean }

interface ConvCase { name: string; x: number[]; dy: number[]; kernel: number; stride: number; pad: number }

/** Every conv layer of d2l AlexNet at this size: its input [B,H,W,Ci] and output gradient [B,OH,OW,Co]. */
function convCases(o: WebGpuKernelOptions): ConvCase[] {
  const spec = specOf({ ...CPU_DEFAULTS, arch: 'd2l', width: o.width, resolution: o.resolution });
  const [c, h, w] = spec.input;
  let prev = [c, h, w];
  const out: ConvCase[] = [];
  for (const s of shapesOf(spec)) {
    const l = s.layer;
    if (l.kind === 'conv') {
      const [oc, oh, ow] = s.outputShape as [number, number, number];
      out.push({ name: l.name, x: [o.batch, prev[1]!, prev[2]!, prev[0]!], dy: [o.batch, oh, ow, oc], kernel: l.kernel, stride: l.stride, pad: l.pad });
    }
    prev = s.outputShape;
  }
  const only = o.layers?.split(',').map((n) => n.trim());
  return only === undefined ? out : out.filter((k) => only.includes(k.name));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;

/** Median ms of `run` (after one untimed call), the device drained each time. */
async function time(runs: number, run: () => tf.Tensor): Promise<number> {
  run().dispose();
  await gpuIdle();
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const t = run();
    await gpuIdle();
    ms.push(performance.now() - t0);
    t.dispose();
  }
  return median(ms);
}

export interface KernelRow {
  layer: string; x: number[]; dy: number[]; kernel: number; stride: number; pad: number;
  filterNaiveMs: number; filterMatMulMs: number; inputDirectMs: number; inputMatMulMs: number;
}

/**
 * Times every conv layer's gradients on the active webgpu backend (one row
 * each, printed with `log` as it comes); leaves the backend with splitnet's
 * kernels and tfjs's default input gradient, as training uses them.
 */
export async function timeConvGradients(o: Omit<WebGpuKernelOptions, 'adapter'>, log: (line: string) => void): Promise<KernelRow[]> {
  const rows: KernelRow[] = [];
  try {
    for (const k of convCases({ ...o, adapter: '' })) {
      const attrs = (extra: object) => ({ strides: [k.stride, k.stride], pad: k.pad, dataFormat: 'NHWC', dimRoundingMode: undefined, ...extra }) as never;
      const x = tf.randomUniform(k.x, -1, 1, 'float32', 1);
      const dy = tf.randomUniform(k.dy, -1, 1, 'float32', 2);
      const filter = tf.randomUniform([k.kernel, k.kernel, k.x[3]!, k.dy[3]!], -1, 1, 'float32', 3);
      const filterGrad = async (which: WebGpuFilterGradient) => {
        registerWebGpuTrainingKernels(which);
        return time(o.runs, () => tf.engine().runKernel('Conv2DBackpropFilter', { x, dy }, attrs({ filterShape: filter.shape })) as tf.Tensor);
      };
      const inputGrad = async (naive: boolean) => {
        tf.env().set('WEBGPU_USE_NAIVE_CONV2D_TRANSPOSE', naive);
        return time(o.runs, () => tf.engine().runKernel('Conv2DBackpropInput', { dy, filter }, attrs({ inputShape: k.x })) as tf.Tensor);
      };
      // The first layer's input gradient is never needed in training (the image has none), but is timed alike.
      const row: KernelRow = {
        layer: k.name, x: k.x, dy: k.dy, kernel: k.kernel, stride: k.stride, pad: k.pad,
        filterNaiveMs: await filterGrad('naive'), filterMatMulMs: await filterGrad('matmul'),
        inputDirectMs: o.inputGradients === false ? NaN : await inputGrad(true), inputMatMulMs: o.inputGradients === false ? NaN : await inputGrad(false),
      };
      rows.push(row);
      tf.dispose([x, dy, filter]);
      log(`  ${k.name.padEnd(6)} filter gradient: naive ${row.filterNaiveMs.toFixed(1).padStart(8)} ms, matmul ${row.filterMatMulMs.toFixed(1).padStart(7)} ms ` +
        `(${(row.filterNaiveMs / row.filterMatMulMs).toFixed(1)}×)` + (o.inputGradients === false ? '' : `   input gradient: direct ${row.inputDirectMs.toFixed(1).padStart(7)} ms, ` +
        `matmul ${row.inputMatMulMs.toFixed(1).padStart(7)} ms (${(row.inputDirectMs / row.inputMatMulMs).toFixed(2)}×)`));
    }
  } finally {
    registerWebGpuTrainingKernels('matmul');
    tf.env().set('WEBGPU_USE_NAIVE_CONV2D_TRANSPOSE', true);
  }
  return rows;
}

export async function webGpuKernelBench(o: WebGpuKernelOptions): Promise<void> {
  const info = await initBackend('webgpu', parseAdapterWant(o.adapter));
  const adapter = info.adapter!;
  console.log(`webgpu-kernels: d2l AlexNet ${o.resolution}×${o.resolution}, width ${o.width}, batch ${o.batch}, on '${adapter.name}'` +
    `${adapter.software ? ' (software: a CPU rasterizer, a proxy for a GPU)' : ''}, median of ${o.runs}`);
  let rows: KernelRow[];
  try {
    rows = await timeConvGradients(o, (l) => console.log(l));
  } finally {
    closeWebGpu();
  }
  const file = join(here, 'results', 'webgpu-kernels.json');
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify({ options: o, adapter, rows }, null, 2) + '\n');
  console.log(`wrote ${file}`);
}
