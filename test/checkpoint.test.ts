import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  checkState,
  checkpointFiles, flattenState, MANIFEST_FILE, mergeStates, momentumKey, readCheckpointState, readCheckpointTensors, saveCheckpoint,
} from '../src/checkpoint/checkpoint.js';
import { loadModelState, readModelState } from '../src/checkpoint/model-state.js';
import { readSafetensors, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { fromTorch, permute, toTorch } from '../src/checkpoint/torch-layout.js';
import { alexnet } from '../src/model/alexnet.js';
import { buildModel, disposeModel, parameterShapes } from '../src/model/build.js';
import { CPU_DEFAULTS } from '../src/config/train.js';
import { Sgd } from '../src/model/sgd.js';
import { setupBackends } from './helpers/backends.js';
import { tempDir } from './helpers/idx-files.js';

beforeAll(setupBackends);

describe('safetensors', () => {
  it('round-trips names, shapes, values and metadata', () => {
    const path = join(tempDir(), 'a.safetensors');
    writeSafetensors(path, [
      { name: 'w', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
      { name: 'b', shape: [3], data: Float32Array.from([-1, 0.5, 7]) },
    ], { note: 'x' });
    const f = readSafetensors(path);
    expect(f.metadata).toEqual({ note: 'x' });
    expect(f.tensors.get('w')).toEqual({ name: 'w', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) });
    expect(Array.from(f.tensors.get('b')!.data)).toEqual([-1, 0.5, 7]);
    // the header length field and 8-byte alignment follow the format
    const raw = readFileSync(path);
    expect(Number(raw.readBigUInt64LE(0)) % 8).toBe(0);
  });

  it('refuses a corrupt file, naming it', () => {
    const dir = tempDir();
    const path = join(dir, 'bad.safetensors');
    writeFileSync(path, Buffer.from([1, 2, 3]));
    expect(() => readSafetensors(path)).toThrow(`${path}: truncated: 3 bytes, no safetensors header`);
    const huge = Buffer.alloc(16);
    huge.writeBigUInt64LE(10_000n, 0);
    writeFileSync(path, huge);
    expect(() => readSafetensors(path)).toThrow(`${path}: header length 10000 does not fit a 16-byte file`);
    writeSafetensors(path, [{ name: 'w', shape: [4], data: new Float32Array(4) }]);
    const cut = readFileSync(path).subarray(0, -4);
    writeFileSync(path, cut);
    expect(() => readSafetensors(path)).toThrow(/w: bytes \[0, 16\) do not hold \[4\] float32 within 12 data bytes/);
  });
});

describe('PyTorch layout', () => {
  it('permute moves axes: [2,3] -> [3,2] and a 4D case against index arithmetic', () => {
    expect(Array.from(permute(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3], [1, 0]).data)).toEqual([1, 4, 2, 5, 3, 6]);
    const shape = [2, 3, 4, 5];
    const data = Float32Array.from({ length: 120 }, (_, i) => i);
    const { data: out, shape: outShape } = permute(data, shape, [3, 2, 0, 1]);
    expect(outShape).toEqual([5, 4, 2, 3]);
    // out[o, i, h, w] = in[h, w, i, o]
    expect(out[((4 * 4 + 1) * 2 + 1) * 3 + 2]).toBe(((1 * 3 + 2) * 4 + 1) * 5 + 4);
  });

  for (const arch of ['d2l', 'original'] as const) {
    it(`every ${arch} parameter round-trips, conv as [out,in,kh,kw], dense as [out,in]`, () => {
      const spec = alexnet({ arch, width: 1 / 16, resolution: 67, classes: 10 });
      const m = buildModel(spec, { seed: 2 });
      for (const [name, v] of m.params) {
        const ours = v.dataSync() as Float32Array;
        const t = toTorch(spec, name, v.shape, ours);
        expect(t.name).toBe(name.replace(/kernel$/, 'weight'));
        if (v.rank === 4) expect(t.shape).toEqual([v.shape[3], v.shape[2], v.shape[0], v.shape[1]]);
        if (v.rank === 2) expect(t.shape).toEqual([v.shape[1], v.shape[0]]);
        expect(Array.from(fromTorch(spec, name, v.shape, t.data))).toEqual(Array.from(ours));
      }
      disposeModel(m);
    });
  }

  it("reorders fc6's inputs from our (tower, h, w, c) to PyTorch's (tower·c, h, w)", () => {
    const spec = alexnet({ arch: 'original', width: 1 / 16, resolution: 99, classes: 10 });
    // pool5 per tower is [8, 2, 2]: 32 inputs per tower, 64 in all; fc6 has 128 units per tower
    const inF = 64;
    const data = Float32Array.from({ length: inF * 128 }, (_, i) => Math.floor(i / 128)); // value = our input index
    const t = toTorch(spec, 'fc6.t0.kernel', [inF, 128], data);
    const torchIndex = (tower: number, c: number, h: number, w: number) => ((tower * 8 + c) * 2 + h) * 2 + w;
    const ourIndex = (tower: number, c: number, h: number, w: number) => tower * 32 + (h * 2 + w) * 8 + c;
    for (const [tower, c, h, w] of [[0, 0, 0, 1], [1, 3, 1, 0], [1, 7, 1, 1]] as const) {
      expect(t.data[0 * inF + torchIndex(tower, c, h, w)]).toBe(ourIndex(tower, c, h, w));
    }
  });
});

