/**
 * A checkpoint is a PyTorch state_dict: scripts/torch_load_checkpoint.py loads
 * it into torch.nn modules and must produce the logits splitnet computes.
 * Tolerance 1e-4 relative: two float32 implementations of the same net.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { saveCheckpoint } from '../src/checkpoint/checkpoint.js';
import { readModelState } from '../src/checkpoint/model-state.js';
import { writeSafetensors } from '../src/checkpoint/safetensors.js';
import { alexnet } from '../src/model/alexnet.js';
import { buildModel, disposeModel } from '../src/model/build.js';
import { predict } from '../src/model/engine.js';
import { CPU_DEFAULTS } from '../src/config/train.js';
import { Sgd } from '../src/model/sgd.js';
import { relError, setupBackends } from './helpers/backends.js';
import { tempDir } from './helpers/idx-files.js';

const PYTHON = '/usr/bin/python3';
const hasTorch = spawnSync(PYTHON, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
// CI installs Debian's python3-torch, so there the test must run.
const requireTorch = process.env.CI === 'true';

beforeAll(setupBackends);

describe.skipIf(!hasTorch && !requireTorch)('checkpoints in PyTorch', () => {
  for (const arch of ['d2l', 'original'] as const) {
    it(`load into torch.nn and give the same logits: ${arch}, width 1/8, 67×67`, async () => {
      expect(hasTorch, `${PYTHON} cannot import torch`).toBe(true);
      const channels = arch === 'original' ? 3 : 1;
      const config = { ...CPU_DEFAULTS, arch, width: 1 / 8, resolution: 67, channels } as const;
      const spec = alexnet({ arch, width: config.width, resolution: 67, channels, classes: 10 });
      const model = buildModel(spec, { seed: 4 });
      // biases of 0 would hide a swapped bias: give every parameter some value
      for (const v of model.params.values()) if (v.rank === 1) v.assign(tf.randomUniform(v.shape, -0.1, 0.1, 'float32', 5));
      const dir = tempDir();
      const opt = new Sgd({ lr: 0.1, momentum: 0, weightDecay: 0 });
      saveCheckpoint(dir, spec, await readModelState(model, opt), config, { epoch: 0, step: 0, globalStep: 0 });
      const x = tf.randomUniform([3, 67, 67, channels], -1, 1, 'float32', 6) as tf.Tensor4D;
      const ours = await predict(model, x);
      writeSafetensors(join(dir, 'input.safetensors'), [{ name: 'x', shape: x.shape, data: x.dataSync() as Float32Array }]);
      const out = execFileSync(PYTHON, ['scripts/torch_load_checkpoint.py', dir, join(dir, 'input.safetensors')], { encoding: 'utf8' });
      const theirs = (JSON.parse(out) as { logits: number[][] }).logits;
      expect([theirs.length, theirs[0]!.length]).toEqual(ours.shape);
      expect(relError(theirs.flat(), ours.dataSync())).toBeLessThan(1e-4);
      tf.dispose([x, ours]);
      disposeModel(model);
    });
  }
});
