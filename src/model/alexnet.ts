import { UsageError } from '../errors.js';
import { ARCHS, type Arch, type InitScheme, type LayerSpec, type ModelSpec } from './spec.js';
import { inferShapes } from './shapes.js';
import type { TrainConfig } from '../config/train.js';

export interface AlexNetOptions {
  arch: Arch;
  /** channel and unit multiplier: 1 is the published net, 0.25 a CPU-sized one */
  width?: number;
  /** square input side in pixels (default 224 for d2l, 227 for original) */
  resolution?: number;
  channels?: number;
  classes?: number;
  /** weight initialization (default: the paper's N(0, 0.01) for original, Xavier for d2l) */
  init?: InitScheme;
  /** towers the original net's kernels are divided between (default 2, the paper's; d2l has 1) */
  towers?: number;
}

const scale = (n: number, width: number): number => Math.max(1, Math.round(n * width));

/**
 * d2l's streamlined AlexNet (Dive into Deep Learning, section 8.1): one tower,
 * no LRN, 1-channel Fashion-MNIST input upscaled to 224.
 */
function d2l(width: number, classes: number): LayerSpec[] {
  const w = (n: number) => scale(n, width);
  return [
    { kind: 'conv', name: 'conv1', units: w(96), kernel: 11, stride: 4, pad: 1, link: 'local', relu: true, biasInit: 0 },
    { kind: 'maxpool', name: 'pool1', size: 3, stride: 2 },
    { kind: 'conv', name: 'conv2', units: w(256), kernel: 5, stride: 1, pad: 2, link: 'local', relu: true, biasInit: 0 },
    { kind: 'maxpool', name: 'pool2', size: 3, stride: 2 },
    { kind: 'conv', name: 'conv3', units: w(384), kernel: 3, stride: 1, pad: 1, link: 'local', relu: true, biasInit: 0 },
    { kind: 'conv', name: 'conv4', units: w(384), kernel: 3, stride: 1, pad: 1, link: 'local', relu: true, biasInit: 0 },
    { kind: 'conv', name: 'conv5', units: w(256), kernel: 3, stride: 1, pad: 1, link: 'local', relu: true, biasInit: 0 },
    { kind: 'maxpool', name: 'pool5', size: 3, stride: 2 },
    { kind: 'flatten', name: 'flatten' },
    { kind: 'dense', name: 'fc6', units: w(4096), link: 'local', relu: true, biasInit: 0 },
    { kind: 'dropout', name: 'drop6', rate: 0.5 },
    { kind: 'dense', name: 'fc7', units: w(4096), link: 'local', relu: true, biasInit: 0 },
    { kind: 'dropout', name: 'drop7', rate: 0.5 },
    { kind: 'dense', name: 'fc8', units: classes, link: 'local', relu: false, biasInit: 0 },
  ];
}

/**
 * Krizhevsky, Sutskever, Hinton 2012, figure 2: two towers, one per GPU.
 * Per tower 48/128/192/192/128 kernels and 2048/2048 units; fc8 splits the
 * classes. conv2, conv4, conv5 see only their own tower; conv3 and fc6-fc8 see
 * all. LRN after conv1 and conv2 (before pooling, as in the paper's text).
 * With N towers the same totals (96/256/384/384/256, 4096/4096, the classes)
 * are divided N ways.
 */
function original(width: number, classes: number): LayerSpec[] {
  // The published totals are two towers' worth: w(48) per tower keeps N = 2 the paper's net at every width.
  const w = (n: number) => 2 * scale(n / 2, width);
  const lrn = (name: string): LayerSpec => ({ kind: 'lrn', name, radius: 2, k: 2, alpha: 1e-4, beta: 0.75 });
  return [
    { kind: 'conv', name: 'conv1', units: w(96), kernel: 11, stride: 4, pad: 0, link: 'local', relu: true, biasInit: 0 },
    lrn('lrn1'),
    { kind: 'maxpool', name: 'pool1', size: 3, stride: 2 },
    { kind: 'conv', name: 'conv2', units: w(256), kernel: 5, stride: 1, pad: 2, link: 'local', relu: true, biasInit: 1 },
    lrn('lrn2'),
    { kind: 'maxpool', name: 'pool2', size: 3, stride: 2 },
    { kind: 'conv', name: 'conv3', units: w(384), kernel: 3, stride: 1, pad: 1, link: 'cross', relu: true, biasInit: 0 },
    { kind: 'conv', name: 'conv4', units: w(384), kernel: 3, stride: 1, pad: 1, link: 'local', relu: true, biasInit: 1 },
    { kind: 'conv', name: 'conv5', units: w(256), kernel: 3, stride: 1, pad: 1, link: 'local', relu: true, biasInit: 1 },
    { kind: 'maxpool', name: 'pool5', size: 3, stride: 2 },
    { kind: 'flatten', name: 'flatten' },
    { kind: 'dense', name: 'fc6', units: w(4096), link: 'cross', relu: true, biasInit: 1 },
    { kind: 'dropout', name: 'drop6', rate: 0.5 },
    { kind: 'dense', name: 'fc7', units: w(4096), link: 'cross', relu: true, biasInit: 1 },
    { kind: 'dropout', name: 'drop7', rate: 0.5 },
    { kind: 'dense', name: 'fc8', units: classes, link: 'cross', relu: false, biasInit: 0 },
  ];
}

