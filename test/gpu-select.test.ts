/**
 * One worker per GPU on a box of identical cards: a worker's `device` (an
 * index, or a PCI address) becomes a PCI address from nvidia-smi or sysfs,
 * Vulkan is shown that device only (Mesa's device-select layer), and the
 * worker refuses an adapter that is not the one it was given. Here with a
 * fake nvidia-smi and a fake sysfs tree; the GPU check runs the real thing.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkOnlyAdapter, gpuFor, listPciGpus, normalizePci, parseNvidiaSmi, sysfsGpus, vulkanOnly } from '../src/gpu-pci.js';
import { adapterFor, parseAdapterWant } from '../src/webgpu.js';
import { splitnet } from './helpers/cli.js';
import { tempDir } from './helpers/idx-files.js';

const SMI = '0, 00000000:3B:00.0, NVIDIA H200\n1, 00000000:5E:00.0, NVIDIA H200\n';

/** A sysfs root with these PCI functions and their class codes. */
function fakeSysfs(devices: Record<string, string>): string {
  const root = tempDir();
  for (const [addr, cls] of Object.entries(devices)) {
    mkdirSync(join(root, 'bus', 'pci', 'devices', addr), { recursive: true });
    writeFileSync(join(root, 'bus', 'pci', 'devices', addr, 'class'), `${cls}\n`);
  }
  return root;
}

describe('GPUs by PCI address', () => {
  it("reads nvidia-smi's index, bus id and name, the address normalized", () => {
    expect(parseNvidiaSmi(SMI)).toEqual([
      { index: 0, pci: '0000:3b:00.0', name: 'NVIDIA H200' },
      { index: 1, pci: '0000:5e:00.0', name: 'NVIDIA H200' },
    ]);
    expect(() => parseNvidiaSmi('GPU 0: NVIDIA H200\n')).toThrow("nvidia-smi: expected 'index, pci.bus_id, name', got 'GPU 0: NVIDIA H200'");
  });

  it('without nvidia-smi, takes the display controllers of sysfs in PCI order (bridges and NICs left out)', () => {
    const root = fakeSysfs({ '0000:b1:00.0': '0x030200', '0000:00:02.0': '0x060400', '0000:3b:00.0': '0x030000', '0000:18:00.0': '0x020000' });
    expect(sysfsGpus(root)).toEqual([{ index: 0, pci: '0000:3b:00.0' }, { index: 1, pci: '0000:b1:00.0' }]);
    const env = { ...process.env, SPLITNET_NVIDIA_SMI: '/nonexistent/nvidia-smi', SPLITNET_SYSFS: root };
    expect(listPciGpus(env).map((g) => g.pci)).toEqual(['0000:3b:00.0', '0000:b1:00.0']);
  });

  it('prefers nvidia-smi where it runs', () => {
    const dir = tempDir();
    const smi = join(dir, 'nvidia-smi');
    writeFileSync(smi, `#!/bin/sh\nprintf '${SMI.replace(/\n/g, '\\n')}'\n`);
    chmodSync(smi, 0o755);
    expect(listPciGpus({ ...process.env, SPLITNET_NVIDIA_SMI: smi, SPLITNET_SYSFS: fakeSysfs({}) }).map((g) => g.index)).toEqual([0, 1]);
  });

  it('a device is an index or a PCI address; one not on this host is refused with what is', () => {
    const gpus = parseNvidiaSmi(SMI);
    expect(gpuFor(1, gpus).pci).toBe('0000:5e:00.0');
    expect(gpuFor('5e:00.0', gpus).index).toBe(1);
    expect(() => gpuFor(2, gpus)).toThrow("GPU index 2 is not on this host; it has 0 0000:3b:00.0 'NVIDIA H200', 1 0000:5e:00.0 'NVIDIA H200'");
    expect(() => gpuFor('0000:af:00.0', [])).toThrow('GPU 0000:af:00.0 is not on this host; it has none (no nvidia-smi, no display controller in sysfs)');
  });

  it("a PCI address in a worker's device or --adapter selects by address; names and indices stay what they were", () => {
    expect(normalizePci('00000000:AF:00.1')).toBe('0000:af:00.1');
    expect(normalizePci('H200')).toBeUndefined();
    expect(adapterFor('0000:3b:00.0', undefined)).toEqual({ kind: 'pci', pci: '0000:3b:00.0' });
    expect(adapterFor('1', undefined)).toEqual({ kind: 'index', index: 1 });
    expect(adapterFor('H200', undefined)).toEqual({ kind: 'name', name: 'H200' });
    expect(parseAdapterWant('3b:00.0')).toEqual({ kind: 'pci', pci: '0000:3b:00.0' });
  });

  it("shows Vulkan one device through Mesa's device-select layer", () => {
    expect(vulkanOnly('0000:3b:00.0')).toEqual({ DRI_PRIME: 'pci-0000_3b_00_0', MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE: '1' });
  });

  it('the worker takes the one adapter Vulkan then lists, and refuses anything else with one line', () => {
    const gpu = parseNvidiaSmi(SMI)[1]!;
    expect(checkOnlyAdapter(['NVIDIA H200'], gpu)).toBe('NVIDIA H200');
    expect(() => checkOnlyAdapter(['NVIDIA H200', 'NVIDIA H200'], gpu)).toThrow(
      "webgpu: GPU 1 (0000:5e:00.0) could not be isolated: Vulkan still lists 2 adapters ('NVIDIA H200', 'NVIDIA H200') under DRI_PRIME=pci-0000_5e_00_0; install Mesa's device-select layer");
    expect(() => checkOnlyAdapter(['NVIDIA A100-SXM4-80GB'], gpu)).toThrow(
      "webgpu: GPU 1 (0000:5e:00.0) is 'NVIDIA H200' to nvidia-smi, but Vulkan opened 'NVIDIA A100-SXM4-80GB': not the device this worker was given");
  });

  it('end to end: a worker given a GPU this host lacks Vulkan for is refused with one line and exit 2', () => {
    const dir = tempDir();
    const smi = join(dir, 'nvidia-smi');
    writeFileSync(smi, `#!/bin/sh\nprintf '${SMI.replace(/\n/g, '\\n')}'\n`);
    chmodSync(smi, 0o755);
    const r = splitnet(['--backend', 'webgpu', '--adapter', '0000:5e:00.0', 'backend'], { SPLITNET_NVIDIA_SMI: smi });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^splitnet: webgpu: GPU 1 \(0000:5e:00\.0\): Vulkan lists no adapter under DRI_PRIME=pci-0000_5e_00_0 /);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});
