/**
 * What one process put on and took off the wire during a step, by link
 * ('conv3', 'fc6', …) or bucket ('bucket 0', …), and the time its main thread
 * spent handing frames to the sockets. `splitnet compare` reports these per
 * worker; `take()` returns a step's figures and starts the next step at zero.
 */

/** A stretch of main-thread time spent sending, for the timeline. */
export interface SendSpan { name: string; startMs: number; durMs: number }

export interface TrafficReport {
  sentBytes: number;
  receivedBytes: number;
  /** main-thread milliseconds inside socket sends (encoding, copying into frames) */
  sendMs: number;
  sentBy: Record<string, number>;
  sends: SendSpan[];
  /** awaits on a peer's message that took longer than MIN_SPAN_MS */
  waits: SendSpan[];
}

/** Sends shorter than this are summed but not drawn: a timeline of 1 µs slivers helps no one. */
const MIN_SPAN_MS = 0.05;

export class Traffic {
  private sentBytes = 0;
  private receivedBytes = 0;
  private sendMs = 0;
  private sentBy = new Map<string, number>();
  private sends: SendSpan[] = [];
  private waits: SendSpan[] = [];

  /** Records a send of `bytes` under `label` whose synchronous part ran from `t0` to `t1` (performance.now()). */
  sent(label: string, bytes: number, t0: number, t1: number): void {
    this.sentBytes += bytes;
    this.sentBy.set(label, (this.sentBy.get(label) ?? 0) + bytes);
    this.sendMs += t1 - t0;
    if (t1 - t0 >= MIN_SPAN_MS) this.sends.push({ name: `send ${label}`, startMs: t0, durMs: t1 - t0 });
  }

  received(bytes: number): void {
    this.receivedBytes += bytes;
  }

  /** Records an await on a peer's message under `label` from `t0` to `t1`. */
  waited(label: string, t0: number, t1: number): void {
    if (t1 - t0 >= MIN_SPAN_MS) this.waits.push({ name: `wait ${label}`, startMs: t0, durMs: t1 - t0 });
  }

  take(): TrafficReport {
    const r: TrafficReport = {
      sentBytes: this.sentBytes, receivedBytes: this.receivedBytes, sendMs: this.sendMs,
      sentBy: Object.fromEntries(this.sentBy), sends: this.sends, waits: this.waits,
    };
    this.sentBytes = 0;
    this.receivedBytes = 0;
    this.sendMs = 0;
    this.sentBy = new Map();
    this.sends = [];
    this.waits = [];
    return r;
  }
}

/** The link a peer-exchange key names: '<step>/<micro>/<link>/<fwd|bwd>' or 'eval<epoch>/<batch>/<link>/fwd'. */
export function linkOfKey(key: string): string {
  return key.split('/')[2] ?? key;
}
