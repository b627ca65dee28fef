import { isWeighted, type LayerSpec, type ModelSpec } from './spec.js';

/** One layer's output in one tower: [C, H, W] for maps, [F] after flatten. */
export interface LayerShape {
  layer: LayerSpec;
  /** per-tower output shape */
  outputShape: number[];
  /** per-tower input width the layer's weights see: Cin for conv, in-features for dense */
  fanIn: number;
  /** weights + biases in one tower */
  params: number;
}

const convOut = (size: number, k: number, s: number, p: number): number => Math.floor((size + 2 * p - k) / s) + 1;

/**
 * Per-tower output shapes and parameter counts, or a string saying which layer
 * the input is too small for.
 */
export function inferShapes(spec: ModelSpec): LayerShape[] | string {
  const out: LayerShape[] = [];
  const [c0, h0, w0] = spec.input;
  // Every tower sees the whole input image, so conv1 reads all c0 channels.
  let shape: number[] = [c0, h0, w0];
  let first = true;
  for (const layer of spec.layers) {
    const seesAll = first || (isWeighted(layer) && layer.link === 'cross');
    const towersIn = seesAll && !first ? spec.towers : 1;
    let fanIn = 0;
    let params = 0;
    switch (layer.kind) {
      case 'conv': {
        const [c, h, w] = shape as [number, number, number];
        if (shape.length !== 3) return `${layer.name} needs a C×H×W input, got [${shape}]`;
        fanIn = c * towersIn;
        const oh = convOut(h, layer.kernel, layer.stride, layer.pad);
        const ow = convOut(w, layer.kernel, layer.stride, layer.pad);
        if (oh < 1 || ow < 1) return `${layer.name} (${layer.kernel}×${layer.kernel}, stride ${layer.stride}, pad ${layer.pad}) gets ${h}×${w}`;
        shape = [layer.perTower, oh, ow];
        params = layer.kernel * layer.kernel * fanIn * layer.perTower + layer.perTower;
        first = false;
        break;
      }
      case 'maxpool': {
        const [c, h, w] = shape as [number, number, number];
        const oh = convOut(h, layer.size, layer.stride, 0);
        const ow = convOut(w, layer.size, layer.stride, 0);
        if (oh < 1 || ow < 1) return `${layer.name} (${layer.size}×${layer.size}, stride ${layer.stride}) gets ${h}×${w}`;
        shape = [c, oh, ow];
        break;
      }
      case 'lrn':
      case 'dropout':
        break;
      case 'flatten':
        shape = [shape.reduce((a, b) => a * b, 1)];
        break;
      case 'dense': {
        if (shape.length !== 1) return `${layer.name} needs a flat input, got [${shape}]: add a flatten layer`;
        fanIn = shape[0]! * towersIn;
        shape = [layer.perTower];
        params = fanIn * layer.perTower + layer.perTower;
        first = false;
        break;
      }
      default: {
        const never: never = layer;
        return `unknown layer kind in ${JSON.stringify(never)}`;
      }
    }
    out.push({ layer, outputShape: shape, fanIn, params });
  }
  return out;
}

/** inferShapes for a spec already validated by alexnet(). */
export function shapesOf(spec: ModelSpec): LayerShape[] {
  const shapes = inferShapes(spec);
  if (typeof shapes === 'string') throw new Error(`model ${spec.arch}: ${shapes}`);
  return shapes;
}
