/**
 * `train` and `launch` flags as a train config: only what the user gave
 * (`givenConfig`), the whole config for a new run (`newRunConfig`), and what
 * a resumed run may take of them (`resumeOverrides`): a flag that would
 * change the saved net or its training is refused naming both values.
 */
import { UsageError } from '../errors.js';
import { CPU_DEFAULTS, D2L_RECIPE, parseTrainConfig, type TrainConfig } from './train.js';

/** The flag that sets each key, for messages. */
const FLAG: Record<keyof TrainConfig, string> = {
  arch: '--arch', init: '--init', towers: '--towers', width: '--width', resolution: '--resolution', channels: '--channels', batch: '--batch',
  epochs: '--epochs', lr: '--lr', momentum: '--momentum', weightDecay: '--weight-decay', lrDecayEpochs: '--lr-decay-epochs',
  lrDecay: '--lr-decay', seed: '--seed', augment: '--augment', trainSamples: '--train-samples', testSamples: '--test-samples',
  data: '--synthetic', dataDir: '--data', checkpointEvery: '--checkpoint-every', evalBatch: '--eval-batch', backend: '--backend',
  adapter: '--adapter', resize: '(config key) resize', wire: '--wire',
};

/**
 * Keys that say where and how often a run computes, reads and saves, not what
 * it computes: a resumed run takes these from the command line (a run may
 * move to another machine), and says so.
 */
const WHERE = ['backend', 'adapter', 'dataDir', 'checkpointEvery', 'evalBatch'] as const;
export type ResumeOverrides = Partial<Pick<TrainConfig, (typeof WHERE)[number]>>;

/** What a preset sets, by name: the same keys for each, so that either, given on a resume, is compared whole. */
const RECIPES = {
  cpu: Object.fromEntries(Object.keys(D2L_RECIPE).map((k) => [k, CPU_DEFAULTS[k as keyof TrainConfig]])) as Partial<TrainConfig>,
  d2l: D2L_RECIPE,
} as const satisfies Record<string, Partial<TrainConfig>>;
export type RecipeName = keyof typeof RECIPES;

/**
 * The config keys a command line sets (givenConfig), with what its mode
 * implies: the split is of the two-tower net, so --mode model without
 * --arch means 'original', and on the CPU recipe Xavier weights (the paper's
 * N(0, 0.01) with biases of 1 lets no signal reach the logits at width
 * 0.25); 'original' without --channels takes RGB (the grey image repeated).
 * A resumed run compares these with its saved config, so the same command
 * line given again (a requeued job) is accepted.
 */
export function commandLineConfig(flags: Partial<TrainConfig>, o: { recipe: RecipeName; recipeGiven: boolean; mode: string }): Partial<TrainConfig> {
  const given = givenConfig(flags, o.recipeGiven ? o.recipe : undefined);
  // --towers divides the original net: without --arch it means that net, as --mode model does.
  if ((o.mode === 'model' || flags.towers !== undefined) && flags.arch === undefined) {
    given.arch = 'original';
    if (flags.init === undefined && o.recipe === 'cpu') given.init = 'xavier-uniform';
  }
  if (given.arch === 'original' && flags.channels === undefined) given.channels = 3;
  return given;
}

/**
 * The config keys the command line sets: the preset's when `--recipe` was
 * given, then every flag given. Nothing implied, nothing defaulted.
 */
export function givenConfig(flags: Partial<TrainConfig>, recipe: RecipeName | undefined): Partial<TrainConfig> {
  const given: Partial<TrainConfig> = { ...(recipe !== undefined ? RECIPES[recipe] : {}) };
  for (const [k, v] of Object.entries(flags)) if (v !== undefined) (given as Record<string, unknown>)[k] = v;
  return given;
}

/** A new run's config: the CPU defaults, the preset, the flags; validated. */
export function newRunConfig(given: Partial<TrainConfig>, recipe: RecipeName): TrainConfig {
  return parseTrainConfig({ ...CPU_DEFAULTS, ...RECIPES[recipe], ...given }, 'flags');
}

const show = (v: unknown): string => (Array.isArray(v) ? v.join(',') : v === undefined ? 'unset' : String(v));

/**
 * What a resume of the run in `dir` (saved with `saved`) takes from `given`:
 * the where-keys; any other key that differs from the saved value is refused
 * naming the flag and both values.
 */
export function resumeOverrides(dir: string, saved: TrainConfig, given: Partial<TrainConfig>): ResumeOverrides {
  const overrides: ResumeOverrides = {};
  for (const [k, v] of Object.entries(given) as Array<[keyof TrainConfig, unknown]>) {
    if ((WHERE as readonly string[]).includes(k)) {
      (overrides as Record<string, unknown>)[k] = v;
    } else if (JSON.stringify(v) !== JSON.stringify(saved[k])) {
      const flag = k === 'data' ? (v === 'synthetic' ? '--synthetic' : 'no --synthetic') : `${FLAG[k]} ${show(v)}`;
      throw new UsageError(`--resume ${dir}: ${flag} differs from the run's saved ${k} ${show(saved[k])}: ` +
        `a resumed run keeps the config it was started with (start a new run to change it)`);
    }
  }
  return overrides;
}
