/**
 * A worker's one communicator: every exchange with other workers goes
 * through it, over one set of sockets (peer-sockets.ts: a PULL bound on this
 * worker's endpoint, a PUSH to each worker in `talksTo`; who is trusted and
 * how a lost peer is noticed are written there). It carries two kinds of
 * message at once, told apart by the header and the sender's rank:
 *   xfer  a tensor handed to one worker under a key (the towers' exchanges,
 *         a state gather). Messages may arrive in any order (micro-batches
 *         run interleaved), so each (sender, key) has its own mailbox.
 *   ring  a piece of the ring all-reduce among a group of workers (`ring()`):
 *         sent to the group's next member, taken only from its previous one.
 * Every message is checked before anything sees it: its sender must be a
 * worker this one exchanges with, a ring piece must come from the ring's
 * predecessor, and its values must be finite (a non-finite one is most
 * likely the sender's diverged training: it fails the communicator, naming
 * the sender and the key or bucket). Every receive has a deadline; a refused
 * or poisoned message, a lost peer or a send error fails every pending and
 * future receive, and the ring, with the reason.
 */
import type { WireType } from '../config/choices.js';
import { fromBf16, valueAt, wireTypeOf, type WireArray } from './bf16.js';
import type { KeyPair } from './curve.js';
import { describeRanks, PeerSockets } from './peer-sockets.js';
import { decodeToPeer, encodeToPeer, ProtocolError, type ToPeer } from './protocol.js';
import { Refusals } from './refusals.js';
import { RingAllReduce } from './ring-allreduce.js';
import { linkOfKey, Traffic } from './traffic.js';
import { firstNonFinite, Inbox, type Heartbeat } from './transport.js';

export interface CommunicatorOptions {
  rank: number;
  world: number;
  /** every worker's peer endpoint, by rank; this worker binds peers[rank] */
  peers: string[];
  /** the ranks this worker exchanges with (sends to or receives from), this rank excluded; a PUSH is connected to each */
  talksTo: number[];
  heartbeat: Heartbeat;
  maxMessageBytes: number;
  /** how long one receive waits, ms */
  waitMs: number;
  /** CURVE: this worker's key pair and every worker's public key by rank; undefined: plain */
  keys?: { own: KeyPair; workers: string[] };
  /** told once when the communicator breaks from outside (a lost peer, a refused or poisoned message), even between steps */
  onBroken?: (err: Error) => void;
  /** keyed messages that may wait unclaimed (default MAX_UNCLAIMED): the layout's most in flight (layouts.ts unclaimedBound) */
  maxUnclaimed?: number;
}

/**
 * Keyed messages that may wait unclaimed before the peers are called
 * misbehaving, unless the layout says more: a layout's own bound
 * (layouts.ts unclaimedBound) counts every exchange a step may have in
 * flight from every peer, and is never below this.
 */
export const MAX_UNCLAIMED = 1024;

type Xfer = Extract<ToPeer, { kind: 'xfer' }>;
type Ring = Extract<ToPeer, { kind: 'ring' }>;

/** The ring of a communicator: its all-reduce and the neighbours it sends to and takes from. */
interface RingPlace { allReduce: RingAllReduce; next: number; pred: number }

export class Communicator {
  /** bytes handed to peers since the communicator opened (keyed sends and ring pieces) */
  bytesSent = 0;
  /** keyed sends' bytes by link and send time, per step (splitnet compare); the ring keeps its own */
  readonly traffic = new Traffic();
  private readonly talksTo: ReadonlySet<number>;
  /** arrived tensors by sender and key, as they travelled (bf16 ones are decoded when received) */
  private readonly boxes = new Map<string, Inbox<WireArray>>();
  /** keyed messages arrived and not yet received */
  private unclaimed = 0;
  private readonly seen = new Set<string>();
  private failure: Error | undefined;
  private broken = false;
  private ringPlace: RingPlace | undefined;
  /** undefined when this worker exchanges with no one (a world of 1) */
  private sockets: PeerSockets | undefined;

  private constructor(private readonly opts: CommunicatorOptions) {
    this.talksTo = checkPlace(opts);
  }

  static async open(opts: CommunicatorOptions): Promise<Communicator> {
    const comm = new Communicator(opts);
    if (comm.talksTo.size === 0) return comm;
    const { keys } = opts;
    comm.sockets = await PeerSockets.open({
      bind: opts.peers[opts.rank]!,
      peers: [...comm.talksTo].map((r) => ({ rank: r, endpoint: opts.peers[r]!, ...(keys ? { publicKey: keys.workers[r]! } : {}) })),
      heartbeat: opts.heartbeat, maxMessageBytes: opts.maxMessageBytes,
      ...(keys ? { own: keys.own } : {}),
    }, { deliver: (frames) => comm.deliver(frames), fail: (err) => comm.breaks(err) });
    return comm;
  }

