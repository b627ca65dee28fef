import type { Model } from '../model/build.js';
import type { Sgd } from '../model/sgd.js';
import type { encodeToCoordinator, ToWorker } from '../wire/protocol.js';

type Reply<K extends string> = Extract<Parameters<typeof encodeToCoordinator>[0], { kind: K }>;

/** What a worker does for the coordinator's commands, in either mode. */
export interface Session {
  model: Model;
  backendName: string;
  step(msg: Extract<ToWorker, { kind: 'step' }>): Promise<Reply<'stepDone'>>;
  evaluateShard(epoch: number): Reply<'evalDone'>;
  state(): { meta: Array<{ name: string; shape: number[] }>; data: Float32Array[] };
  close(): void;
}

/** Parameters, then momentum buffers as `momentum.<name>`, for a 'state' reply (our layout). */
export function modelState(model: Model, opt: Sgd): { meta: Array<{ name: string; shape: number[] }>; data: Float32Array[] } {
  const meta: Array<{ name: string; shape: number[] }> = [];
  const data: Float32Array[] = [];
  for (const [name, v] of model.params) { meta.push({ name, shape: v.shape }); data.push(v.dataSync() as Float32Array); }
  for (const [name, v] of opt.velocity) { meta.push({ name: `momentum.${name}`, shape: v.shape }); data.push(v.dataSync() as Float32Array); }
  return { meta, data };
}
