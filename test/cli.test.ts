import { describe, expect, it } from 'vitest';
import { splitnet } from './helpers/cli.js';

describe('splitnet model summary', () => {
  it('--json prints one object with every layer, per tower for original', () => {
    const r = splitnet(['model', 'summary', '--arch', 'original', '--width', '0.25', '--resolution', '99', '--json']);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout) as { arch: string; layers: Array<{ name: string; outputShape: number[]; params: number; tower?: number }>; totalParams: number };
    expect(s.arch).toBe('original');
    expect(s.layers.filter((l) => l.tower === 0).map((l) => l.name)).toContain('conv3');
    expect(s.layers.filter((l) => l.tower === 1)).toHaveLength(s.layers.length / 2);
    expect(s.totalParams).toBe(s.layers.reduce((n, l) => n + l.params, 0));
  });

  it("prints the seed's d2l table with the total", () => {
    const r = splitnet(['model', 'summary']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/pool5\s+256×5×5/);
    expect(r.stdout).toMatch(/flatten\s+6400/);
    expect(r.stdout).toContain('total: 46,764,746 parameters');
  });

  const bad: Array<[string, string[], RegExp]> = [
    ['an unknown flag', ['model', 'summary', '--depth', '3'], /^splitnet: unknown option '--depth'\n$/],
    ['an unknown architecture', ['model', 'summary', '--arch', 'vgg'], /^splitnet: option '--arch <name>' argument 'vgg' is invalid. Allowed choices are d2l, original.\n$/],
    ['a resolution too small', ['model', 'summary', '--resolution', '64'], /^splitnet: --resolution 64 is too small for d2l: pool5 \(3×3, stride 2\) gets 2×2 \(smallest accepted: 65\)\n$/],
    ['a width that is not a number', ['model', 'summary', '--width', 'wide'], /^splitnet: --width: expected a number, got 'wide'\n$/],
    ['a fractional resolution', ['model', 'summary', '--resolution', '99.5'], /^splitnet: --resolution: expected a positive integer, got '99.5'\n$/],
    ['an unknown command', ['frobnicate'], /^splitnet: unknown command 'frobnicate'\n$/],
    ['an unknown backend', ['--backend', 'tpu', 'backend'], /^splitnet: option '--backend <name>' argument 'tpu' is invalid/],
    ['an unknown wire type on train', ['train', '--wire', 'fp16'], /^splitnet: option '--wire <type>' argument 'fp16' is invalid. Allowed choices are fp32, bf16.\n$/],
    ['an unknown wire type on compare', ['compare', '--wire', 'int8'], /^splitnet: option '--wire <type>' argument 'int8' is invalid. Allowed choices are fp32, bf16.\n$/],
    ['zero micro-batches (before any worker starts)', ['launch', '--mode', 'model', '--micro-batches', '0'], /^splitnet: --micro-batches: expected a positive integer, got '0'\n$/],
    ['more micro-batches than a step may have', ['launch', '--mode', 'model', '--batch', '512', '--micro-batches', '512', '--synthetic'], /^splitnet: --micro-batches: expected an integer in 1\.\.256, got 512\n$/],
  ];
  for (const [what, args, message] of bad) {
    it(`refuses ${what} with one line and exit code 2`, () => {
      const r = splitnet(args);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    });
  }
});

describe('splitnet backend', () => {
  it('auto falls back to wasm here and says why', () => {
    const r = splitnet(['backend']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^backend: wasm \(@tensorflow\/tfjs-backend-wasm\): @tensorflow\/tfjs-node-gpu is not installed .*; @tensorflow\/tfjs-node is not installed/);
  });

  it('asking for a native backend that is not installed gives the install command', () => {
    const r = splitnet(['--backend', 'tensorflow-gpu', 'backend']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe("splitnet: backend 'tensorflow-gpu': @tensorflow/tfjs-node-gpu is not installed (npm install @tensorflow/tfjs-node-gpu@4.22.0 (needs CUDA 11.2 and cuDNN 8.1))\n");
  });

  it('cpu is there when asked for', () => {
    const r = splitnet(['--backend', 'cpu', 'backend']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^backend: cpu /);
  });
});