  /** Messages refused from unknown senders (plain TCP only), by reason. */
  get dropped(): Refusals {
    return this.sockets?.dropped ?? new Refusals();
  }

  /**
   * The ring all-reduce over `group`: ascending ranks, this one among them;
   * it sends to the next member and receives from the previous one (both in
   * `talksTo`). At most one per communicator; a group of one sends nothing.
   */
  ring(group: number[]): RingAllReduce {
    if (this.ringPlace) throw new Error(`a second ring on worker ${this.opts.rank}'s communicator: it carries one`);
    const at = group.indexOf(this.opts.rank);
    if (at < 0) throw new Error(`a ring over ${describeRanks(group)}: expected a group with this worker (${this.opts.rank}) in it`);
    if (group.some((r, i) => !Number.isInteger(r) || r < 0 || r >= this.opts.world || (i > 0 && r <= group[i - 1]!))) {
      throw new Error(`a ring over [${group.join(', ')}]: expected distinct ascending ranks below ${this.opts.world}`);
    }
    const n = group.length;
    const next = group[(at + 1) % n]!;
    const pred = group[(at - 1 + n) % n]!;
    for (const r of n > 1 ? [next, pred] : []) {
      if (!this.talksTo.has(r)) throw new Error(`a ring over [${group.join(', ')}] needs worker ${r}, and worker ${this.opts.rank} exchanges with ${describeRanks([...this.talksTo])}`);
    }
    const allReduce = new RingAllReduce(at, n, (msg, chunk) => {
      this.bytesSent += chunk.byteLength;
      this.sockets!.send(next, () => encodeToPeer({ ...msg, from: this.opts.rank }, [chunk]),
        (t0, t1) => allReduce.traffic.sent(`bucket ${msg.bucket}`, chunk.byteLength, t0, t1),
        (err) => this.breaks(new Error(`sending ring bucket ${msg.bucket} to worker ${next}: ${err.message}`)));
    }, this.opts.waitMs, group);
    if (this.failure) allReduce.fail(this.failure);
    this.ringPlace = { allReduce, next, pred };
    return allReduce;
  }

  /** Throws ProtocolError for a message that is not a fresh, expected one from a worker this one exchanges with. */
  private deliver(frames: Buffer[]): void {
    const { msg, tensors: [t] } = decodeToPeer(frames, this.opts.maxMessageBytes);
    if (!this.talksTo.has(msg.from)) {
      throw new ProtocolError(`a '${msg.kind}' message from worker ${msg.from}: expected one from ${describeRanks([...this.talksTo])}`);
    }
    if (msg.kind === 'ring') this.deliverRing(msg, t!);
    else this.deliverXfer(msg, t!);
  }

  private deliverRing(msg: Ring, chunk: WireArray): void {
    const place = this.ringPlace;
    if (place === undefined) throw new ProtocolError(`a 'ring' message from worker ${msg.from}: worker ${this.opts.rank} is in no ring`);
    if (msg.from !== place.pred) throw new ProtocolError(`a 'ring' message from worker ${msg.from}: expected ring pieces from worker ${place.pred} only`);
    const bad = firstNonFinite(chunk);
    if (bad >= 0) {
      // Well formed, so it is the peer's (or the peer is forged, which CURVE rules out): a fault, not noise.
      this.breaks(new Error(`worker ${msg.from} sent a non-finite gradient (${valueAt(chunk, bad)} at float ${msg.offset + bad} of chunk ${msg.chunk}, bucket ${msg.bucket}): its training diverged; lower --lr`));
      return;
    }
    try {
      place.allReduce.deliver(msg, chunk);
    } catch (err) {
      throw new ProtocolError(`a 'ring' message from worker ${msg.from}: ${(err as Error).message}`);
    }
  }

  private deliverXfer(msg: Xfer, t: WireArray): void {
    const id = mailbox(msg.from, msg.key);
    if (this.seen.has(id)) throw new ProtocolError(`'${msg.key}' from worker ${msg.from} arrived twice`);
    // Bounded: a sender that runs ahead (or a flood) cannot grow the mailboxes without end.
    const most = this.opts.maxUnclaimed ?? MAX_UNCLAIMED;
    if (this.unclaimed >= most) throw new ProtocolError(`more than ${most} unclaimed messages`);
    const bad = firstNonFinite(t);
    if (bad >= 0) {
      this.breaks(new Error(`worker ${msg.from} sent a non-finite '${msg.key}' (${valueAt(t, bad)} at float ${bad}): its training diverged; lower --lr`));
      return;
    }
    this.seen.add(id);
    this.unclaimed++;
    this.box(id).push(t);
  }

