/**
 * The layer-by-layer engine against tfjs's autodiff of the same network
 * (tf.grads / tf.variableGrads over test/helpers/autodiff-forward.ts).
 *
 * Tolerance: 1e-5 relative (max |a - b| / max |b| per tensor). The engine's
 * backward passes are the kernels tfjs's own gradients call, in the same
 * order, so on wasm they come out bit for bit equal today; 1e-5 leaves room
 * for a backend that fuses differently, and a wrong derivative, stride, pad,
 * mask or tower slice is off by far more. Both nets use Xavier weights here:
 * with the paper's N(0, 0.01) at width 1/8 the conv gradients are ~1e-7 and
 * made of cancelling terms, so a relative error would measure only noise.
 */
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { alexnet } from '../src/model/alexnet.js';
import { buildModel, disposeModel } from '../src/model/build.js';
import { backward, disposeTape, forward, lossAndGrads, predict } from '../src/model/engine.js';
import { layerBackward, layerForward, softmaxCrossEntropy } from '../src/model/layers.js';
import type { LayerSpec } from '../src/model/spec.js';
import { forward as autodiffForward } from './helpers/autodiff-forward.js';
import { pseudoRandom, relError, setupBackends } from './helpers/backends.js';

beforeAll(setupBackends);

const TOLERANCE = 1e-5;
const tensor = (shape: number[], seed: number) => tf.tensor(pseudoRandom(shape.reduce((a, b) => a * b, 1), seed), shape);

/** One layer: the engine's backward against tf.grads of the layer's forward, for x, kernel and bias. */
function checkLayer(layer: LayerSpec, xShape: number[], kernelShape?: number[], dropout = false): Record<string, number> {
  return tf.tidy(() => {
    const x = tensor(xShape, 1);
    const params = kernelShape ? { kernel: tf.mul(tensor(kernelShape, 2), 0.3), bias: tensor([kernelShape[kernelShape.length - 1]!], 3) } : undefined;
    const drop = dropout ? { key: { seed: 5, step: 2, firstSample: 0 }, firstUnit: 0, totalUnits: 10 } : undefined;
    const fwd = layerForward(layer, x, params, drop);
    const dy = tensor(fwd.y.shape, 4);
    const mine = layerBackward(layer, { x, y: fwd.y, ...(fwd.mask ? { mask: fwd.mask } : {}) }, dy, params, true);
    const inputs = params ? [x, params.kernel, params.bias] : [x];
    const ref = tf.grads((...xs: tf.Tensor[]) => layerForward(layer, xs[0]!, params ? { kernel: xs[1]!, bias: xs[2]! } : undefined, drop).y)(inputs, dy);
    expect(mine.dx!.shape).toEqual(x.shape);
    const out: Record<string, number> = { dx: relError(mine.dx!.dataSync(), ref[0]!.dataSync()) };
    if (params) {
      expect(mine.kernel!.shape).toEqual(params.kernel.shape);
      expect(mine.bias!.shape).toEqual(params.bias.shape);
      out.kernel = relError(mine.kernel!.dataSync(), ref[1]!.dataSync());
      out.bias = relError(mine.bias!.dataSync(), ref[2]!.dataSync());
    }
    return out;
  });
}

