import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { alexnet, smallestResolution } from '../src/model/alexnet.js';
import { buildModel, disposeModel } from '../src/model/build.js';
import { dropoutMask } from '../src/model/dropout.js';
import { disposeTape, forward, predict, type Tape } from '../src/model/engine.js';
import { summarize } from '../src/model/summary.js';
import { relError, setupBackends } from './helpers/backends.js';

beforeAll(setupBackends);

describe('model summary', () => {
  it("d2l at 1×224×224, 10 classes: the seed's shapes and 46,764,746 parameters", () => {
    const s = summarize(alexnet({ arch: 'd2l' }));
    const shape = (name: string) => s.layers.find((l) => l.name === name)!.outputShape;
    expect(shape('conv1')).toEqual([96, 54, 54]);
    expect(shape('pool1')).toEqual([96, 26, 26]);
    expect(shape('conv2')).toEqual([256, 26, 26]);
    expect(shape('pool2')).toEqual([256, 12, 12]);
    expect(shape('conv3')).toEqual([384, 12, 12]);
    expect(shape('conv4')).toEqual([384, 12, 12]);
    expect(shape('conv5')).toEqual([256, 12, 12]);
    expect(shape('pool5')).toEqual([256, 5, 5]);
    expect(shape('flatten')).toEqual([6400]);
    expect(shape('fc6')).toEqual([4096]);
    expect(shape('fc8')).toEqual([10]);
    expect(s.totalParams).toBe(46_764_746);
    expect(s.layers.every((l) => l.tower === undefined)).toBe(true);
  });

  it('original at 3×227×227: the 2012 per-tower shapes, ~61M parameters split evenly', () => {
    const s = summarize(alexnet({ arch: 'original' }));
    const t0 = (name: string) => s.layers.find((l) => l.name === name && l.tower === 0)!;
    expect(t0('conv1').outputShape).toEqual([48, 55, 55]);
    expect(t0('pool1').outputShape).toEqual([48, 27, 27]);
    expect(t0('conv2').outputShape).toEqual([128, 27, 27]);
    expect(t0('conv2').params).toBe(5 * 5 * 48 * 128 + 128); // 5×5×48 kernels: tower-local
    expect(t0('conv3').params).toBe(3 * 3 * 256 * 192 + 192); // 3×3×256 kernels: across towers
    expect(t0('conv4').params).toBe(3 * 3 * 192 * 192 + 192);
    expect(t0('pool5').outputShape).toEqual([128, 6, 6]);
    expect(t0('fc6').params).toBe(2 * 4608 * 2048 + 2048); // both towers' 6×6×128 maps
    expect(t0('fc8').outputShape).toEqual([500]);
    expect(s.towerParams).toEqual([30_482_612, 30_482_612]);
    expect(s.totalParams).toBe(60_965_224);
    expect(s.layers.filter((l) => l.tower === 1)).toHaveLength(s.layers.length / 2);
  });

  it('width scales every channel and unit count', () => {
    const s = summarize(alexnet({ arch: 'd2l', width: 0.25, resolution: 96 }));
    expect(s.layers.find((l) => l.name === 'conv1')!.outputShape).toEqual([24, 22, 22]);
    expect(s.layers.find((l) => l.name === 'fc7')!.outputShape).toEqual([1024]);
  });

  it('throws when the resolution is too small, naming the layer and the smallest size', () => {
    expect(() => alexnet({ arch: 'd2l', resolution: 64 })).toThrow(
      '--resolution 64 is too small for d2l: pool5 (3×3, stride 2) gets 2×2 (smallest accepted: 65)',
    );
    expect(smallestResolution(alexnet({ arch: 'd2l', resolution: 65 }))).toBe(65);
    expect(() => alexnet({ arch: 'd2l', resolution: 65 })).not.toThrow();
  });

  it('throws on an unknown architecture, fewer classes than towers, towers for d2l, bad width or channels', () => {
    expect(() => alexnet({ arch: 'vgg' as never })).toThrow("unknown architecture 'vgg': expected one of d2l, original");
    expect(() => alexnet({ arch: 'original', classes: 3, towers: 4 })).toThrow('--towers 4: fc8 has 3 units, fewer than one per tower (raise --width or --classes)');
    expect(() => alexnet({ arch: 'd2l', towers: 2 })).toThrow("--towers 2: d2l's AlexNet is one tower; the towers divide --arch original");
    expect(() => alexnet({ arch: 'original', towers: 0 })).toThrow('--towers: expected an integer in 1..64, got 0');
    expect(() => alexnet({ arch: 'd2l', width: 0 })).toThrow(/--width: expected a channel multiplier/);
    expect(() => alexnet({ arch: 'd2l', channels: 2 })).toThrow('--channels: expected 1 or 3, got 2');
  });
});

