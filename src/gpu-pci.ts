/**
 * GPUs by PCI address, so that one worker per GPU works on a box of
 * identical cards. Dawn selects an adapter only by a substring of its name
 * (first match wins): eight 'NVIDIA H200's are one name. What can tell them
 * apart is the PCI address, and what can hide all but one from Vulkan is
 * Mesa's device-select layer (an implicit Vulkan layer in Debian's
 * mesa-vulkan-drivers): with DRI_PRIME=pci-DDDD_BB_DD_F and
 * MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE=1 it reports only that device
 * (it reads the drivers' VK_EXT_pci_bus_info, which NVIDIA's driver has).
 *
 * The mapping is made in the worker's own process, on the GPU's host, before
 * Dawn opens its Vulkan instance: the launcher cannot read a remote host's
 * sysfs, and the layer reads its environment when Vulkan enumerates devices.
 * The GPU list comes from `nvidia-smi` (its indices are the config's `device`
 * numbers) or, without it, from sysfs (display controllers in PCI order).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from './errors.js';

export interface PciGpu {
  /** nvidia-smi's index, or the position in PCI order (sysfs) */
  index: number;
  /** domain:bus:device.function, lowercase, e.g. 0000:3b:00.0 */
  pci: string;
  /** the product name where nvidia-smi says it */
  name?: string;
}

const PCI = /^(?:([0-9a-f]{4,8}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i;

/** '00000000:3B:00.0' (nvidia-smi) or '3b:00.0' → '0000:3b:00.0'; undefined when it is not a PCI address. */
export function normalizePci(text: string): string | undefined {
  const m = PCI.exec(text.trim());
  if (m === null) return undefined;
  const domain = (m[1] ?? '0000').toLowerCase().slice(-4).padStart(4, '0');
  return `${domain}:${m[2]!.toLowerCase()}:${m[3]!.toLowerCase()}.${m[4]}`;
}

/** `nvidia-smi --query-gpu=index,pci.bus_id,name --format=csv,noheader` lines → GPUs. */
export function parseNvidiaSmi(text: string): PciGpu[] {
  const gpus: PciGpu[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const [index, bus, ...name] = line.split(',').map((s) => s.trim());
    const pci = normalizePci(bus ?? '');
    if (!/^\d+$/.test(index ?? '') || pci === undefined) throw new Error(`nvidia-smi: expected 'index, pci.bus_id, name', got '${line.trim()}'`);
    gpus.push({ index: Number(index), pci, name: name.join(',') });
  }
  return gpus;
}

/** PCI display controllers (class 0x0300 VGA, 0x0302 3D) under `root`/bus/pci/devices, in address order. */
export function sysfsGpus(root = '/sys'): PciGpu[] {
  const dir = join(root, 'bus', 'pci', 'devices');
  if (!existsSync(dir)) return [];
  const found = readdirSync(dir).filter((d) => {
    try {
      return /^0x030[02]/.test(readFileSync(join(dir, d, 'class'), 'utf8').trim());
    } catch {
      return false;
    }
  });
  return found.map((d) => normalizePci(d)).filter((p): p is string => p !== undefined).sort().map((pci, index) => ({ index, pci }));
}

/** This host's GPUs: nvidia-smi where it runs ($SPLITNET_NVIDIA_SMI names another binary: tests), else sysfs ($SPLITNET_SYSFS: its root). */
export function listPciGpus(env: NodeJS.ProcessEnv = process.env): PciGpu[] {
  try {
    const out = execFileSync(env.SPLITNET_NVIDIA_SMI ?? 'nvidia-smi', ['--query-gpu=index,pci.bus_id,name', '--format=csv,noheader'],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000, env });
    return parseNvidiaSmi(out);
  } catch (err) {
    if (err instanceof Error && err.message.startsWith('nvidia-smi:')) throw err;
    return sysfsGpus(env.SPLITNET_SYSFS);
  }
}

/** The GPU a worker's `device` names: an index (nvidia-smi's numbering) or a PCI address. Refuses one that is not here, listing what is. */
export function gpuFor(device: number | string, gpus: PciGpu[]): PciGpu {
  const pci = typeof device === 'string' ? normalizePci(device) : undefined;
  const gpu = pci !== undefined ? gpus.find((g) => g.pci === pci) : gpus.find((g) => g.index === device);
  if (gpu === undefined) {
    const here = gpus.length === 0 ? 'none (no nvidia-smi, no display controller in sysfs)' : gpus.map((g) => `${g.index} ${g.pci}${g.name ? ` '${g.name}'` : ''}`).join(', ');
    throw new UsageError(`GPU ${typeof device === 'string' ? device : `index ${device}`} is not on this host; it has ${here}`);
  }
  return gpu;
}

/** The environment under which Vulkan shows this process `pci` only (Mesa's device-select layer). */
export function vulkanOnly(pci: string): Record<string, string> {
  return { DRI_PRIME: `pci-${pci.replace(/[:.]/g, '_')}`, MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE: '1' };
}

/**
 * Checks what Vulkan lists once vulkanOnly(gpu.pci) is in effect: exactly
 * one adapter, the GPU's product where nvidia-smi named it. Returns the
 * adapter's name (Dawn's filter); refuses with one line otherwise, so two
 * workers never share a card by accident.
 */
export function checkOnlyAdapter(listed: string[], gpu: PciGpu): string {
  if (listed.length === 0) {
    throw new UsageError(`webgpu: GPU ${gpu.index} (${gpu.pci}): Vulkan lists no adapter under DRI_PRIME=${vulkanOnly(gpu.pci).DRI_PRIME} ` +
      '(no Vulkan loader or driver here, or the device-select layer hid every device: is the address right?)');
  }
  if (listed.length !== 1) {
    throw new UsageError(`webgpu: GPU ${gpu.index} (${gpu.pci}) could not be isolated: Vulkan still lists ${listed.length} adapters ` +
      `(${listed.map((n) => `'${n}'`).join(', ') || 'none'}) under DRI_PRIME=${vulkanOnly(gpu.pci).DRI_PRIME}; ` +
      'install Mesa\'s device-select layer (Debian: mesa-vulkan-drivers), or give each worker its own GPU by name');
  }
  const name = listed[0]!;
  if (gpu.name !== undefined && gpu.name !== '' && !name.includes(gpu.name) && !gpu.name.includes(name)) {
    throw new UsageError(`webgpu: GPU ${gpu.index} (${gpu.pci}) is '${gpu.name}' to nvidia-smi, but Vulkan opened '${name}': not the device this worker was given`);
  }
  return name;
}
