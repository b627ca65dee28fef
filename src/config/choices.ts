/** The closed sets of names a config may hold; what they mean lives above (model/, backend.ts). */

export const ARCHS = ['d2l', 'original'] as const;
export type Arch = (typeof ARCHS)[number];

export const BACKEND_CHOICES = ['auto', 'tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];
