import cliProgress from 'cli-progress';

/** What one worker's last step took, for its progress line. */
export interface WorkerProgress { computeMs: number; waitMs: number; bytesSent: number }

/**
 * The progress lines of a long run: step, loss, images/s, ETA; and with
 * workers, one line each with its last step's compute, wait and bytes sent
 * (a worker that computes while the other waits shows it here first). Live
 * bars on a terminal; on a pipe or in CI plain lines every 10 s instead.
 */
export class Progress {
  private readonly bars: cliProgress.MultiBar;
  private run: cliProgress.SingleBar | undefined;
  private readonly workerBars: cliProgress.SingleBar[] = [];

  constructor(private readonly total: number, private readonly label: string, private readonly workers = 0) {
    this.bars = new cliProgress.MultiBar({
      barsize: 24,
      hideCursor: true,
      noTTYOutput: true,
      notTTYSchedule: 10_000,
      etaBuffer: 50,
      stream: process.stdout,
      autopadding: true,
    }, cliProgress.Presets.shades_classic);
  }

  update(done: number, loss: number, imagesPerSec: number, perWorker: WorkerProgress[] = []): void {
    const payload = { loss: loss.toFixed(4), rate: imagesPerSec.toFixed(1) };
    if (this.run === undefined) {
      this.run = this.bars.create(this.total, done, payload, {
        format: `${this.label} {bar} {value}/{total} steps | loss {loss} | {rate} img/s | ETA {eta_formatted}`,
      });
      for (let r = 0; r < this.workers; r++) {
        this.workerBars.push(this.bars.create(this.total, done, { compute: '-', wait: '-', sent: '-' }, {
          format: `  worker ${r} {bar} compute {compute} ms | wait {wait} ms | sent {sent} MiB/step`,
        }));
      }
    } else {
      this.run.update(done, payload);
    }
    perWorker.forEach((w, r) => this.workerBars[r]?.update(done, {
      compute: w.computeMs.toFixed(0), wait: w.waitMs.toFixed(0), sent: (w.bytesSent / 2 ** 20).toFixed(2),
    }));
  }

  stop(): void {
    if (this.run !== undefined) this.bars.stop();
  }
}
