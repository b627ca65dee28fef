/**
 * What a resumed run takes from the command line: the same flags again (a
 * requeued Slurm job repeats its own), where it runs (backend, adapter, data
 * directory, checkpoint and evaluation cadence), and nothing that would
 * change the saved run.
 */
import { describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, parseTrainConfig, type TrainConfig } from '../src/config/train.js';
import { commandLineConfig, givenConfig, newRunConfig, resumeOverrides } from '../src/config/train-flags.js';

const SAVED: TrainConfig = { ...CPU_DEFAULTS, width: 0.125, epochs: 3 };

describe('flags on --resume', () => {
  it('the flags the run was started with, given again, are accepted and change nothing', () => {
    expect(resumeOverrides('runs/x', SAVED, givenConfig({ width: 0.125, epochs: 3, lr: SAVED.lr }, undefined))).toEqual({});
  });

  it('where the run computes, reads and saves is taken from the command line', () => {
    const given = givenConfig({ backend: 'cpu', dataDir: '/data/fm', checkpointEvery: 50, evalBatch: 128 }, undefined);
    expect(resumeOverrides('runs/x', SAVED, given)).toEqual({ backend: 'cpu', dataDir: '/data/fm', checkpointEvery: 50, evalBatch: 128 });
  });

  const refused: Array<[string, Partial<TrainConfig>, 'cpu' | 'd2l' | undefined, string]> = [
    ['a wider net', { width: 0.5 }, undefined, '--resume runs/x: --width 0.5 differs from the run\'s saved width 0.125'],
    ['more epochs', { epochs: 5 }, undefined, '--epochs 5 differs from the run\'s saved epochs 3'],
    ['another decay schedule', { lrDecayEpochs: [1, 2] }, undefined, '--lr-decay-epochs 1,2 differs from the run\'s saved lrDecayEpochs '],
    ['generated images for a run on Fashion-MNIST', { data: 'synthetic' }, undefined, '--synthetic differs from the run\'s saved data fashion-mnist'],
    ['the d2l recipe for a CPU-recipe run', {}, 'd2l', '--width 1 differs from the run\'s saved width 0.125'],
    ['bf16 on the wire for a run that sent float32 (it changes the numbers)', { wire: 'bf16' }, undefined, '--resume runs/x: --wire bf16 differs from the run\'s saved wire fp32'],
  ];
  for (const [what, flags, recipe, message] of refused) {
    it(`refuses ${what}, naming the flag and both values`, () => {
      expect(() => resumeOverrides('runs/x', SAVED, givenConfig(flags, recipe))).toThrow(message);
    });
  }

  it('--mode model makes the run the two-tower net even under --recipe d2l, and the same command line resumes it', () => {
    const line = { recipe: 'd2l' as const, recipeGiven: true, mode: 'model' };
    const given = commandLineConfig({ epochs: 2 }, line);
    expect([given.arch, given.channels, given.resolution]).toEqual(['original', 3, 224]);
    const saved = newRunConfig(given, 'd2l');
    expect(resumeOverrides('runs/x', saved, commandLineConfig({ epochs: 2 }, line))).toEqual({});
  });

  it('refuses --recipe cpu for a run started with the d2l recipe', () => {
    const d2l = newRunConfig(givenConfig({}, 'd2l'), 'd2l');
    expect(() => resumeOverrides('runs/x', d2l, commandLineConfig({}, { recipe: 'cpu', recipeGiven: true, mode: 'single' })))
      .toThrow("--width 0.25 differs from the run's saved width 1");
  });
});

describe('the wire key', () => {
  it('is fp32 unless given, bf16 when given, and a config saved before it existed (a checkpoint) reads as fp32', () => {
    expect(newRunConfig({}, 'cpu').wire).toBe('fp32');
    expect(newRunConfig({ wire: 'bf16' }, 'cpu').wire).toBe('bf16');
    const { wire: _, ...old } = CPU_DEFAULTS;
    expect(parseTrainConfig(old, 'checkpoint').wire).toBe('fp32');
    expect(() => parseTrainConfig({ ...CPU_DEFAULTS, wire: 'fp16' }, 'checkpoint')).toThrow(/^checkpoint: wire: /);
  });

  it('given again on a resume, it is accepted', () => {
    const saved: TrainConfig = { ...SAVED, wire: 'bf16' };
    expect(resumeOverrides('runs/x', saved, givenConfig({ wire: 'bf16' }, undefined))).toEqual({});
    expect(() => resumeOverrides('runs/x', saved, givenConfig({ wire: 'fp32' }, undefined))).toThrow("--wire fp32 differs from the run's saved wire bf16");
  });
});
