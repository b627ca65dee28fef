/**
 * A model-parallel link to the other tower's worker: a PUSH socket to its
 * endpoint and a PULL socket bound on ours, both on this thread. `send`
 * queues a tensor under a key; `receive` awaits the peer's tensor for a key.
 * Messages may arrive in any order (micro-batches run interleaved), so each
 * key has its own mailbox. Every receive has a deadline; any refused
 * message, a disconnect or a send error fails every pending and future
 * receive with the reason.
 */
import * as zmq from 'zeromq';
import { decodeToPeer, encodeToPeer, ProtocolError } from './protocol.js';
import { bindAddress, Inbox, receiveLoop, socketOptions, type Heartbeat } from './transport.js';
import { linkOfKey, Traffic } from './traffic.js';

export interface PeerLinkOptions {
  bind: string;
  connect: string;
  peerRank: number;
  maxMessageBytes: number;
  heartbeat: Heartbeat;
  /** how long a receive waits, ms */
  waitMs: number;
}

/**
 * Messages that may wait unclaimed before the peer is called misbehaving: a
 * step with m micro-batches has at most 5 forward and 4 backward exchanges
 * in flight per micro-batch (conv3, fc6, fc7, fc8, logits).
 */
export const MAX_UNCLAIMED = 1024;

export class PeerLink {
  /** bytes handed to the peer since the link opened */
  bytesSent = 0;
  /** bytes by link and send time, per step (splitnet compare) */
  readonly traffic = new Traffic();
  private readonly boxes = new Map<string, Inbox<Float32Array>>();
  /** messages arrived and not yet received */
  private unclaimed = 0;
  private readonly seen = new Set<string>();
  private failure: Error | undefined;
  /** zeromq.js allows one send in progress per socket: sends are chained */
  private sending: Promise<void> = Promise.resolve();

  private constructor(private readonly push: zmq.Push, private readonly pull: zmq.Pull, private readonly opts: PeerLinkOptions) {}

  static async open(opts: PeerLinkOptions): Promise<PeerLink> {
    const push = new zmq.Push({ ...socketOptions(opts.heartbeat), sendHighWaterMark: 0 });
    const pull = new zmq.Pull(socketOptions(opts.heartbeat));
    try {
      await pull.bind(bindAddress(opts.bind));
    } catch (err) {
      push.close();
      pull.close();
      throw new Error(`cannot listen on ${opts.bind}: ${(err as Error).message}`);
    }
    push.connect(opts.connect);
    const link = new PeerLink(push, pull, opts);
    receiveLoop(pull, (frames) => link.deliver(frames), (err) => link.fail(new Error(`link to worker ${opts.peerRank}: ${err.message}`)));
    pull.events.on('disconnect', () => link.fail(new Error(`worker ${opts.peerRank} disconnected`)));
    return link;
  }

  private deliver(frames: Buffer[]): void {
    try {
      const { msg, tensors: [t] } = decodeToPeer(frames, this.opts.maxMessageBytes);
      if (msg.kind !== 'xfer') throw new ProtocolError(`'${msg.kind}' message on a model-parallel link`);
      if (this.seen.has(msg.key)) throw new ProtocolError(`'${msg.key}' arrived twice`);
      if (this.unclaimed >= MAX_UNCLAIMED) throw new ProtocolError(`more than ${MAX_UNCLAIMED} unclaimed messages`);
      this.seen.add(msg.key);
      this.unclaimed++;
      this.box(msg.key).push(t!);
    } catch (err) {
      this.fail(new Error(`refused a message from worker ${this.opts.peerRank}: ${(err as Error).message}`));
    }
  }

  private box(key: string): Inbox<Float32Array> {
    let b = this.boxes.get(key);
    if (b === undefined) {
      b = new Inbox<Float32Array>();
      if (this.failure) b.fail(this.failure);
      this.boxes.set(key, b);
    }
    return b;
  }

  /** Fails every pending and future receive with `err` (a peer or a local step failed). */
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const b of this.boxes.values()) b.fail(err);
  }

  /** Hands `data` to the peer under `key`; `data` must not change afterwards (the frame is zero-copy). */
  send(key: string, data: Float32Array): void {
    if (this.failure) throw this.failure;
    this.bytesSent += data.byteLength;
    this.sending = this.sending.then(() => {
      const t0 = performance.now();
      const sent = this.push.send(encodeToPeer({ kind: 'xfer', key }, [data]));
      this.traffic.sent(linkOfKey(key), data.byteLength, t0, performance.now());
      return sent;
    })
      .catch((err: Error) => this.fail(new Error(`sending '${key}' to worker ${this.opts.peerRank}: ${err.message}`)));
  }

  /** The peer's tensor for `key`, which must hold `floats` values. */
  async receive(key: string, floats: number): Promise<Float32Array> {
    try {
      const t0 = performance.now();
      const data = await this.box(key).next(this.opts.waitMs, `'${key}' from worker ${this.opts.peerRank}`);
      this.traffic.waited(`${linkOfKey(key)} ${key.split('/')[3] ?? ''}`.trim(), t0, performance.now());
      this.unclaimed--;
      this.traffic.received(data.byteLength);
      if (data.length !== floats) throw new ProtocolError(`'${key}' from worker ${this.opts.peerRank}: ${data.length} floats, expected ${floats}`);
      return data;
    } finally {
      this.boxes.delete(key);
    }
  }

  /** Forgets the keys seen so far (called as each step begins: their keys carry the step, so memory stays bounded). */
  forgetSeen(): void {
    this.seen.clear();
  }

  close(): void {
    this.fail(new Error('link closed'));
    if (!this.push.closed) this.push.close();
    if (!this.pull.closed) this.pull.close();
  }
}
