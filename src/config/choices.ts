/** The closed sets of names a config may hold; what they mean lives above (model/, backend.ts). */

export const ARCHS = ['d2l', 'original'] as const;
/** How a 28 px image maps onto the model's input (config/train.ts: resize). */
export const RESIZE_MAPPINGS = ['half-pixel', 'legacy'] as const;
export type ResizeMapping = (typeof RESIZE_MAPPINGS)[number];
export type Arch = (typeof ARCHS)[number];

export const BACKEND_CHOICES = ['auto', 'tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];

/** How tensors travel between workers (config/train.ts: wire; wire/bf16.ts). */
export const WIRE_TYPES = ['fp32', 'bf16'] as const;
export type WireType = (typeof WIRE_TYPES)[number];
