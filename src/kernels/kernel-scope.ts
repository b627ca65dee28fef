import { getKernel, type KernelBackend, type NamedAttrMap, type TensorInfo } from '@tensorflow/tfjs-core';

/**
 * Runs a backend's registered kernels directly, below the engine: no tape, no
 * engine bookkeeping. This is how a kernel is composed of other kernels (tfjs's
 * own backends do the same). Every output made through `run` is freed by
 * `dispose()` except the one handed out with `keep`.
 */
export class KernelScope {
  private readonly made: TensorInfo[] = [];

  constructor(
    private readonly backend: KernelBackend,
    private readonly backendName: string,
  ) {}

  run(kernelName: string, inputs: Record<string, TensorInfo>, attrs: NamedAttrMap = {}): TensorInfo {
    const kernel = getKernel(kernelName, this.backendName);
    if (kernel === undefined) {
      throw new Error(`${kernelName}: no kernel registered for backend '${this.backendName}'`);
    }
    const out = kernel.kernelFunc({ inputs, backend: this.backend, attrs });
    if (Array.isArray(out)) {
      throw new Error(`${kernelName}: expected one output from a composed kernel, got ${out.length}`);
    }
    this.made.push(out);
    return out;
  }

  /** Takes ownership of an output made outside `run` (by a heap op). */
  adopt(t: TensorInfo): TensorInfo {
    this.made.push(t);
    return t;
  }

  /** Hands `t` to the caller: it is not freed by dispose(). */
  keep(t: TensorInfo): TensorInfo {
    const i = this.made.indexOf(t);
    if (i >= 0) this.made.splice(i, 1);
    return t;
  }

  dispose(): void {
    // Reshape shares its input's data and raises its reference count, so one
    // disposeData per output made is exactly balanced.
    for (const t of this.made) this.backend.disposeData(t.dataId);
    this.made.length = 0;
  }
}

/** [before, after] per axis; a negative entry crops that many rows instead of padding. */
export type PadOrCrop = Array<[number, number]>;

/** Pads with zeros where an entry is positive and slices where it is negative. */
export function padOrCrop(scope: KernelScope, x: TensorInfo, spec: PadOrCrop): TensorInfo {
  if (spec.length !== x.shape.length) {
    throw new Error(`padOrCrop: expected ${x.shape.length} [before, after] pairs, got ${spec.length}`);
  }
  let out = x;
  if (spec.some(([b, a]) => b < 0 || a < 0)) {
    const begin = spec.map(([b]) => Math.max(0, -b));
    const size = x.shape.map((d, i) => d - begin[i]! - Math.max(0, -spec[i]![1]));
    if (size.some((s) => s <= 0)) {
      throw new Error(`padOrCrop: cropping ${JSON.stringify(spec)} leaves nothing of shape [${x.shape}]`);
    }
    out = scope.run('Slice', { x: out }, { begin, size });
  }
  if (spec.some(([b, a]) => b > 0 || a > 0)) {
    const paddings = spec.map(([b, a]) => [Math.max(0, b), Math.max(0, a)]);
    out = scope.run('PadV2', { x: out }, { paddings, constantValue: 0 } as unknown as NamedAttrMap);
  }
  return out;
}
