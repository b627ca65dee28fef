/**
 * The WebGPU backend in Node: Dawn (the `webgpu` package's prebuilt
 * `dawn.node`) under `@tensorflow/tfjs-backend-webgpu`. It reaches NVIDIA, AMD
 * and Intel GPUs through Vulkan (Metal on macOS, D3D12 on Windows), and Mesa's
 * llvmpipe through OpenGL: a software adapter that lets CI run the GPU path on
 * CPUs.
 *
 * Set-up facts this file encodes (each one was a failure first):
 * - the backend's constructor requires `globalThis.navigator.gpu`;
 * - when `navigator` is missing at import the package registers no factory,
 *   so we register ours under the name its kernels are registered with;
 * - the device must be requested with the adapter's limits, or tfjs's conv
 *   shaders exceed the defaults (workgroup storage, invocations);
 * - `dataSync()` on GPU data throws in Node (tfjs reads through an
 *   OffscreenCanvas): only `await data()` works, which the engine uses;
 * - Dawn keeps Node's event loop alive while its instance is referenced, so
 *   `close()` drops every reference.
 */
import * as tf from '@tensorflow/tfjs';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UsageError } from './errors.js';
import { checkOnlyAdapter, gpuFor, listPciGpus, normalizePci, vulkanOnly } from './gpu-pci.js';

/** Which adapter: the first hardware one, the software one (llvmpipe), the n-th listed, or one whose name contains a string. */
export type AdapterWant =
  | { kind: 'hardware' }
  | { kind: 'software' }
  | { kind: 'index'; index: number }
  | { kind: 'name'; name: string }
  | { kind: 'pci'; pci: string };

export interface AdapterChosen {
  /** Dawn's device name, e.g. 'NVIDIA H200' or 'llvmpipe (LLVM 15.0.6, 256 bits)' */
  name: string;
  /** 'nvidia', 'amd', 'intel', 'apple'; '' when the driver does not say (llvmpipe) */
  vendor: string;
  /** driver description, e.g. 'OpenGL version 4.5 (Core Profile) Mesa 22.3.6' */
  description: string;
  /** the Dawn backend it was found through: 'vulkan', 'opengl', 'metal', 'd3d12' */
  via: string;
  /** a CPU rasterizer (llvmpipe, lavapipe, SwiftShader, WARP) rather than a GPU */
  software: boolean;
  /** the PCI address, where the adapter was chosen by it (identical cards; gpu-pci.ts) */
  pci?: string;
}

/** Names of CPU rasterizers as Dawn reports them; Dawn's own isFallbackAdapter is false for llvmpipe. */
const SOFTWARE_NAMES = /llvmpipe|softpipe|lavapipe|swiftshader|software|microsoft basic render/i;

/** Where hardware adapters are found on this platform. */
function hardwareBackend(): string {
  if (process.platform === 'darwin') return 'metal';
  if (process.platform === 'win32') return 'd3d12';
  return 'vulkan';
}

/**
 * Where the software adapter is found: Mesa's llvmpipe through OpenGL on
 * EGL's surfaceless platform (no display needed). Dawn refuses lavapipe,
 * Mesa's Vulkan rasterizer (it lacks dynamic indexing of uniform arrays).
 */
const SOFTWARE_BACKEND = 'opengl';

/**
 * Why no hardware adapter can exist here, checked without loading Dawn: on
 * Linux, GPUs are reached through the Vulkan loader (libvulkan.so.1), and
 * without it Dawn finds nothing (and prints a warning). `auto` asks this
 * first, so CPU machines neither pay for Dawn nor see its warning.
 */
export function hardwareUnreachable(): string | undefined {
  if (process.platform !== 'linux') return undefined;
  const lib = 'libvulkan.so.1';
  const dirs = (process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean);
  if (dirs.some((d) => existsSync(join(d, lib)))) return undefined;
  try {
    const cache = execFileSync('ldconfig', ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5_000 });
    if (cache.includes(lib)) return undefined;
  } catch {
    // no ldconfig on PATH: look in the usual places
    if (['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib'].some((d) => existsSync(join(d, lib)))) return undefined;
  }
  return `no Vulkan loader (${lib}) on this machine`;
}

interface Dawn {
  create(flags: string[]): GPU;
  globals: Record<string, unknown>;
}

let dawn: Dawn | undefined;

async function loadDawn(): Promise<Dawn> {
  if (dawn) return dawn;
  try {
    dawn = (await import('webgpu')) as unknown as Dawn;
  } catch (err) {
    throw new UsageError(`the 'webgpu' package (Dawn) failed to load: ${err instanceof Error ? err.message : String(err)} (it installs with npm ci; linux-x64, linux-arm64, darwin and win32 builds are inside it)`);
  }
  // GPUBufferUsage, GPUMapMode, ...: tfjs refers to them as globals, as in a browser.
  Object.assign(globalThis, dawn.globals);
  return dawn;
}

