/**
 * Which WebGPU adapter a process opens, and when WebGPU is used at all: the
 * flags, a worker's configured device, and `auto`, which never takes the
 * software adapter. (test/webgpu.test.ts runs the backend itself.)
 */
import { describe, expect, it } from 'vitest';
import { initBackend } from '../src/backend.js';
import { adapterFor, parseAdapterWant } from '../src/webgpu.js';
import { splitnet } from './helpers/cli.js';

describe('choosing a WebGPU adapter', () => {
  it("--adapter reads 'hardware', 'software', an index or a name fragment, and refuses ''", () => {
    expect(parseAdapterWant('hardware')).toEqual({ kind: 'hardware' });
    expect(parseAdapterWant('software')).toEqual({ kind: 'software' });
    expect(parseAdapterWant('1')).toEqual({ kind: 'index', index: 1 });
    expect(parseAdapterWant('RTX 4090')).toEqual({ kind: 'name', name: 'RTX 4090' });
    expect(() => parseAdapterWant(' ')).toThrow("--adapter: expected 'hardware', 'software', an adapter index or a name fragment, got ''");
  });

  it("a worker opens its configured device; 'cpu' means no GPU; --adapter overrides unless it says 'hardware'", () => {
    expect(adapterFor('0', undefined)).toEqual({ kind: 'index', index: 0 });
    expect(adapterFor('3', 'hardware')).toEqual({ kind: 'index', index: 3 });
    expect(adapterFor('H200', undefined)).toEqual({ kind: 'name', name: 'H200' });
    expect(adapterFor('cpu', undefined)).toBeNull();
    expect(adapterFor('cpu', 'software')).toEqual({ kind: 'software' });
    expect(adapterFor('1', 'llvmpipe')).toEqual({ kind: 'name', name: 'llvmpipe' });
  });

  it("--backend webgpu in a process given no GPU is refused, saying how to get one", async () => {
    await expect(initBackend('webgpu', null)).rejects.toThrow(
      "backend 'webgpu': this process was given no GPU (device 'cpu'); give it a GPU device, or --adapter software to run WebGPU on the CPU",
    );
  });

  it('auto never falls onto the software adapter: on this GPU-less machine it picks wasm and says why not WebGPU', () => {
    const r = splitnet(['backend']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^backend: wasm \(@tensorflow\/tfjs-backend-wasm\): .*; webgpu: [^;]+; /);
  });

  it('an adapter index that does not exist is refused with what was found (exit 2)', () => {
    const r = splitnet(['--backend', 'webgpu', '--adapter', '7', 'backend']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^splitnet: webgpu: adapter 7 asked for, but vulkan lists \d+/m);
  });

  it('--backend webgpu --adapter software opens llvmpipe, says it is software, and the process exits', () => {
    const r = splitnet(['--backend', 'webgpu', '--adapter', 'software', 'backend']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^backend: webgpu \(@tensorflow\/tfjs-backend-webgpu on Dawn\): adapter '.*llvmpipe.*' \(vendor .*, through opengl, software: a CPU rasterizer\)$/m);
  });
});