describe('checkpoints', () => {
  it('restore weights and momentum exactly', async () => {
    const dir = tempDir();
    const spec = alexnet({ arch: 'd2l', width: 1 / 16, resolution: 67 });
    const a = buildModel(spec, { seed: 1 });
    const opt = new Sgd({ lr: 0.1, momentum: 0.9, weightDecay: 0 });
    const grads = new Map([...a.params].map(([n, v]) => [n, tf.onesLike(v) as tf.Tensor]));
    opt.apply(a.params, grads);
    saveCheckpoint(dir, spec, await readModelState(a, opt), { ...CPU_DEFAULTS, width: 1 / 16, resolution: 67 }, { epoch: 0, step: 3, globalStep: 3 });
    const b = buildModel(spec, { seed: 99 });
    const opt2 = new Sgd({ lr: 0.1, momentum: 0.9, weightDecay: 0 });
    loadModelState(b, opt2, readCheckpointTensors(dir, spec, parameterShapes(spec)));
    expect([...opt2.buffers().keys()]).toEqual([...a.params.keys()]);
    for (const [name, v] of a.params) {
      expect(Array.from(b.params.get(name)!.dataSync())).toEqual(Array.from(v.dataSync()));
      expect(Array.from(opt2.buffers().get(name)!.dataSync())).toEqual(Array.from(opt.buffers().get(name)!.dataSync()));
    }
    const state = readCheckpointState(dir);
    expect(state.position).toEqual({ epoch: 0, step: 3, globalStep: 3 });
    expect(state.config.width).toBe(1 / 16);
    tf.dispose([...grads.values()]);
    [opt, opt2].forEach((o) => o.dispose());
    [a, b].forEach(disposeModel);
  });

  it("a state travels as one list (parameters, then momentum.<name>) and merges back from the towers' halves in parameter order", () => {
    const t = (name: string, value: number) => ({ name, shape: [1], data: Float32Array.of(value) });
    const order = ['conv1.t0.kernel', 'conv1.t0.bias', 'conv1.t1.kernel', 'conv1.t1.bias'];
    const tower = (k: number) => flattenState({ params: [t(order[2 * k]!, k), t(order[2 * k + 1]!, k + 0.5)], momentum: [t(order[2 * k]!, -k)] });
    expect(tower(1).map((x) => x.name)).toEqual(['conv1.t1.kernel', 'conv1.t1.bias', momentumKey('conv1.t1.kernel')]);
    expect(momentumKey('conv1.t1.kernel')).toBe('momentum.conv1.t1.kernel');
    const merged = mergeStates([tower(1), tower(0)], order);
    expect(merged.params.map((p) => [p.name, p.data[0]])).toEqual([[order[0], 0], [order[1], 0.5], [order[2], 1], [order[3], 1.5]]);
    expect(merged.momentum.map((p) => [p.name, p.data[0]])).toEqual([[order[0], -0], [order[2], -1]]);
  });

  it('checkState refuses a state with a missing, unknown, repeated or misshapen tensor, naming it', () => {
    const spec = alexnet({ arch: 'd2l', width: 1 / 16, resolution: 67 });
    const shapes = parameterShapes(spec);
    const full = () => ({
      params: [...shapes].map(([name, shape]) => ({ name, shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) })),
      momentum: [] as Array<{ name: string; shape: number[]; data: Float32Array }>,
    });
    expect(() => checkState(full(), shapes)).not.toThrow();
    const missing = full();
    missing.params.pop();
    expect(() => checkState(missing, shapes)).toThrow('missing parameter(s) fc8.bias');
    const unknown = full();
    unknown.params.push({ name: 'fc9.kernel', shape: [1], data: new Float32Array(1) });
    expect(() => checkState(unknown, shapes)).toThrow('parameter fc9.kernel is not a parameter of this model');
    const twice = full();
    twice.params.push(twice.params[0]!);
    expect(() => checkState(twice, shapes)).toThrow('parameter conv1.kernel appears twice');
    const wrong = full();
    wrong.momentum.push({ name: 'fc8.bias', shape: [3], data: new Float32Array(3) });
    expect(() => checkState(wrong, shapes)).toThrow('momentum of fc8.bias is [3] with 3 values, the model\'s is [10]');
  });

  it('refuses a bad state file, naming it and the problem', async () => {
    const dir = tempDir();
    const spec = alexnet({ arch: 'd2l', width: 1 / 16, resolution: 67 });
    const m = buildModel(spec, { seed: 1 });
    const opt = new Sgd({ lr: 0.1, momentum: 0, weightDecay: 0 });
    saveCheckpoint(dir, spec, await readModelState(m, opt), CPU_DEFAULTS, { epoch: 0, step: 1, globalStep: 1 });
    const files = checkpointFiles(dir)!;
    const state = JSON.parse(readFileSync(files.state, 'utf8'));
    // A state file rewritten and committed again (its manifest entry updated): its content is what is checked.
    const recommit = (content: object) => {
      const bytes = Buffer.from(JSON.stringify(content));
      writeFileSync(files.state, bytes);
      const manifest = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), 'utf8'));
      manifest.state = { ...manifest.state, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') };
      writeFileSync(join(dir, MANIFEST_FILE), JSON.stringify(manifest));
    };
    recommit({ ...state, config: { ...state.config, lr: 'fast' } });
    expect(() => readCheckpointState(dir)).toThrow(/checkpoint-1-[0-9a-f]+\.json: lr: /);
    recommit({ ...state, config: { ...state.config, colour: 'red' } });
    expect(() => readCheckpointState(dir)).toThrow(/checkpoint-1-[0-9a-f]+\.json: \(top level\): unknown key 'colour'$/);
    recommit({ ...state, position: { epoch: 0, step: -1, globalStep: 1 } });
    expect(() => readCheckpointState(dir)).toThrow(/checkpoint-1-[0-9a-f]+\.json: position \{"epoch":0,"step":-1,"globalStep":1\}: expected \{epoch, step, globalStep\} as counts/);
    expect(() => readCheckpointState(tempDir())).toThrow(/checkpoint\.manifest\.json: not found \(nor an old-format checkpoint\.json\): nothing to resume in this directory/);
    disposeModel(m);
  });
});
