/**
 * Times one SGD training step in this process (the child side of the compute
 * benchmark) and prints one JSON object. Flags: --arch --resolution --width
 * --batch --steps --warmup --backend --adapter, and --flag NAME=value (a tfjs
 * environment flag, repeatable). The wasm kernel set comes from
 * SPLITNET_WASM_KERNELS so that each variant runs in a fresh process.
 */
import * as tf from '@tensorflow/tfjs';
import { parseArgs } from 'node:util';
import { initBackend, type BackendChoice } from '../src/backend.js';
import { closeWebGpu, parseAdapterWant } from '../src/webgpu.js';
import { alexnet } from '../src/model/alexnet.js';
import type { Arch } from '../src/model/spec.js';
import { buildModel } from '../src/model/build.js';
import { Sgd } from '../src/model/sgd.js';
import { trainStep } from '../src/parallel/single.js';

const { values } = parseArgs({
  options: {
    arch: { type: 'string', default: 'd2l' },
    resolution: { type: 'string', default: '96' },
    width: { type: 'string', default: '1' },
    batch: { type: 'string', default: '32' },
    steps: { type: 'string', default: '8' },
    warmup: { type: 'string', default: '2' },
    backend: { type: 'string', default: 'wasm' },
    adapter: { type: 'string', default: 'hardware' },
    flag: { type: 'string', multiple: true, default: [] },
  },
  strict: true,
});

const backend = await initBackend(values.backend as BackendChoice, parseAdapterWant(values.adapter));
const flags: Record<string, boolean | number> = {};
for (const f of values.flag) {
  const m = /^([A-Z0-9_]+)=(true|false|-?\d+(?:\.\d+)?)$/.exec(f);
  if (m === null) throw new Error(`--flag: expected NAME=true|false|number, got '${f}'`);
  flags[m[1]!] = m[2] === 'true' ? true : m[2] === 'false' ? false : Number(m[2]);
  tf.env().set(m[1]!, flags[m[1]!]!);
}
const spec = alexnet({ arch: values.arch as Arch, resolution: Number(values.resolution), width: Number(values.width) });
const batch = Number(values.batch);
const model = buildModel(spec, { seed: 1 });
const opt = new Sgd({ lr: 0.01, momentum: 0, weightDecay: 0 });
const [c, h, w] = spec.input;
// Synthetic data: the compute benchmark times the step, not the input pipeline.
const x = tf.randomUniform([batch, h, w, c], 0, 1, 'float32', 7) as tf.Tensor4D;
const labels = tf.tensor1d(Array.from({ length: batch }, (_, i) => i % spec.classes), 'int32');

const stepMs: number[] = [];
const total = Number(values.warmup) + Number(values.steps);
for (let step = 0; step < total; step++) {
  const t0 = performance.now();
  await trainStep(model, opt, x, labels, { dropout: { seed: 1, step, firstSample: 0 } }); // reads the loss: the step is complete
  const dt = performance.now() - t0;
  if (step >= Number(values.warmup)) stepMs.push(dt);
}
const sorted = [...stepMs].sort((a, b) => a - b);
const median = sorted.length % 2 === 1
  ? sorted[(sorted.length - 1) / 2]!
  : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
console.log(JSON.stringify({
  framework: `tfjs ${tf.version.tfjs} ${backend.name}`,
  kernels: backend.name === 'wasm' ? (process.env.SPLITNET_WASM_KERNELS ?? 'all') : 'native',
  ...(backend.adapter ? { adapter: backend.adapter } : {}),
  flags,
  threads: 1,
  batch,
  resolution: h,
  width: spec.width,
  stepMs: stepMs.map((t) => Math.round(t * 10) / 10),
  medianStepMs: Math.round(median * 10) / 10,
  imagesPerSec: Math.round((batch / median) * 1000 * 100) / 100,
  params: [...model.params.values()].reduce((n, v) => n + v.size, 0),
}));
closeWebGpu(); // Dawn's instance would keep the process alive