describe('each layer kind: backward equals tf.grads of its forward', () => {
  const conv = (kernel: number, stride: number, pad: number, relu: boolean): LayerSpec =>
    ({ kind: 'conv', name: 'c', units: 5, kernel, stride, pad, link: 'local', relu, biasInit: 0 });
  const cases: Array<[string, LayerSpec, number[], number[]?, boolean?]> = [
    ['conv 11×11 stride 4 valid, relu (conv1)', conv(11, 4, 0, true), [2, 27, 27, 3], [11, 11, 3, 5]],
    ['conv 11×11 stride 4 pad 1, relu (d2l conv1)', conv(11, 4, 1, true), [2, 25, 25, 1], [11, 11, 1, 5]],
    ['conv 5×5 stride 1 pad 2, relu (conv2)', conv(5, 1, 2, true), [2, 7, 7, 4], [5, 5, 4, 5]],
    ['conv 3×3 stride 1 pad 1, relu (conv3-5)', conv(3, 1, 1, true), [2, 6, 6, 4], [3, 3, 4, 5]],
    ['conv 3×3 stride 2 pad 1, linear', conv(3, 2, 1, false), [2, 9, 9, 3], [3, 3, 3, 5]],
    ['max pool 3×3 stride 2', { kind: 'maxpool', name: 'p', size: 3, stride: 2 }, [2, 9, 9, 3]],
    ['max pool 2×2 stride 2', { kind: 'maxpool', name: 'p', size: 2, stride: 2 }, [2, 8, 8, 3]],
    ['LRN radius 2, k 2, α 1e-4, β 0.75 (the paper)', { kind: 'lrn', name: 'n', radius: 2, k: 2, alpha: 1e-4, beta: 0.75 }, [2, 4, 4, 7]],
    ['LRN radius 1, k 1, α 0.5, β 0.75 (large α: the gradient couples channels)', { kind: 'lrn', name: 'n', radius: 1, k: 1, alpha: 0.5, beta: 0.75 }, [2, 3, 3, 6]],
    ['flatten [2, 3, 3, 4] -> [2, 36]', { kind: 'flatten', name: 'f' }, [2, 3, 3, 4]],
    ['dense 36 -> 5, relu', { kind: 'dense', name: 'd', units: 5, link: 'local', relu: true, biasInit: 0 }, [3, 36], [36, 5]],
    ['dense 36 -> 5, linear (fc8)', { kind: 'dense', name: 'd', units: 5, link: 'local', relu: false, biasInit: 0 }, [3, 36], [36, 5]],
    ['dropout 0.5 with a keyed mask', { kind: 'dropout', name: 'drop6', rate: 0.5 }, [4, 10], undefined, true],
  ];
  for (const [name, layer, xShape, kernelShape, dropout] of cases) {
    it(name, () => {
      for (const [what, err] of Object.entries(checkLayer(layer, xShape, kernelShape, dropout))) {
        expect.soft(err, what).toBeLessThan(TOLERANCE);
      }
    });
  }

  it('softmax cross-entropy: the loss and dL/dlogits equal tf.losses.softmaxCrossEntropy and its gradient', () => {
    tf.tidy(() => {
      const logits = tf.mul(tensor([4, 10], 9), 3) as tf.Tensor2D;
      const labels = tf.tensor1d([0, 3, 7, 9], 'int32');
      const { loss, dlogits } = softmaxCrossEntropy(logits, labels, true);
      const ref = tf.valueAndGrad((l: tf.Tensor) => tf.losses.softmaxCrossEntropy(tf.oneHot(labels, 10), l) as tf.Scalar)(logits);
      expect(relError(loss.dataSync(), ref.value.dataSync())).toBeLessThan(TOLERANCE);
      expect(relError(dlogits!.dataSync(), ref.grad.dataSync())).toBeLessThan(TOLERANCE);
    });
  });
});

describe('whole networks: every parameter gradient equals tf.variableGrads of the same net', () => {
  for (const arch of ['d2l', 'original'] as const) {
    it(`${arch}, width 1/8, 67×67, batch 4, with dropout: loss and all gradients within ${TOLERANCE}`, async () => {
      const spec = alexnet({ arch, width: 1 / 8, resolution: 67, classes: 10, init: 'xavier-uniform' });
      const [c, h, w] = spec.input;
      const model = buildModel(spec, { seed: 3 });
      const x = tf.tensor4d(pseudoRandom(4 * h * w * c, 11), [4, h, w, c]);
      const y = tf.tensor1d([0, 3, 7, 9], 'int32');
      const dropout = { seed: 3, step: 1, firstSample: 0 };
      const live = tf.memory().numTensors;
      const seen: string[] = [];
      const { loss, grads } = await lossAndGrads(model, x, y, { dropout, onGradient: (name) => seen.push(name) });
      const ref = tf.variableGrads(() => tf.losses.softmaxCrossEntropy(tf.oneHot(y, 10), autodiffForward(model, x, { dropout })) as tf.Scalar, [...model.params.values()]);
      expect(relError(await loss.data(), await ref.value.data())).toBeLessThan(TOLERANCE);
      expect([...grads.keys()].sort()).toEqual([...model.params.keys()].sort());
      for (const [name, v] of model.params) {
        expect.soft(relError(await grads.get(name)!.data(), await ref.grads[v.name]!.data()), name).toBeLessThan(TOLERANCE);
      }
      // handed out as produced: the parameter order reversed (fc8 first, conv1 last)
      expect(seen).toEqual([...model.params.keys()].reverse());
      tf.dispose([loss, ...grads.values(), ref.value, ...Object.values(ref.grads)]);
      expect(tf.memory().numTensors).toBe(live);
      disposeModel(model);
      tf.dispose([x, y]);
    });
  }

  it('forward keeps no tensor beyond its tape, backward none beyond the gradients, and predict none at all', async () => {
    const spec = alexnet({ arch: 'original', width: 1 / 8, resolution: 67, classes: 10, init: 'xavier-uniform' });
    const model = buildModel(spec, { seed: 1 });
    const x = tf.tensor4d(pseudoRandom(2 * 67 * 67 * 3, 2), [2, 67, 67, 3]);
    const live = tf.memory().numTensors;
    const tape = await forward(model, x, {}, true);
    const dlogits = tf.onesLike(tape.logits) as tf.Tensor2D;
    const grads = await backward(model, tape, dlogits, {});
    disposeTape(tape);
    tf.dispose([dlogits, ...grads.values()]);
    expect(tf.memory().numTensors).toBe(live);
    const logits = await predict(model, x);
    expect(logits.shape).toEqual([2, 10]);
    logits.dispose();
    expect(tf.memory().numTensors).toBe(live);
    disposeModel(model);
    x.dispose();
  });
});
