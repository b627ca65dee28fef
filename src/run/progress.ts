import cliProgress from 'cli-progress';

/**
 * The progress line of a long run: step, loss, images/s, ETA. A live bar on a
 * terminal; on a pipe or in CI a plain line every 10 s instead.
 */
export class Progress {
  private readonly bar: cliProgress.SingleBar;
  private started = false;

  constructor(private readonly total: number, label: string) {
    this.bar = new cliProgress.SingleBar({
      format: `${label} {bar} {value}/{total} steps | loss {loss} | {rate} img/s | ETA {eta_formatted}`,
      barsize: 24,
      hideCursor: true,
      noTTYOutput: true,
      notTTYSchedule: 10_000,
      etaBuffer: 50,
      stream: process.stdout,
    }, cliProgress.Presets.shades_classic);
  }

  update(done: number, loss: number, imagesPerSec: number): void {
    const payload = { loss: loss.toFixed(4), rate: imagesPerSec.toFixed(1) };
    if (!this.started) {
      this.bar.start(this.total, done, payload);
      this.started = true;
    } else {
      this.bar.update(done, payload);
    }
  }

  stop(): void {
    if (this.started) this.bar.stop();
  }
}
