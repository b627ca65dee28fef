/**
 * The sockets of a ring all-reduce: this worker binds a PULL on its own
 * endpoint (messages from rank - 1) and connects a PUSH to rank + 1's.
 * Every message is validated before the ring sees it; a refused one, a
 * disconnect or a send error fails every wait of the ring with the reason.
 */
import * as zmq from 'zeromq';
import { decodeToPeer, encodeToPeer, ProtocolError } from './protocol.js';
import { RingAllReduce } from './ring-allreduce.js';
import { bindAddress, receiveLoop, socketOptions, type Heartbeat } from './transport.js';

export interface RingLinkOptions {
  rank: number;
  world: number;
  /** every worker's peer endpoint, by rank */
  peers: string[];
  heartbeat: Heartbeat;
  maxMessageBytes: number;
  /** how long one ring receive waits, ms */
  waitMs: number;
}

/** A ring and the sockets under it. */
export interface RingLink { ring: RingAllReduce; close(): void }

export async function openRing(opts: RingLinkOptions): Promise<RingLink> {
  const { rank, world } = opts;
  const sockOpts = socketOptions(opts.heartbeat);
  const pull = new zmq.Pull(sockOpts);
  const push = new zmq.Push({ ...sockOpts, sendHighWaterMark: 0 });
  const close = () => {
    ring.fail(new Error('ring closed')); // ends any wait still pending
    if (!pull.closed) pull.close();
    if (!push.closed) push.close();
  };
  const next = (rank + 1) % world;
  const pred = (rank - 1 + world) % world;
  let sending: Promise<void> = Promise.resolve();
  const ring = new RingAllReduce(rank, world, (msg, chunk) => {
    // Queued, not awaited: libzmq's I/O thread sends while backward computes.
    sending = sending.then(() => {
      // The main thread's part of a send: encoding the header and handing the frames to libzmq.
      const t0 = performance.now();
      const sent = push.send(encodeToPeer(msg, [chunk]));
      ring.traffic.sent(`bucket ${msg.bucket}`, chunk.byteLength, t0, performance.now());
      return sent;
    })
      .catch((err: Error) => ring.fail(new Error(`sending to worker ${next}: ${err.message}`)));
  }, opts.waitMs);
  if (world === 1) return { ring, close };
  try {
    await pull.bind(bindAddress(opts.peers[rank]!));
  } catch (err) {
    close();
    throw new Error(`cannot listen on ${opts.peers[rank]}: ${(err as Error).message}`);
  }
  push.connect(opts.peers[next]!);
  receiveLoop(pull, (frames) => {
    try {
      const { msg, tensors: [chunk] } = decodeToPeer(frames, opts.maxMessageBytes);
      if (msg.kind !== 'ring') throw new ProtocolError(`'${msg.kind}' message in data-parallel mode`);
      ring.deliver(msg, chunk!);
    } catch (err) {
      ring.fail(new Error(`refused a message from worker ${pred}: ${(err as Error).message}`));
    }
  }, (err) => ring.fail(err));
  pull.events.on('disconnect', () => ring.fail(new Error(`worker ${pred} disconnected`)));
  return { ring, close };
}
