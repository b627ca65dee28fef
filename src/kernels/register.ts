import {
  BatchMatMul,
  Conv2DBackpropFilter,
  Conv2DBackpropInput,
  getKernel,
  MaxPoolGrad,
  registerKernel,
  unregisterKernel,
  type BatchMatMulAttrs,
  type Conv2DBackpropFilterAttrs,
  type Conv2DBackpropInputAttrs,
  type KernelConfig,
  type KernelFunc,
  type MaxPoolGradAttrs,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import { conv2DBackpropFilterViaConv } from './conv2d-backprop-filter.js';
import { conv2DBackpropFilterViaMatMul } from './conv2d-backprop-filter-matmul.js';
import { conv2DBackpropInputViaConv } from './conv2d-backprop-input.js';
import { batchMatMulViaConv } from './batch-matmul.js';
import { maxPoolGradOnHeap } from './max-pool-grad.js';

/** The kernels a training step on `backendName` gets from splitnet instead of tfjs. */
export const COMPOSED_TRAINING_KERNELS = [Conv2DBackpropFilter, Conv2DBackpropInput, BatchMatMul] as const;

/**
 * 'all' is what training uses. 'filter-only' adds just the missing
 * Conv2DBackpropFilter and keeps tfjs's own kernels otherwise: the starting
 * point the compute benchmark measures against.
 */
export type KernelSet = 'all' | 'filter-only';

const registered = new Map<string, KernelSet>();

/**
 * Gives a backend the training kernels as forward convolutions on its own
 * Conv2D. On wasm this adds the missing Conv2DBackpropFilter and replaces the
 * scalar loops of Conv2DBackpropInput and transposed BatchMatMul with XNNPACK,
 * and replaces tfjs's MaxPoolGrad, which is wrong over several channels.
 * Idempotent.
 */
export function registerComposedTrainingKernels(backendName: string, set: KernelSet = 'all'): void {
  const already = registered.get(backendName);
  if (already === set) return;
  if (already !== undefined) {
    throw new Error(`registerComposedTrainingKernels: '${backendName}' already has kernel set '${already}', asked for '${set}'`);
  }
  if (getKernel('Conv2D', backendName) === undefined) {
    throw new Error(`registerComposedTrainingKernels: backend '${backendName}' has no Conv2D kernel to compose with`);
  }
  const matMul = getKernel(BatchMatMul, backendName);
  if (matMul === undefined) throw new Error(`registerComposedTrainingKernels: backend '${backendName}' has no BatchMatMul kernel`);
  const fallback = matMul.kernelFunc;
  const replaced = set === 'all' ? COMPOSED_TRAINING_KERNELS : [Conv2DBackpropFilter];
  for (const name of replaced) {
    if (getKernel(name, backendName) !== undefined) unregisterKernel(name, backendName);
  }
  registerKernel({
    kernelName: Conv2DBackpropFilter,
    backendName,
    kernelFunc: ((a: { inputs: { x: TensorInfo; dy: TensorInfo }; backend: never; attrs: Conv2DBackpropFilterAttrs }) =>
      conv2DBackpropFilterViaConv({ ...a, backendName })) as unknown as KernelFunc,
  });
  if (backendName === 'wasm') {
    // A correctness fix, not a speed-up: both sets get it (see max-pool-grad.ts).
    if (getKernel(MaxPoolGrad, backendName) !== undefined) unregisterKernel(MaxPoolGrad, backendName);
    registerKernel({
      kernelName: MaxPoolGrad,
      backendName,
      kernelFunc: ((a: { inputs: { dy: TensorInfo; input: TensorInfo }; backend: never; attrs: MaxPoolGradAttrs }) => maxPoolGradOnHeap(a)) as unknown as KernelFunc,
    });
  }
  if (set === 'filter-only') {
    registered.set(backendName, set);
    return;
  }
  registerKernel({
    kernelName: Conv2DBackpropInput,
    backendName,
    kernelFunc: ((a: { inputs: { dy: TensorInfo; filter: TensorInfo }; backend: never; attrs: Conv2DBackpropInputAttrs }) =>
      conv2DBackpropInputViaConv({ ...a, backendName })) as unknown as KernelFunc,
  });
  registerKernel({
    kernelName: BatchMatMul,
    backendName,
    // The fallback is tfjs's own kernel: it still needs its setup (binding the wasm function).
    ...(matMul.setupFunc === undefined ? {} : { setupFunc: matMul.setupFunc }),
    kernelFunc: ((a: { inputs: { a: TensorInfo; b: TensorInfo }; backend: never; attrs: BatchMatMulAttrs }) =>
      batchMatMulViaConv({ ...a, backendName, fallback })) as unknown as KernelFunc,
  });
  registered.set(backendName, set);
}

/** The kernel set splitnet registered on a backend, if any. */
export function composedKernelSet(backendName: string): KernelSet | undefined {
  return registered.get(backendName);
}

/**
 * WebGPU's filter gradient: 'matmul' (ours, conv2d-backprop-filter-matmul.ts:
 * im2col and batched matrix products on tfjs's tiled matmul shader) or
 * 'naive' (tfjs 4.22's own shader, kept for comparison). Measured on Mesa's
 * llvmpipe (the software adapter), d2l AlexNet at 224 px: see the README's
 * "GPU" section and `npm run bench -- webgpu-kernels`.
 */
export type WebGpuFilterGradient = 'matmul' | 'naive';

let webGpuFilterGradient: WebGpuFilterGradient | undefined;
let tfjsNaiveFilterGradient: KernelConfig | undefined;

/** Gives the webgpu backend the filter gradient `which` (idempotent; switching back and forth is for benchmarks). */
export function registerWebGpuTrainingKernels(which: WebGpuFilterGradient = 'matmul'): void {
  if (webGpuFilterGradient === which) return;
  const current = getKernel(Conv2DBackpropFilter, 'webgpu');
  if (current === undefined) throw new Error("registerWebGpuTrainingKernels: backend 'webgpu' has no Conv2DBackpropFilter kernel (is @tensorflow/tfjs-backend-webgpu loaded?)");
  if (webGpuFilterGradient === undefined) tfjsNaiveFilterGradient = current;
  unregisterKernel(Conv2DBackpropFilter, 'webgpu');
  registerKernel(which === 'naive' ? tfjsNaiveFilterGradient! : {
    kernelName: Conv2DBackpropFilter,
    backendName: 'webgpu',
    kernelFunc: ((a: { inputs: { x: TensorInfo; dy: TensorInfo }; backend: never; attrs: Conv2DBackpropFilterAttrs }) =>
      conv2DBackpropFilterViaMatMul({ ...a, backendName: 'webgpu' })) as unknown as KernelFunc,
  });
  webGpuFilterGradient = which;
}

/** The filter gradient the webgpu backend has now, if splitnet registered one. */
export function registeredWebGpuFilterGradient(): WebGpuFilterGradient | undefined {
  return webGpuFilterGradient;
}
