/**
 * A model-parallel link to the other tower's worker: a PUSH socket to its
 * endpoint and a PULL socket bound on ours, both on this thread (see
 * peer-sockets.ts for who is trusted and how a lost peer is noticed). `send`
 * queues a tensor under a key; `receive` awaits the peer's tensor for a key.
 * Messages may arrive in any order (micro-batches run interleaved), so each
 * key has its own mailbox. Every receive has a deadline; a refused message
 * from the peer, a non-finite activation or gradient, a lost peer or a send
 * error fails every pending and future receive with the reason.
 */
import type { KeyPair } from './curve.js';
import { PeerSockets } from './peer-sockets.js';
import type { Refusals } from './refusals.js';
import { decodeToPeer, encodeToPeer, ProtocolError } from './protocol.js';
import { firstNonFinite, Inbox, type Heartbeat } from './transport.js';
import { linkOfKey, Traffic } from './traffic.js';
import { fromBf16, valueAt, wireTypeOf, type WireArray } from './bf16.js';
import type { WireType } from '../config/choices.js';

export interface PeerLinkOptions {
  bind: string;
  connect: string;
  peerRank: number;
  maxMessageBytes: number;
  heartbeat: Heartbeat;
  /** how long a receive waits, ms */
  waitMs: number;
  /** CURVE: this worker's key pair and the peer's public key; undefined: plain TCP */
  keys?: { own: KeyPair; peer: string };
  /** told once when the link breaks from outside (a lost peer, a refused or poisoned message), even between steps */
  onBroken?: (err: Error) => void;
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
  /** arrived tensors, as they travelled (bf16 ones are decoded when received) */
  private readonly boxes = new Map<string, Inbox<WireArray>>();
  /** messages arrived and not yet received */
  private unclaimed = 0;
  private readonly seen = new Set<string>();
  private failure: Error | undefined;
  private sockets!: PeerSockets;

  private constructor(private readonly opts: PeerLinkOptions) {}

  static async open(opts: PeerLinkOptions): Promise<PeerLink> {
    const link = new PeerLink(opts);
    const peer = `worker ${opts.peerRank}`;
    link.sockets = await PeerSockets.open({
      bind: opts.bind, connect: opts.connect, sendsTo: peer, receivesFrom: peer, heartbeat: opts.heartbeat, maxMessageBytes: opts.maxMessageBytes,
      ...(opts.keys ? { keys: { own: opts.keys.own, from: opts.keys.peer, to: opts.keys.peer } } : {}),
    }, { deliver: (frames) => link.deliver(frames), fail: (err) => link.breaks(err) });
    return link;
  }

  /** Messages refused from unknown senders (plain TCP only), by reason. */
  get dropped(): Refusals {
    return this.sockets.dropped;
  }

  /** Throws ProtocolError for a message that is not a fresh, expected tensor. */
  private deliver(frames: Buffer[]): void {
    const { msg, tensors: [t] } = decodeToPeer(frames, this.opts.maxMessageBytes);
    if (msg.kind !== 'xfer') throw new ProtocolError(`'${msg.kind}' message on a model-parallel link`);
    if (this.seen.has(msg.key)) throw new ProtocolError(`'${msg.key}' arrived twice`);
    // Bounded: a sender that runs ahead (or a flood) cannot grow the mailboxes without end.
    if (this.unclaimed >= MAX_UNCLAIMED) throw new ProtocolError(`more than ${MAX_UNCLAIMED} unclaimed messages`);
    const bad = firstNonFinite(t!);
    if (bad >= 0) {
      this.breaks(new Error(`worker ${this.opts.peerRank} sent a non-finite '${msg.key}' (${valueAt(t!, bad)} at float ${bad}): its training diverged; lower --lr`));
      return;
    }
    this.seen.add(msg.key);
    this.unclaimed++;
    this.box(msg.key).push(t!);
  }

  private box(key: string): Inbox<WireArray> {
    let b = this.boxes.get(key);
    if (b === undefined) {
      b = new Inbox<WireArray>();
      if (this.failure) b.fail(this.failure);
      this.boxes.set(key, b);
    }
    return b;
  }

  private broken = false;
  /** A failure from outside: every wait fails, and the worker is told even if nothing waits. */
  private breaks(err: Error): void {
    this.fail(err);
    if (!this.broken) this.opts.onBroken?.(err);
    this.broken = true;
  }

  /** Fails every pending and future receive with `err` (a peer or a local step failed). */
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const b of this.boxes.values()) b.fail(err);
  }

  /**
   * Hands `data` (float32, or bf16 bit patterns) to the peer under `key`;
   * `data` must not change afterwards (the frame is zero-copy).
   */
  send(key: string, data: WireArray): void {
    if (this.failure) throw this.failure;
    this.bytesSent += data.byteLength;
    this.sockets.send(() => encodeToPeer({ kind: 'xfer', key }, [data]), (t0, t1) => this.traffic.sent(linkOfKey(key), data.byteLength, t0, t1),
      (err) => this.breaks(new Error(`sending '${key}' to worker ${this.opts.peerRank}: ${err.message}`)));
  }

  /** The peer's tensor for `key`, which must hold `floats` values sent as `wire`; decoded to float32. */
  async receive(key: string, floats: number, wire: WireType = 'fp32'): Promise<Float32Array> {
    try {
      const t0 = performance.now();
      const data = await this.box(key).next(this.opts.waitMs, `'${key}' from worker ${this.opts.peerRank}`);
      this.traffic.waited(`${linkOfKey(key)} ${key.split('/')[3] ?? ''}`.trim(), t0, performance.now());
      this.unclaimed--;
      this.traffic.received(data.byteLength);
      if (data.length !== floats) throw new ProtocolError(`'${key}' from worker ${this.opts.peerRank}: ${data.length} floats, expected ${floats}`);
      if (wireTypeOf(data) !== wire) throw new ProtocolError(`'${key}' from worker ${this.opts.peerRank}: sent as ${wireTypeOf(data)}, this run sends ${wire}`);
      return data instanceof Uint16Array ? fromBf16(data) : data;
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
    this.sockets.close();
  }
}
