import type { Model } from '../model/build.js';
import type { encodeToCoordinator, ToWorker } from './protocol.js';

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