/** EGL without a display, and Mesa's runtime dir: what llvmpipe needs on a headless machine. */
function prepareHeadlessGl(): void {
  process.env.EGL_PLATFORM ??= 'surfaceless';
  if (process.env.XDG_RUNTIME_DIR === undefined) {
    const dir = join(tmpdir(), `splitnet-xdg-${process.getuid?.() ?? 'user'}`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    process.env.XDG_RUNTIME_DIR = dir;
  }
}

/** Dawn's `instance` for one backend; `adapter=` narrows by a substring of the device name. */
function instance(d: Dawn, via: string, name?: string): GPU {
  return d.create(name === undefined ? [`backend=${via}`] : [`backend=${via}`, `adapter=${name}`]);
}

/**
 * OpenGL (llvmpipe) only answers a 'compatibility' request: Dawn does not even
 * list it otherwise. Hardware backends get a plain (core) request, so no
 * compatibility-mode restriction applies on a real GPU.
 */
function request(via: string): GPURequestAdapterOptions {
  return (via === SOFTWARE_BACKEND ? { featureLevel: 'compatibility' } : { powerPreference: 'high-performance' }) as GPURequestAdapterOptions;
}

/** A name no adapter has: Dawn then rejects with the list of adapters it found. */
const NO_SUCH_ADAPTER = '\u0001splitnet-lists-adapters';

/**
 * Device names of every adapter Dawn finds through `via`, in Dawn's order
 * (the order `device: <index>` counts in). Dawn has no enumeration call; its
 * rejection for an unmatched name lists them all (the webgpu package's README
 * documents this), one `* backend: '…', name: '…'` line each.
 */
export async function listAdapters(via = hardwareBackend()): Promise<string[]> {
  const d = await loadDawn();
  if (via === SOFTWARE_BACKEND) prepareHeadlessGl();
  try {
    const got = await instance(d, via, NO_SUCH_ADAPTER).requestAdapter(request(via));
    if (got === null) return []; // Dawn found no adapter at all (no loader, no driver)
    return [got.info.device];
  } catch (err) {
    const text = err instanceof Error ? err.message : String(err);
    return [...text.matchAll(/^\s*\*\s*backend:\s*'[^']*',\s*name:\s*'(.*)'\s*$/gm)].map((m) => m[1]!);
  }
}

function describe(want: AdapterWant): string {
  switch (want.kind) {
    case 'hardware': return 'a hardware adapter';
    case 'software': return 'the software adapter';
    case 'index': return `adapter ${want.index}`;
    case 'name': return `an adapter named like '${want.name}'`;
    case 'pci': return `the GPU at PCI ${want.pci}`;
  }
}

/**
 * Shows this process only the GPU `device` names (an index or a PCI
 * address) through Mesa's device-select layer, and checks that Vulkan then
 * lists that one adapter (gpu-pci.ts). Sets the process's environment:
 * everything Vulkan opens afterwards sees that GPU alone.
 */
async function isolate(via: string, device: number | string): Promise<{ via: string; name: string; pci: string }> {
  const gpu = gpuFor(device, listPciGpus());
  Object.assign(process.env, vulkanOnly(gpu.pci));
  const listed = hardwareUnreachable() === undefined ? await listAdapters(via) : [];
  return { via, name: checkOnlyAdapter(listed, gpu), pci: gpu.pci };
}

/** Resolves `want` to a Dawn backend and a device-name filter, refusing what Dawn could not honour. */
async function locate(want: AdapterWant): Promise<{ via: string; name?: string; pci?: string }> {
  if (want.kind === 'software') return { via: SOFTWARE_BACKEND };
  const via = hardwareBackend();
  if (want.kind === 'hardware') return { via };
  if (want.kind === 'pci') return isolate(via, want.pci);
  const names = hardwareUnreachable() === undefined ? await listAdapters(via) : [];
  if (want.kind === 'name') {
    if (names.some((n) => n.includes(want.name))) return { via, name: want.name };
    // A name may also pick the software adapter ('llvmpipe'): naming it is asking for it.
    const soft = process.platform === 'linux' ? await listAdapters(SOFTWARE_BACKEND) : [];
    if (soft.some((n) => n.includes(want.name))) return { via: SOFTWARE_BACKEND, name: want.name };
    const found = [...names.map((n) => `'${n}' (${via})`), ...soft.map((n) => `'${n}' (${SOFTWARE_BACKEND})`)];
    throw new UsageError(`webgpu: no adapter named like '${want.name}'; found ${found.length === 0 ? 'none' : found.join(', ')}`);
  }
  const name = names[want.index];
  if (name === undefined) {
    throw new UsageError(`webgpu: adapter ${want.index} asked for, but ${via} lists ${names.length}${names.length > 0 ? `: ${names.map((n, i) => `${i} '${n}'`).join(', ')}` : ' (is the Vulkan loader libvulkan1 installed, with a driver?)'}`);
  }
  // Dawn picks the first adapter whose name contains the filter: identical
  // GPUs cannot be told apart by name, so this one is chosen by its PCI
  // address, with every other GPU hidden from this process.
  if (names.filter((n) => n === name).length > 1) return isolate(via, want.index);
  return { via, name };
}

export interface WebGpuSession {
  adapter: AdapterChosen;
  /** what was asked for (a process opens one adapter: asking again for another is refused) */
  want: string;
  /** Disposes the tfjs backend and the device and drops Dawn's instance, so Node can exit. */
  close(): void;
}

let open: WebGpuSession | undefined;

/**
 * Registers and activates tfjs's 'webgpu' backend on the adapter `want`
 * names. Throws a UsageError naming what was found when there is no such
 * adapter, or when a hardware adapter was asked for and only a software one
 * answers (a software adapter is used only when asked for).
 */
export async function activateWebGpu(want: AdapterWant): Promise<WebGpuSession> {
  if (open) {
    // One device per process: a second call (a run after a test, a resumed run) switches back to it.
    if (open.want !== JSON.stringify(want)) {
      throw new UsageError(`webgpu: this process already computes on '${open.adapter.name}' (${open.want}); ${describe(want)} needs a process of its own`);
    }
    if (!(await tf.setBackend('webgpu'))) throw new Error(`webgpu: the tfjs backend failed to restart on '${open.adapter.name}'`);
    return open;
  }
  const d = await loadDawn();
  const { via, name, pci } = await locate(want);
  if (via === SOFTWARE_BACKEND) prepareHeadlessGl();
  let gpu: GPU | undefined = instance(d, via, name);
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter(request(via));
  } catch (err) {
    throw new UsageError(`webgpu: ${describe(want)} was not found through ${via}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
  }
  if (adapter === null) {
    throw new UsageError(`webgpu: no adapter through ${via}${via === 'vulkan' ? ' (no Vulkan loader or driver: install libvulkan1 and the GPU driver, or set VK_DRIVER_FILES to the driver\'s ICD json)' : ''}`);
  }
  const info = adapter.info;
  const chosen: AdapterChosen = {
    name: info.device || info.description || '(unnamed)',
    vendor: info.vendor,
    description: info.description,
    via,
    software: SOFTWARE_NAMES.test(`${info.device} ${info.description}`) || (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true,
    ...(pci !== undefined ? { pci } : {}),
  };
  if (chosen.software && (want.kind === 'hardware' || want.kind === 'index')) {
    throw new UsageError(`webgpu: ${describe(want)} was asked for, but '${chosen.name}' is a software adapter (a CPU rasterizer); use --adapter software to run on it anyway`);
  }
  // The adapter's own limits, not WebGPU's defaults: tfjs's conv and matmul shaders need the larger workgroups.
  const requiredLimits: Record<string, number> = {};
  for (const key in adapter.limits) {
    const v = (adapter.limits as unknown as Record<string, unknown>)[key];
    if (typeof v === 'number') requiredLimits[key] = v;
  }
  let device: GPUDevice | undefined;
  // Everything taken from here on is given back if the backend does not start (Dawn would keep Node alive).
  const release = () => {
    if (tf.findBackendFactory('webgpu') !== null) tf.removeBackend('webgpu');
    device?.destroy();
    device = undefined;
    gpu = undefined;
    delete (globalThis as { navigator?: unknown }).navigator;
  };
  try {
    device = await adapter.requestDevice({ requiredLimits });
    const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
    (globalThis as { navigator?: unknown }).navigator = { gpu };
    if (tf.findBackendFactory('webgpu') !== null) tf.removeBackend('webgpu');
    const dev = device;
    tf.registerBackend('webgpu', () => new WebGPUBackend(dev, info));
    if (!(await tf.setBackend('webgpu'))) throw new Error(`webgpu: the tfjs backend failed to start on '${chosen.name}'`);
    await tf.ready();
  } catch (err) {
    release();
    throw err;
  }
  open = {
    adapter: chosen,
    want: JSON.stringify(want),
    close() {
      release();
      open = undefined;
    },
  };
  return open;
}

/** Releases the WebGPU device if one is open (a no-op otherwise). */
export function closeWebGpu(): void {
  open?.close();
}

/** Parses `--adapter`: 'hardware', 'software', an index, or a name fragment. */
export function parseAdapterWant(text: string): AdapterWant {
  const t = text.trim();
  if (t === '') throw new UsageError(`--adapter: expected 'hardware', 'software', an adapter index or a name fragment, got ''`);
  if (t === 'hardware' || t === 'software') return { kind: t };
  if (/^\d+$/.test(t)) return { kind: 'index', index: Number(t) };
  const pci = normalizePci(t);
  if (pci !== undefined) return { kind: 'pci', pci };
  return { kind: 'name', name: t };
}

/**
 * The adapter a process opens: `--adapter` when it names one ('software', an
 * index or a name), else the worker's configured device ('cpu' means none,
 * a number is the adapter's index, a string a fragment of its name).
 */
export function adapterFor(device: string, adapter: string | undefined): AdapterWant | null {
  if (adapter !== undefined && adapter !== 'hardware') return parseAdapterWant(adapter);
  const d = device.trim();
  if (d === 'cpu') return null;
  if (/^\d+$/.test(d)) return { kind: 'index', index: Number(d) };
  const pci = normalizePci(d);
  if (pci !== undefined) return { kind: 'pci', pci };
  return d === '' ? null : { kind: 'name', name: d };
}
