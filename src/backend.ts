/**
 * Compute backend selection. The native TensorFlow packages are optional at run
 * time: they are resolved with a dynamic import, never listed as dependencies,
 * because their install step downloads libtensorflow from a host that CI and
 * many machines cannot reach. wasm is the backend that always installs.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import { registerComposedTrainingKernels, registerWebGpuTrainingKernels, type KernelSet, type WebGpuFilterGradient } from './kernels/register.js';
import { UsageError } from './errors.js';
import { activateWebGpu, hardwareUnreachable, type AdapterChosen, type AdapterWant } from './webgpu.js';

import { BACKEND_CHOICES, type BackendChoice } from './config/choices.js';
export { BACKEND_CHOICES, type BackendChoice };

export interface BackendInfo {
  /** what was asked for */
  choice: BackendChoice;
  /** the tfjs backend name now active: 'tensorflow', 'webgpu', 'wasm' or 'cpu' */
  name: string;
  /** the package that provides it */
  pkg: string;
  /** one line: why this one */
  reason: string;
  /** the GPU (or software rasterizer) under 'webgpu' */
  adapter?: AdapterChosen;
}

const NATIVE = {
  'tensorflow-gpu': {
    pkg: '@tensorflow/tfjs-node-gpu',
    install: 'npm install @tensorflow/tfjs-node-gpu@4.22.0 (needs CUDA 11.2 and cuDNN 8.1)',
  },
  tensorflow: { pkg: '@tensorflow/tfjs-node', install: 'npm install @tensorflow/tfjs-node@4.22.0' },
} as const;

/** GPUs the driver reports: `nvidia-smi -L` lines, or [] where there is no driver. */
export function visibleGpus(): string[] {
  const visible = process.env.CUDA_VISIBLE_DEVICES;
  if (visible !== undefined && visible.trim() === '') return [];
  try {
    const out = execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
    return out.split('\n').filter((l) => l.startsWith('GPU '));
  } catch {
    return existsSync('/dev/nvidia0') ? ['GPU 0: (nvidia-smi not found; /dev/nvidia0 present)'] : [];
  }
}

