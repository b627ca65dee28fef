/**
 * A model-parallel link to the other tower's worker, usable from inside a
 * synchronous autodiff pass: `send` posts a tensor to the link's thread,
 * which sends it; `receive` blocks until the peer's tensor for a given key
 * has arrived (see exchange-thread.ts). Every receive has a deadline.
 */
import { Worker } from 'node:worker_threads';
import { CTRL, type ExchangeThreadData } from './exchange-shared.js';
import { ProtocolError } from './protocol.js';
import { TimeoutError } from './transport.js';

export interface ExchangeOptions {
  bind: string;
  connect: string;
  peerRank: number;
  /** the largest tensor exchanged, bytes */
  capacityBytes: number;
  maxMessageBytes: number;
  heartbeat: { intervalMs: number; timeoutMs: number };
  waitMs: number;
}

export class PeerExchange {
  /** bytes sent to the peer since construction */
  bytesSent = 0;
  private readonly ctrl: Int32Array;
  private readonly payload: Uint8Array;
  private readonly key: Uint8Array;
  private readonly reason: Uint8Array;
  private taken = 0;

  private constructor(private readonly thread: Worker, shared: ExchangeThreadData, private readonly opts: ExchangeOptions) {
    this.ctrl = new Int32Array(shared.ctrl);
    this.payload = new Uint8Array(shared.payload);
    this.key = new Uint8Array(shared.key);
    this.reason = new Uint8Array(shared.reason);
  }

  static async open(opts: ExchangeOptions): Promise<PeerExchange> {
    const shared: ExchangeThreadData = {
      ctrl: new SharedArrayBuffer(8 * 4),
      payload: new SharedArrayBuffer(opts.capacityBytes),
      key: new SharedArrayBuffer(1024),
      reason: new SharedArrayBuffer(1024),
      bind: opts.bind, connect: opts.connect, peerRank: opts.peerRank, maxMessageBytes: opts.maxMessageBytes, heartbeat: opts.heartbeat,
    };
    const here = new URL(import.meta.url);
    const fromSource = here.pathname.endsWith('.ts');
    const file = new URL(fromSource ? './exchange-thread.ts' : './exchange-thread.js', here);
    // Run from TypeScript source (tests, benchmarks): the thread registers tsx itself.
    const thread = fromSource
      ? new Worker(`import('tsx/esm/api').then((t) => { t.register(); return import(${JSON.stringify(file.href)}); })`, { eval: true, workerData: shared })
      : new Worker(file, { workerData: shared });
    await new Promise<void>((resolve, reject) => {
      thread.once('message', (m: unknown) => (m === 'bound' ? resolve()
        : reject(new Error(typeof m === 'object' && m !== null && 'error' in m ? String((m as { error: unknown }).error) : `exchange thread said ${String(m)}`))));
      thread.once('error', reject);
      thread.once('exit', (code) => reject(new Error(`exchange thread exited with code ${code} before binding ${opts.bind}`)));
    });
    return new PeerExchange(thread, shared, opts);
  }

  /** Hands `data` to the peer under `key`: posted (copied) to the link's thread, which sends it. */
  send(key: string, data: Float32Array): void {
    this.thread.postMessage({ key, values: data });
    this.bytesSent += data.byteLength;
  }

  /** Blocks until the peer's next tensor arrives; it must carry `key` and `floats` values. */
  receive(key: string, floats: number): Float32Array {
    const deadline = Date.now() + this.opts.waitMs;
    let seq: number;
    for (;;) {
      if (Atomics.load(this.ctrl, CTRL.status) !== 0) {
        throw new Error(Buffer.from(this.reason.subarray(0, Atomics.load(this.ctrl, CTRL.reasonLength))).toString());
      }
      seq = Atomics.load(this.ctrl, CTRL.seq);
      if (seq !== this.taken) break;
      const left = deadline - Date.now();
      if (left <= 0) throw new TimeoutError(`'${key}' from worker ${this.opts.peerRank}: nothing within ${(this.opts.waitMs / 1000).toFixed(1)} s`);
      Atomics.wait(this.ctrl, CTRL.seq, seq, left);
    }
    const keyText = Buffer.from(this.key.subarray(0, Atomics.load(this.ctrl, CTRL.keyLength))).toString();
    const length = Atomics.load(this.ctrl, CTRL.length);
    const out = new Float32Array(length / 4);
    new Uint8Array(out.buffer).set(this.payload.subarray(0, length));
    this.taken = seq; // the hand-over just read, whatever came since
    Atomics.store(this.ctrl, CTRL.taken, this.taken);
    this.thread.postMessage('taken');
    if (keyText !== key) throw new ProtocolError(`expected '${key}' from worker ${this.opts.peerRank}, got '${keyText}'`);
    if (out.length !== floats) throw new ProtocolError(`'${key}' from worker ${this.opts.peerRank}: ${out.length} floats, expected ${floats}`);
    return out;
  }

  /** Closes the link; the thread ends once its socket is closed. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.thread.postMessage('close');
  }
  private closed = false;
}