describe('building and running the net', () => {
  const tiny = () => alexnet({ arch: 'original', width: 1 / 16, resolution: 67, classes: 4 });

  it('draws each tower identically whether built alone or with the other', () => {
    const spec = tiny();
    const whole = buildModel(spec, { seed: 5 });
    const alone = buildModel(spec, { seed: 5, towers: [1] });
    expect([...alone.params.keys()].every((k) => k.includes('.t1.'))).toBe(true);
    for (const [name, v] of alone.params) {
      expect(Array.from(v.dataSync())).toEqual(Array.from(whole.params.get(name)!.dataSync()));
    }
    const other = buildModel(spec, { seed: 6, towers: [1] });
    expect(Array.from(other.params.get('conv1.t1.kernel')!.dataSync())).not.toEqual(
      Array.from(alone.params.get('conv1.t1.kernel')!.dataSync()));
    [whole, alone, other].forEach(disposeModel);
  });

  it("uses the paper's initialization for original: N(0, 0.01), biases 1 in conv2/4/5 and fc6/fc7", () => {
    const spec = alexnet({ arch: 'original', width: 0.25, resolution: 99 });
    const m = buildModel(spec, { seed: 1 });
    const w = Array.from(m.params.get('fc6.t0.kernel')!.dataSync());
    const mean = w.reduce((a, b) => a + b, 0) / w.length;
    const std = Math.sqrt(w.reduce((a, b) => a + (b - mean) ** 2, 0) / w.length);
    expect(Math.abs(mean)).toBeLessThan(1e-3);
    expect(std).toBeGreaterThan(0.0098);
    expect(std).toBeLessThan(0.0102);
    const bias = (n: string) => m.params.get(`${n}.t1.bias`)!.dataSync()[0];
    expect([bias('conv1'), bias('conv2'), bias('conv3'), bias('conv4'), bias('conv5'), bias('fc6'), bias('fc7'), bias('fc8')])
      .toEqual([0, 1, 0, 1, 1, 1, 1, 0]);
    disposeModel(m);
  });

  it('takes another initialization when asked (--init)', () => {
    expect(alexnet({ arch: 'original' }).init).toBe('paper-normal');
    expect(alexnet({ arch: 'original', init: 'xavier-uniform' }).init).toBe('xavier-uniform');
    expect(alexnet({ arch: 'd2l', init: 'paper-normal' }).init).toBe('paper-normal');
    // Xavier weights start from zero biases; the paper's biases of 1 go with its N(0, 0.01)
    const m = buildModel(alexnet({ arch: 'original', width: 1 / 16, resolution: 67, classes: 4, init: 'xavier-uniform' }), { seed: 1 });
    expect(Array.from(m.params.get('conv2.t0.bias')!.dataSync())).toEqual(new Array(8).fill(0));
    disposeModel(m);
  });

  it('gives logits [B, classes] with the classes split across towers', async () => {
    const spec = tiny();
    const m = buildModel(spec, { seed: 1 });
    const x = tf.ones([2, 67, 67, 3]) as tf.Tensor4D;
    const logits = await predict(m, x);
    expect(logits.shape).toEqual([2, 4]);
    // fc8 has classes / 2 units per tower
    expect(m.params.get('fc8.t0.bias')!.shape).toEqual([2]);
    expect(m.params.get('fc8.t1.bias')!.shape).toEqual([2]);
    tf.dispose([x, logits]);
    disposeModel(m);
  });

  it('throws when the input shape does not match the spec', async () => {
    const m = buildModel(tiny(), { seed: 1 });
    const x = tf.ones([2, 67, 67, 1]) as tf.Tensor4D;
    await expect(predict(m, x)).rejects.toThrow('engine: expected input [B, 67, 67, 3] (NHWC), got [2,67,67,1]');
    x.dispose();
    disposeModel(m);
  });

  it("a cross layer reads both towers: changing tower 0's conv2 changes tower 1's conv3 output", async () => {
    const spec = tiny();
    // conv3 is declared as a cross link, and each tower's conv3 kernel reads both towers' pool2 channels
    const conv = (name: string) => {
      const l = spec.layers.find((x) => x.name === name);
      if (l?.kind !== 'conv') throw new Error(`${name} is not a conv layer`);
      return l;
    };
    expect(conv('conv3').link).toBe('cross');
    const m = buildModel(spec, { seed: 1 });
    const bothTowers = conv('conv2').units;
    for (const t of [0, 1]) expect(m.params.get(`conv3.t${t}.kernel`)!.shape[2], `conv3.t${t} Cin`).toBe(bothTowers);
    // ... and the engine feeds it both: run the net, change only tower 0's conv2, run again
    const x = tf.randomUniform([1, 67, 67, 3], 0, 1, 'float32', 3) as tf.Tensor4D;
    const outputs = async (): Promise<Record<string, Float32Array>> => {
      const tape: Tape = await forward(m, x, {}, true);
      const out = (name: string, tower: number) => tape.layers.find((l) => l.layer.name === name)!.saved[tower]!;
      const read: Record<string, Float32Array> = {
        pool2t1: (await out('pool2', 1).y.data()) as Float32Array,
        conv3t1: (await out('conv3', 1).y.data()) as Float32Array,
      };
      expect(out('conv3', 1).x.shape[3], "tower 1's conv3 input channels").toBe(bothTowers);
      disposeTape(tape);
      return read;
    };
    const a = await outputs();
    const bias = m.params.get('conv2.t0.bias')!;
    bias.assign(tf.fill(bias.shape, 5));
    const b = await outputs();
    // tower 1's own path up to pool2 is untouched (conv2 is tower-local) ...
    expect(Array.from(b.pool2t1!)).toEqual(Array.from(a.pool2t1!));
    // ... but its conv3 output moves: it reads tower 0's pool2
    expect(relError(b.conv3t1!, a.conv3t1!)).toBeGreaterThan(1e-3);
    x.dispose();
    disposeModel(m);
  });
});

