import { appendFileSync } from 'node:fs';

export type MetricsRecord =
  | {
    type: 'step'; epoch: number; step: number; globalStep: number; loss: number; lr: number; imagesPerSec: number;
    /** the training step itself (forward, backward, update) */
    stepMs: number;
    /** the whole iteration: batch, step, bookkeeping (the previous iteration's checkpoint and yield excluded) */
    loopMs: number;
    time: string;
  }
  | { type: 'epoch'; epoch: number; trainLoss: number; testAccuracy: number; testLoss: number; testSamples: number; seconds: number; time: string }
  | { type: 'resume'; globalStep: number; time: string };

/** One JSON object per line, appended (a resumed run continues the same file). */
export class MetricsLog {
  constructor(readonly path: string) {}

  write(record: MetricsRecord): void {
    appendFileSync(this.path, JSON.stringify(record) + '\n');
  }
}