  private box(id: string): Inbox<WireArray> {
    let b = this.boxes.get(id);
    if (b === undefined) {
      b = new Inbox<WireArray>();
      if (this.failure) b.fail(this.failure);
      this.boxes.set(id, b);
    }
    return b;
  }

  /** A failure from outside: every wait fails, and the worker is told once, even if nothing waits. */
  private breaks(err: Error): void {
    this.fail(err);
    if (!this.broken) this.opts.onBroken?.(err);
    this.broken = true;
  }

  /** Fails every pending and future receive, and the ring, with `err` (a peer or a local step failed). */
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const b of this.boxes.values()) b.fail(err);
    this.ringPlace?.allReduce.fail(err);
  }

  /**
   * Hands `data` (float32, or bf16 bit patterns) to worker `to` under `key`;
   * `data` must not change afterwards (the frame is zero-copy).
   */
  send(to: number, key: string, data: WireArray): void {
    if (this.failure) throw this.failure;
    if (!this.talksTo.has(to)) throw new Error(`'${key}' to worker ${to}: worker ${this.opts.rank} exchanges with ${describeRanks([...this.talksTo])}`);
    this.bytesSent += data.byteLength;
    this.sockets!.send(to, () => encodeToPeer({ kind: 'xfer', from: this.opts.rank, key }, [data]),
      (t0, t1) => this.traffic.sent(linkOfKey(key), data.byteLength, t0, t1),
      (err) => this.breaks(new Error(`sending '${key}' to worker ${to}: ${err.message}`)));
  }

  /** Worker `from`'s tensor for `key`, which must hold `floats` values sent as `wire`; decoded to float32. */
  async receive(from: number, key: string, floats: number, wire: WireType = 'fp32'): Promise<Float32Array> {
    if (!this.talksTo.has(from)) throw new Error(`'${key}' from worker ${from}: worker ${this.opts.rank} exchanges with ${describeRanks([...this.talksTo])}`);
    const id = mailbox(from, key);
    try {
      const t0 = performance.now();
      const data = await this.box(id).next(this.opts.waitMs, `'${key}' from worker ${from}`);
      this.traffic.waited(`${linkOfKey(key)} ${key.split('/')[3] ?? ''}`.trim(), t0, performance.now());
      this.unclaimed--;
      this.traffic.received(data.byteLength);
      if (data.length !== floats) throw new ProtocolError(`'${key}' from worker ${from}: ${data.length} floats, expected ${floats}`);
      if (wireTypeOf(data) !== wire) throw new ProtocolError(`'${key}' from worker ${from}: sent as ${wireTypeOf(data)}, this run sends ${wire}`);
      return data instanceof Uint16Array ? fromBf16(data) : data;
    } finally {
      this.boxes.delete(id);
    }
  }

  /**
   * Forgets the keys seen before global step `step` (called as each step
   * begins, so memory stays bounded): training keys of earlier steps, and
   * evaluation's and state gathers', which run between steps. A faster peer
   * may already have sent this step's first messages; their keys stay, so a
   * duplicate of one is still refused.
   */
  forgetSeen(step: number): void {
    for (const id of this.seen) {
      const key = id.slice(id.indexOf(' ') + 1); // mailbox(): '<from> <key>'
      const at = /^\d+/.exec(key);
      if (at === null || Number(at[0]) < step) this.seen.delete(id);
    }
  }

  close(): void {
    this.fail(new Error('communicator closed')); // ends any wait still pending
    this.sockets?.close();
  }
}

/** A mailbox's name: keys never hold a space. */
const mailbox = (from: number, key: string): string => `${from} ${key}`;

/** The set of ranks this worker exchanges with, or an error naming what is wrong with its place. */
function checkPlace(opts: CommunicatorOptions): Set<number> {
  const { rank, world, peers, talksTo, keys } = opts;
  if (!Number.isInteger(rank) || rank < 0 || rank >= world) throw new Error(`rank ${rank} in a world of ${world}: expected 0 to ${world - 1}`);
  if (peers.length !== world) throw new Error(`${peers.length} peer endpoints for a world of ${world}: expected one per worker`);
  for (const r of talksTo) {
    if (!Number.isInteger(r) || r < 0 || r >= world || r === rank) {
      throw new Error(`worker ${rank} talks to ${r}: expected other ranks of a world of ${world}`);
    }
  }
  if (keys && keys.workers.length < world) throw new Error(`public keys for ${keys.workers.length} workers: expected ${world}`);
  return new Set([...talksTo].sort((a, b) => a - b));
}