describe('keyed dropout masks', () => {
  it('are the same for a tower or a batch shard as for the whole', () => {
    const key = { seed: 9, step: 3, firstSample: 0 };
    const whole = dropoutMask(key, 'drop6', 4, 6, 0, 6, 0.5).arraySync();
    // the same 6 units as two towers of 3: tower 1's columns are units 3..5
    const t1 = dropoutMask(key, 'drop6', 4, 3, 3, 6, 0.5).arraySync();
    expect(t1.map((r) => r)).toEqual(whole.map((r) => r.slice(3)));
    // samples 2..3 as a data-parallel shard
    const shard = dropoutMask({ ...key, firstSample: 2 }, 'drop6', 2, 6, 0, 6, 0.5).arraySync();
    expect(shard).toEqual(whole.slice(2));
    const values = new Set(whole.flat());
    expect(values).toEqual(new Set([0, 2]));
  });

  it('change with the step and the seed', () => {
    const a = dropoutMask({ seed: 1, step: 0, firstSample: 0 }, 'drop6', 8, 64, 0, 1, 0.5).arraySync();
    const b = dropoutMask({ seed: 1, step: 1, firstSample: 0 }, 'drop6', 8, 64, 0, 1, 0.5).arraySync();
    const c = dropoutMask({ seed: 2, step: 0, firstSample: 0 }, 'drop6', 8, 64, 0, 1, 0.5).arraySync();
    expect(b).not.toEqual(a);
    expect(c).not.toEqual(a);
  });
});