/** The most towers a net may be divided into (MAX_WORLD workers hold one each at most). */
export const MAX_TOWERS = 64;

/** Every weighted layer must give each tower at least one kernel or unit. */
function checkTowers(arch: Arch, towers: number, layers: LayerSpec[]): void {
  if (!Number.isInteger(towers) || towers < 1 || towers > MAX_TOWERS) throw new UsageError(`--towers: expected an integer in 1..${MAX_TOWERS}, got ${towers}`);
  if (arch === 'd2l' && towers !== 1) throw new UsageError(`--towers ${towers}: d2l's AlexNet is one tower; the towers divide --arch original`);
  for (const l of layers) {
    if ((l.kind === 'conv' || l.kind === 'dense') && l.units < towers) {
      throw new UsageError(`--towers ${towers}: ${l.name} has ${l.units} ${l.kind === 'conv' ? 'kernels' : 'units'}, fewer than one per tower (raise --width${l.name === 'fc8' ? ' or --classes' : ''})`);
    }
  }
}

export const DEFAULT_RESOLUTION: Record<Arch, number> = { d2l: 224, original: 227 };
const DEFAULT_CHANNELS: Record<Arch, number> = { d2l: 1, original: 3 };
const DEFAULT_CLASSES: Record<Arch, number> = { d2l: 10, original: 1000 };

function positiveInt(flag: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new UsageError(`${flag}: expected a positive integer, got ${v}`);
  return v;
}

/** Builds the description and checks that the layer stack fits the input. */
export function alexnet(opts: AlexNetOptions): ModelSpec {
  const { arch } = opts;
  if (!(ARCHS as readonly string[]).includes(arch)) {
    throw new UsageError(`unknown architecture '${arch}': expected one of ${ARCHS.join(', ')}`);
  }
  const width = opts.width ?? 1;
  if (!Number.isFinite(width) || width <= 0 || width > 16) {
    throw new UsageError(`--width: expected a channel multiplier in (0, 16], got ${width}`);
  }
  const resolution = positiveInt('--resolution', opts.resolution ?? DEFAULT_RESOLUTION[arch]);
  const channels = positiveInt('--channels', opts.channels ?? DEFAULT_CHANNELS[arch]);
  if (channels !== 1 && channels !== 3) throw new UsageError(`--channels: expected 1 or 3, got ${channels}`);
  const classes = positiveInt('--classes', opts.classes ?? DEFAULT_CLASSES[arch]);
  if (classes < 2) throw new UsageError(`--classes: expected at least 2, got ${classes}`);
  const layers = arch === 'original' ? original(width, classes) : d2l(width, classes);
  const towers = opts.towers ?? (arch === 'original' ? 2 : 1);
  checkTowers(arch, towers, layers);
  const spec: ModelSpec = {
    arch,
    input: [channels, resolution, resolution],
    classes,
    towers,
    width,
    init: opts.init ?? (arch === 'original' ? 'paper-normal' : 'xavier-uniform'),
    layers,
  };
  const shapes = inferShapes(spec);
  if (typeof shapes === 'string') {
    throw new UsageError(
      `--resolution ${resolution} is too small for ${arch}: ${shapes} (smallest accepted: ${smallestResolution(spec)})`,
    );
  }
  return spec;
}

/** The smallest square input side the layer stack accepts. */
export function smallestResolution(spec: ModelSpec): number {
  for (let r = 1; r <= 4096; r++) {
    const trial: ModelSpec = { ...spec, input: [spec.input[0], r, r] };
    if (typeof inferShapes(trial) !== 'string') return r;
  }
  return Infinity;
}

/** The network a run trains (Fashion-MNIST: 10 classes). */
export function specOf(cfg: TrainConfig): ModelSpec {
  return alexnet({
    arch: cfg.arch, width: cfg.width, resolution: cfg.resolution, channels: cfg.channels, classes: 10,
    ...(cfg.init !== undefined ? { init: cfg.init } : {}),
    ...(cfg.towers !== undefined ? { towers: cfg.towers } : {}),
  });
}
