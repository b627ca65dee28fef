import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadClusterConfig, parseClusterConfig } from '../src/config/cluster.js';
import { planDevices } from '../src/run/launcher.js';
import { splitnet } from './helpers/cli.js';
import { tempDir } from './helpers/idx-files.js';

const base = {
  coordinator: { host: '127.0.0.1', port: 5550 },
  transport: 'tcp',
  workers: [{ host: '127.0.0.1', device: 'cpu', port: 5560 }, { host: '127.0.0.1', device: 'cpu', port: 5561 }],
};

describe('cluster.config.json', () => {
  it('the shipped default is a local two-worker CPU cluster', () => {
    const cfg = loadClusterConfig('cluster.config.json');
    expect(cfg.workers.map((w) => [w.host, w.device])).toEqual([['127.0.0.1', 'cpu'], ['127.0.0.1', 'cpu']]);
    expect(cfg.bucketBytes).toBe(25 * 2 ** 20);
  });

  const bad: Array<[string, unknown, string]> = [
    ['an unknown key', { ...base, colour: 'red' }, "cfg: (top level): unknown key 'colour'"],
    ['an unknown worker key', { ...base, workers: [{ ...base.workers[0], gpu: 1 }, base.workers[1]] }, "cfg: workers.0: unknown key 'gpu'"],
    ['a wrong type', { ...base, coordinator: { host: '127.0.0.1', port: '5550' } }, 'cfg: coordinator.port: Invalid input: expected number, received string'],
    ['a bad transport', { ...base, transport: 'udp' }, 'cfg: transport: Invalid option: expected one of "tcp"|"ipc"'],
    ['a duplicate port', { ...base, workers: [base.workers[0], { ...base.workers[1], port: 5560 }] }, 'cfg: workers.1.port: port 5560 on 127.0.0.1 is already used by workers.0.port'],
    ['a worker on the coordinator port', { ...base, workers: [{ ...base.workers[0], port: 5550 }, base.workers[1]] }, 'cfg: workers.0.port: port 5550 on 127.0.0.1 is already used by coordinator.port'],
    ['a duplicate device', { ...base, workers: [{ ...base.workers[0], device: 0 }, { ...base.workers[1], device: 0 }] }, "cfg: workers.1.device: GPU 0 on 127.0.0.1 is already workers.0's"],
    ['no workers', { ...base, workers: [] }, 'cfg: workers: Too small: expected array to have >=1 items'],
    ['a negative GPU index', { ...base, workers: [{ ...base.workers[0], device: -1 }, base.workers[1]] }, 'cfg: workers.0.device:'],
  ];
  for (const [what, raw, message] of bad) {
    it(`refuses ${what}, naming the key`, () => {
      expect(() => parseClusterConfig(raw, 'cfg')).toThrow(message);
    });
  }

  it('splitnet launch with a bad config: one line, exit code 2', () => {
    const path = join(tempDir(), 'c.json');
    writeFileSync(path, JSON.stringify({ ...base, workers: [base.workers[0], { ...base.workers[1], port: 5560 }] }));
    const r = splitnet(['launch', '--config', path, '--synthetic']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`splitnet: ${path}: workers.1.port: port 5560 on 127.0.0.1 is already used by workers.0.port\n`);
    writeFileSync(path, '{"coordinator": ');
    const r2 = splitnet(['launch', '--config', path]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(new RegExp(`^splitnet: ${path}: not JSON \\(.*\\)\\n$`));
    const r3 = splitnet(['launch', '--config', join(tempDir(), 'missing.json')]);
    expect(r3.stderr).toMatch(/missing\.json: cannot be read \(ENOENT\)/);
  });
});

describe('devices and the single-process fallback', () => {
  const gpuCluster = (devices: number[]) => parseClusterConfig({ ...base, workers: devices.map((d, i) => ({ host: '127.0.0.1', device: d, port: 5560 + i })) });

  it('two GPUs configured and present: two workers', () => {
    expect(planDevices(gpuCluster([0, 1]), [0, 1])).toEqual({ workers: gpuCluster([0, 1]).workers });
  });

  it('one GPU present of two configured: single mode, saying why', () => {
    const plan = planDevices(gpuCluster([0, 1]), [0]);
    expect(plan.single).toBe('1 of 2 configured devices are available (no GPU 1 here; nvidia-smi lists 0): training in one process (single mode)');
  });

  it('no GPU at all: single mode; a config of one worker: single mode', () => {
    expect(planDevices(gpuCluster([0, 1]), []).single).toMatch(/^0 of 2 configured devices are available \(no GPU 0, 1 here; nvidia-smi lists none\)/);
    expect(planDevices(parseClusterConfig({ ...base, workers: [base.workers[0]] }), []).single).toBe('the cluster config has one worker: training in one process (single mode)');
  });

  it('two workers may share one GPU when both say "shared" (how a one-GPU box runs both modes)', () => {
    const shared = parseClusterConfig({ ...base, workers: base.workers.map((w) => ({ ...w, device: 0, shared: true })) });
    expect(shared.workers.map((w) => [w.device, w.shared])).toEqual([[0, true], [0, true]]);
    expect(planDevices(shared, [0])).toEqual({ workers: shared.workers });
    const oneSays = { ...base, workers: [{ ...base.workers[0], device: 0, shared: true }, { ...base.workers[1], device: 0 }] };
    expect(() => parseClusterConfig(oneSays, 'cfg')).toThrow(`cfg: workers.1.device: GPU 0 on 127.0.0.1 is already workers.0's (set "shared": true on both to let them share it)`);
  });

  it('a GPU may be named instead of numbered; its worker checks it when it opens the adapter', () => {
    const named = parseClusterConfig({ ...base, workers: [{ ...base.workers[0], device: 'H200' }, { ...base.workers[1], device: 'A100' }] });
    expect(planDevices(named, []).workers).toEqual(named.workers);
    const twice = { ...base, workers: base.workers.map((w) => ({ ...w, device: 'H200' })) };
    expect(() => parseClusterConfig(twice, 'cfg')).toThrow(`cfg: workers.1.device: GPU "H200" on 127.0.0.1 is already workers.0's`);
    expect(() => parseClusterConfig({ ...base, workers: [{ ...base.workers[0], device: ' ' }, base.workers[1]] }, 'cfg')).toThrow('cfg: workers.0.device:');
  });

  it('CPU workers need no GPU', () => {
    expect(planDevices(parseClusterConfig(base), []).single).toBeUndefined();
  });

  it('splitnet launch falls back to single mode with a fake device list of one GPU', () => {
    const dir = tempDir();
    const path = join(dir, 'c.json');
    writeFileSync(path, JSON.stringify({ ...base, workers: [{ ...base.workers[0], device: 0 }, { ...base.workers[1], device: 1 }] }));
    const r = splitnet(['--backend', 'wasm', 'launch', '--config', path, '--synthetic', '--width', '0.125', '--resolution', '67', '--batch', '8',
      '--train-samples', '16', '--test-samples', '8', '--out', join(dir, 'run'), '--no-progress'], { SPLITNET_GPUS: '0' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^splitnet: 1 of 2 configured devices are available \(no GPU 1 here; nvidia-smi lists 0\): training in one process \(single mode\)\nsplitnet train: d2l/);
  });
});
