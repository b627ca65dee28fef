/**
 * The sockets of a ring all-reduce: this worker binds a PULL on its own
 * endpoint (messages from rank - 1) and connects a PUSH to rank + 1's (see
 * peer-sockets.ts for who is trusted and how a lost peer is noticed). Every
 * message is validated before the ring sees it, its values included: a
 * gradient that is not finite fails the ring with the sender and the bucket.
 */
import type { KeyPair } from './curve.js';
import { PeerSockets } from './peer-sockets.js';
import { Refusals } from './refusals.js';
import { decodeToPeer, encodeToPeer, ProtocolError } from './protocol.js';
import { RingAllReduce } from './ring-allreduce.js';
import { valueAt } from './bf16.js';
import { firstNonFinite, type Heartbeat } from './transport.js';

export interface RingLinkOptions {
  rank: number;
  world: number;
  /** every worker's peer endpoint, by rank */
  peers: string[];
  heartbeat: Heartbeat;
  maxMessageBytes: number;
  /** how long one ring receive waits, ms */
  waitMs: number;
  /** CURVE: this worker's key pair and every worker's public key by rank; undefined: plain TCP */
  keys?: { own: KeyPair; workers: string[] };
  /** told once when the ring breaks from outside (a lost peer, a refused or poisoned message), even between steps */
  onBroken?: (err: Error) => void;
}

/** A ring and the sockets under it. `dropped`: messages refused from unknown senders (plain TCP), by reason. */
export interface RingLink { ring: RingAllReduce; dropped: Refusals; close(): void }

export async function openRing(opts: RingLinkOptions): Promise<RingLink> {
  const { rank, world } = opts;
  const next = (rank + 1) % world;
  const pred = (rank - 1 + world) % world;
  let sockets: PeerSockets | undefined;
  let broken = false;
  const breaks = (err: Error) => {
    ring.fail(err);
    if (!broken) opts.onBroken?.(err);
    broken = true;
  };
  const ring = new RingAllReduce(rank, world, (msg, chunk) => {
    sockets!.send(() => encodeToPeer(msg, [chunk]), (t0, t1) => ring.traffic.sent(`bucket ${msg.bucket}`, chunk.byteLength, t0, t1),
      (err) => breaks(new Error(`sending to worker ${next}: ${err.message}`)));
  }, opts.waitMs);
  const close = () => {
    ring.fail(new Error('ring closed')); // ends any wait still pending
    sockets?.close();
  };
  if (world === 1) return { ring, dropped: new Refusals(), close };
  sockets = await PeerSockets.open({
    bind: opts.peers[rank]!, connect: opts.peers[next]!, sendsTo: `worker ${next}`, receivesFrom: `worker ${pred}`,
    heartbeat: opts.heartbeat, maxMessageBytes: opts.maxMessageBytes,
    ...(opts.keys ? { keys: { own: opts.keys.own, from: opts.keys.workers[pred]!, to: opts.keys.workers[next]! } } : {}),
  }, {
    deliver: (frames) => {
      const { msg, tensors: [chunk] } = decodeToPeer(frames, opts.maxMessageBytes);
      if (msg.kind !== 'ring') throw new ProtocolError(`'${msg.kind}' message in data-parallel mode`);
      const bad = firstNonFinite(chunk!);
      if (bad >= 0) {
        // Well formed, so it is the peer's (or the peer is forged, which CURVE rules out): a fault, not noise.
        breaks(new Error(`worker ${pred} sent a non-finite gradient (${valueAt(chunk!, bad)} at float ${msg.offset + bad} of chunk ${msg.chunk}, bucket ${msg.bucket}): its training diverged; lower --lr`));
        return;
      }
      ring.deliver(msg, chunk!);
    },
    fail: breaks,
  });
  return { ring, dropped: sockets.dropped, close };
}
