import {
  BatchMatMul,
  Conv2DBackpropFilter,
  Conv2DBackpropInput,
  getKernel,
  registerKernel,
  unregisterKernel,
  type BatchMatMulAttrs,
  type Conv2DBackpropFilterAttrs,
  type Conv2DBackpropInputAttrs,
  type KernelFunc,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import { conv2DBackpropFilterViaConv } from './conv2d-backprop-filter.js';
import { conv2DBackpropInputViaConv } from './conv2d-backprop-input.js';
import { batchMatMulViaConv } from './batch-matmul.js';

/** The kernels a training step on `backendName` gets from splitnet instead of tfjs. */
export const COMPOSED_TRAINING_KERNELS = [Conv2DBackpropFilter, Conv2DBackpropInput, BatchMatMul] as const;

const registered = new Set<string>();

/**
 * Gives a backend the training kernels as forward convolutions on its own
 * Conv2D. On wasm this adds the missing Conv2DBackpropFilter and replaces the
 * scalar loops of Conv2DBackpropInput and transposed BatchMatMul with XNNPACK.
 * Idempotent.
 */
export function registerComposedTrainingKernels(backendName: string): void {
  if (registered.has(backendName)) return;
  if (getKernel('Conv2D', backendName) === undefined) {
    throw new Error(`registerComposedTrainingKernels: backend '${backendName}' has no Conv2D kernel to compose with`);
  }
  const matMul = getKernel(BatchMatMul, backendName);
  if (matMul === undefined) throw new Error(`registerComposedTrainingKernels: backend '${backendName}' has no BatchMatMul kernel`);
  const fallback = matMul.kernelFunc;
  for (const name of COMPOSED_TRAINING_KERNELS) {
    if (getKernel(name, backendName) !== undefined) unregisterKernel(name, backendName);
  }
  registerKernel({
    kernelName: Conv2DBackpropFilter,
    backendName,
    kernelFunc: ((a: { inputs: { x: TensorInfo; dy: TensorInfo }; backend: never; attrs: Conv2DBackpropFilterAttrs }) =>
      conv2DBackpropFilterViaConv({ ...a, backendName })) as unknown as KernelFunc,
  });
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
  registered.add(backendName);
}
