import { isWeighted, towerUnits, type LayerSpec, type ModelSpec } from './spec.js';

/** One tower's part of a layer. */
export interface TowerShape {
  /** the tower's output: [C, H, W] for maps, [F] after flatten */
  output: number[];
  /** the input width its weights see: Cin for conv, in-features for dense (0 for layers without weights) */
  fanIn: number;
  /** weights + biases */
  params: number;
}

/** One layer's output over all towers. */
export interface LayerShape {
  layer: LayerSpec;
  /** the whole layer's output, every tower's concatenated on the channel (or feature) axis: [C, H, W] or [F] */
  outputShape: number[];
  /** weights + biases of all towers */
  params: number;
  /** each tower's part, in tower order (towers may differ by one kernel when the division is uneven) */
  towers: TowerShape[];
}

const convOut = (size: number, k: number, s: number, p: number): number => Math.floor((size + 2 * p - k) / s) + 1;
const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

/**
 * Output shapes and parameter counts, per tower and whole, or a string saying
 * which layer the input is too small for.
 */
export function inferShapes(spec: ModelSpec): LayerShape[] | string {
  const out: LayerShape[] = [];
  const [c0, h0, w0] = spec.input;
  const T = spec.towers;
  // Per tower: channels (maps) or features (flat); every tower sees the whole image, so conv1 reads all c0 channels.
  let widths: number[] = Array.from({ length: T }, () => spec.features ?? c0);
  let spatial: number[] | undefined = spec.features === undefined ? [h0, w0] : undefined;
  let first = true;
  for (const layer of spec.layers) {
    const seesAll = first || (isWeighted(layer) && layer.link === 'cross');
    // conv1 reads the image (c0 channels); a cross layer every tower's output; a local one its own.
    const fanIns = widths.map((w) => (seesAll && !first ? sum(widths) : w));
    let towers: TowerShape[];
    switch (layer.kind) {
      case 'conv': {
        if (spatial === undefined) return `${layer.name} needs a C×H×W input, got a flat one`;
        const [h, w] = spatial as [number, number];
        const oh = convOut(h, layer.kernel, layer.stride, layer.pad);
        const ow = convOut(w, layer.kernel, layer.stride, layer.pad);
        if (oh < 1 || ow < 1) return `${layer.name} (${layer.kernel}×${layer.kernel}, stride ${layer.stride}, pad ${layer.pad}) gets ${h}×${w}`;
        spatial = [oh, ow];
        towers = towerUnits(spec, layer).map((u, t) => ({ output: [u, oh, ow], fanIn: fanIns[t]!, params: layer.kernel * layer.kernel * fanIns[t]! * u + u }));
        first = false;
        break;
      }
      case 'maxpool': {
        if (spatial === undefined) return `${layer.name} needs a C×H×W input, got a flat one`;
        const [h, w] = spatial as [number, number];
        const oh = convOut(h, layer.size, layer.stride, 0);
        const ow = convOut(w, layer.size, layer.stride, 0);
        if (oh < 1 || ow < 1) return `${layer.name} (${layer.size}×${layer.size}, stride ${layer.stride}) gets ${h}×${w}`;
        spatial = [oh, ow];
        towers = widths.map((c) => ({ output: [c, oh, ow], fanIn: 0, params: 0 }));
        break;
      }
      case 'lrn':
      case 'dropout':
        towers = widths.map((c) => ({ output: spatial ? [c, ...spatial] : [c], fanIn: 0, params: 0 }));
        break;
      case 'flatten': {
        const area = spatial ? spatial[0]! * spatial[1]! : 1;
        spatial = undefined;
        towers = widths.map((c) => ({ output: [c * area], fanIn: 0, params: 0 }));
        break;
      }
      case 'dense': {
        if (spatial !== undefined) return `${layer.name} needs a flat input, got [${widths[0]}, ${spatial}]: add a flatten layer`;
        towers = towerUnits(spec, layer).map((u, t) => ({ output: [u], fanIn: fanIns[t]!, params: fanIns[t]! * u + u }));
        first = false;
        break;
      }
      default: {
        const never: never = layer;
        return `unknown layer kind in ${JSON.stringify(never)}`;
      }
    }
    widths = towers.map((t) => t.output[0]!);
    const whole = [sum(widths), ...towers[0]!.output.slice(1)];
    out.push({ layer, outputShape: whole, params: sum(towers.map((t) => t.params)), towers });
  }
  return out;
}

/** inferShapes for a spec already validated by alexnet(). */
export function shapesOf(spec: ModelSpec): LayerShape[] {
  const shapes = inferShapes(spec);
  if (typeof shapes === 'string') throw new Error(`model ${spec.arch}: ${shapes}`);
  return shapes;
}