async function tryImport(pkg: string): Promise<unknown | Error> {
  try {
    return await import(pkg);
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

async function activate(name: string): Promise<void> {
  if (!(await tf.setBackend(name))) throw new Error(`backend '${name}' failed to initialize`);
  await tf.ready();
}

async function useNative(choice: 'tensorflow-gpu' | 'tensorflow', required: boolean): Promise<BackendInfo | string> {
  const { pkg, install } = NATIVE[choice];
  const loaded = await tryImport(pkg);
  if (loaded instanceof Error) {
    const why = `${pkg} is not installed (${install})`;
    if (required) throw new UsageError(`backend '${choice}': ${why}`);
    return why;
  }
  if (choice === 'tensorflow-gpu') {
    const gpus = visibleGpus();
    if (gpus.length === 0) {
      const why = `${pkg} is installed but no GPU is visible (nvidia-smi -L lists none)`;
      if (required) throw new UsageError(`backend '${choice}': ${why}`);
      return why;
    }
    await activate('tensorflow');
    return { choice, name: 'tensorflow', pkg, reason: `${pkg} with ${gpus.length} visible GPU(s)` };
  }
  await activate('tensorflow');
  return { choice, name: 'tensorflow', pkg, reason: `${pkg} (native CPU)` };
}

/** Which of splitnet's composed kernels the wasm backend gets (benchmarks compare the two). */
export function wasmKernelSet(): KernelSet {
  const v = process.env.SPLITNET_WASM_KERNELS ?? 'all';
  if (v !== 'all' && v !== 'filter-only') {
    throw new UsageError(`SPLITNET_WASM_KERNELS: expected 'all' or 'filter-only', got '${v}'`);
  }
  return v;
}

/**
 * Whether `auto` will end on wasm in a process given a GPU (`gpu`) or none,
 * decided without starting anything: the order of initBackend's `auto`
 * below, each step's precondition checked as cheaply as it can be.
 */
export function autoEndsOnWasm(gpu: boolean): boolean {
  const installed = (pkg: string) => {
    try {
      createRequire(import.meta.url).resolve(pkg);
      return true;
    } catch {
      return false;
    }
  };
  if (installed(NATIVE.tensorflow.pkg)) return false;
  if (!gpu) return true;
  if (installed(NATIVE['tensorflow-gpu'].pkg) && visibleGpus().length > 0) return false;
  return hardwareUnreachable() !== undefined;
}

/** WebGPU's filter gradient: ours (matmul, the default) or tfjs's naive shader ($SPLITNET_WEBGPU_FILTER_GRAD=naive: benchmarks). */
export function webGpuFilterGradient(): WebGpuFilterGradient {
  const v = process.env.SPLITNET_WEBGPU_FILTER_GRAD ?? 'matmul';
  if (v !== 'matmul' && v !== 'naive') throw new UsageError(`SPLITNET_WEBGPU_FILTER_GRAD: expected 'matmul' or 'naive', got '${v}'`);
  return v;
}

async function useWasm(choice: BackendChoice, because: string): Promise<BackendInfo> {
  await import('@tensorflow/tfjs-backend-wasm');
  registerComposedTrainingKernels('wasm', wasmKernelSet());
  await activate('wasm');
  return { choice, name: 'wasm', pkg: '@tensorflow/tfjs-backend-wasm', reason: because };
}

async function useCpu(choice: BackendChoice, because: string): Promise<BackendInfo> {
  // The cpu backend's one-time "install the node backend" banner is noise here.
  tf.env().set('PROD', true);
  await activate('cpu');
  return { choice, name: 'cpu', pkg: '@tensorflow/tfjs-backend-cpu', reason: because };
}

const WEBGPU_PKG = '@tensorflow/tfjs-backend-webgpu';

/** 'wasm', or 'webgpu on 'NVIDIA H200' (nvidia, through vulkan)': what run logs say a process computes on. */
export function backendLabel(info: BackendInfo): string {
  const a = info.adapter;
  return a === undefined ? info.name : `${info.name} on '${a.name}' (${a.vendor || 'vendor not reported'}, through ${a.via}${a.software ? ', software' : ''})`;
}

function adapterLine(a: AdapterChosen): string {
  return `adapter '${a.name}' (vendor ${a.vendor || 'not reported'}, through ${a.via}${a.software ? ', software: a CPU rasterizer' : ''}${a.pci ? `, PCI ${a.pci}` : ''})`;
}

/** WebGPU on the adapter `want` names; when not required, a failure is returned as the reason. */
async function useWebGpu(choice: BackendChoice, want: AdapterWant, required: boolean): Promise<BackendInfo | string> {
  try {
    const { adapter } = await activateWebGpu(want);
    registerWebGpuTrainingKernels(webGpuFilterGradient());
    return { choice, name: 'webgpu', pkg: `${WEBGPU_PKG} on Dawn`, reason: adapterLine(adapter), adapter };
  } catch (err) {
    if (required) throw err;
    return `webgpu: ${err instanceof Error ? err.message.replace(/^webgpu: /, '') : String(err)}`;
  }
}

/**
 * Activates the backend asked for; `auto` takes the first that works, in order
 * of speed: tfjs-node-gpu, WebGPU on a hardware adapter, tfjs-node, wasm, cpu.
 *
 * `gpu` is this process's device: the adapter WebGPU should open, or null
 * for a process given no GPU (a worker whose device is 'cpu'), where `auto`
 * skips WebGPU and `webgpu` is refused.
 */
export async function initBackend(choice: BackendChoice, gpu: AdapterWant | null = { kind: 'hardware' }): Promise<BackendInfo> {
  switch (choice) {
    case 'tensorflow-gpu':
    case 'tensorflow': {
      const got = await useNative(choice, true);
      if (typeof got === 'string') throw new Error(got); // unreachable: required throws
      return got;
    }
    case 'webgpu': {
      if (gpu === null) throw new UsageError("backend 'webgpu': this process was given no GPU (device 'cpu'); give it a GPU device, or --adapter software to run WebGPU on the CPU");
      const got = await useWebGpu(choice, gpu, true);
      if (typeof got === 'string') throw new Error(got); // unreachable: required throws
      return got;
    }
    case 'wasm':
      return useWasm(choice, 'asked for (XNNPACK, SIMD, one thread; splitnet composes the conv gradients)');
    case 'cpu':
      return useCpu(choice, 'asked for (pure JavaScript: correct, very slow to train)');
    case 'auto': {
      const gpuWhy = await useNative('tensorflow-gpu', false);
      if (typeof gpuWhy !== 'string') return gpuWhy;
      // auto never falls onto a software adapter: wasm is faster than llvmpipe.
      const unreachable = gpu === null || gpu.kind === 'software' ? 'no GPU given to this process' : hardwareUnreachable();
      const webgpuWhy = unreachable !== undefined ? `webgpu: ${unreachable}` : await useWebGpu(choice, gpu!, false);
      if (typeof webgpuWhy !== 'string') return webgpuWhy;
      const cpuWhy = await useNative('tensorflow', false);
      if (typeof cpuWhy !== 'string') return cpuWhy;
      try {
        return await useWasm(choice, `${gpuWhy}; ${webgpuWhy}; ${cpuWhy}`);
      } catch (err) {
        return useCpu(choice, `wasm failed to start (${err instanceof Error ? err.message : String(err)})`);
      }
    }
    default: {
      const never: never = choice;
      throw new UsageError(`unknown backend '${String(never)}': expected one of ${BACKEND_CHOICES.join(', ')}`);
    }
  }
}
