/**
 * The sockets between one worker and the workers it exchanges with (its
 * communicator's, communicator.ts): a PULL bound on this worker's endpoint,
 * receiving from all of them, and one PUSH connected to each.
 *
 * Trust:
 * - With keys (CURVE), the PULL admits only those peers' keys (ZAP domain
 *   'peer@<endpoint>'); anyone else is refused in the handshake and counted by
 *   the gate, and never delivers a message. A message that then fails to
 *   decode came from a peer itself: that is a fault, and fails the sockets.
 * - Without keys (a loopback run with "security": "none"), a message cannot
 *   be told from a stranger's: one that fails to decode is dropped and
 *   counted, and the run goes on (a message a peer really sent and that was
 *   lost that way ends in the receive's deadline). A well-formed message with
 *   non-finite values fails the communicator in either case: it is most
 *   likely the peer's diverged training, and summing it would spread NaN
 *   everywhere.
 * Liveness comes from the outgoing connections only (see watchOutgoing): a
 * port scan on the bound port is a non-event.
 */
import * as zmq from 'zeromq';
import { curveClient, curveServer, ZapGate, type KeyPair } from './curve.js';
import { ToCoordinator, ToPeer, ToWorker } from './protocol.js';
import { Refusals } from './refusals.js';
import { SendQueue } from './send-queue.js';
import { checkEndpoint } from './private-dir.js';
import { bindAddress, countRefusedHandshakes, receiveLoop, socketOptions, watchOutgoing, type Heartbeat } from './transport.js';

/** A worker this one exchanges with. */
export interface Peer {
  rank: number;
  endpoint: string;
  /** its CURVE public key (with `own` only) */
  publicKey?: string;
}

export interface PeerSocketOptions {
  /** this worker's endpoint (bound) */
  bind: string;
  /** the workers exchanged with: a PUSH connects to each; with keys, the PULL admits each one's key */
  peers: Peer[];
  heartbeat: Heartbeat;
  maxMessageBytes: number;
  /** CURVE: this worker's key pair (every peer then has its publicKey); undefined: plain TCP */
  own?: KeyPair;
}

export interface PeerSocketEvents {
  /** a message arrived; throw (any error) to refuse it */
  deliver(frames: Buffer[]): void;
  /** the sockets are broken: the reason names the peer when it is known */
  fail(err: Error): void;
}

/** The kinds of every message of the protocol: the only quoted words a dropped message's reason keeps. */
const KINDS = new Set([ToWorker, ToCoordinator, ToPeer].flatMap((u) => u.options.map((o) => o.shape.kind.value as string)));

/**
 * A dropped message's reason as its counting key. The decoder's reasons
 * quote what the sender wrote (its 'kind', a key, a version, the value msgpack
 * read before it choked): that is left out, so a flood of garbage neither
 * fills the reasons with one-offs nor writes its own text (control
 * characters included) into the run's log line.
 */
export function dropKey(reason: string): string {
  return reason
    .replace(/^(header frame is not msgpack) \(([A-Za-z ,.]*)[^]*\)$/, (_, head: string, why: string) => `${head} (${why.trim().replace(/,$/, '')})`)
    .replace(/^protocol version ([^]*), expected/, (_, v: string) => `protocol version ${/^-?\d+(\.\d+)?$/.test(v) ? v : '(not a number)'}, expected`)
    .replace(/'([^']*)'|"([^"]*)"/g, (q, a?: string, b?: string) => (KINDS.has(a ?? b ?? '') ? q : '…'))
    .replace(/[^\x20-\x7e…]/g, '?');
}

export class PeerSockets {
  /** connections refused in the handshake, and messages dropped (without keys only), by reason */
  readonly dropped = new Refusals();

  private constructor(
    private readonly pull: zmq.Pull,
    /** by rank: each peer's PUSH and the queue of sends on it */
    private readonly pushes: Map<number, { push: zmq.Push; queue: SendQueue }>,
    private readonly release: () => void,
  ) {}

  static async open(opts: PeerSocketOptions, on: PeerSocketEvents): Promise<PeerSockets> {
    // ipc: every end in the run's private directory, checked before any socket exists
    checkEndpoint(opts.bind);
    for (const p of opts.peers) checkEndpoint(p.endpoint);
    const { own } = opts;
    const keyOf = (p: Peer): string => {
      if (p.publicKey === undefined) throw new Error(`CURVE: expected worker ${p.rank}'s public key, got none`);
      return p.publicKey;
    };
    const base = socketOptions(opts.heartbeat, opts.maxMessageBytes);
    // A domain per bound socket: each admits its own peers (one per process in a run; tests hold several).
    const domain = `peer@${opts.bind}`;
    const gate = own ? await ZapGate.admit(domain, new Set(opts.peers.map(keyOf))) : undefined;
    const pull = new zmq.Pull({ ...base, ...(own ? curveServer(own, domain) : {}) });
    const pushes = new Map(opts.peers.map((p) => {
      const push = new zmq.Push({ ...base, sendHighWaterMark: 0, ...(own ? curveClient(own, keyOf(p)) : {}) });
      return [p.rank, { push, queue: new SendQueue(push) }] as const;
    }));
    const sockets = new PeerSockets(pull, pushes, () => gate?.release(domain));
    try {
      await pull.bind(bindAddress(opts.bind));
    } catch (err) {
      sockets.close();
      throw new Error(`cannot listen on ${opts.bind}: ${(err as Error).message}`);
    }
    countRefusedHandshakes(pull, (why) => sockets.drop(why));
    for (const p of opts.peers) {
      const { push } = pushes.get(p.rank)!;
      watchOutgoing(push, `worker ${p.rank}`, (why) => on.fail(new Error(why)));
      push.connect(p.endpoint);
    }
    receiveLoop(pull, (frames) => {
      try {
        on.deliver(frames);
      } catch (err) {
        if (own) on.fail(new Error(`refused a message from a peer: ${(err as Error).message}`));
        else sockets.drop(dropKey((err as Error).message));
      }
    }, (err) => on.fail(new Error(`receiving from peers on ${opts.bind}: ${err.message}`)));
    return sockets;
  }

  private drop(reason: string): void {
    // Counted by the reason's first words, numbers left out: 'protocol version N, expected N'.
    this.dropped.count(reason.replace(/\d+/g, 'N').slice(0, 80));
  }

  /**
   * Queues a message to worker `to` behind the sends to it before (not
   * awaited: libzmq's I/O thread sends while the caller computes); see
   * SendQueue.send for `frames` and `handedOver`. A failed send goes to `onError`.
   */
  send(to: number, frames: () => Buffer[], handedOver: (t0: number, t1: number) => void, onError: (err: Error) => void): void {
    const peer = this.pushes.get(to);
    if (peer === undefined) throw new Error(`a send to worker ${to}: this worker sends only to ${describeRanks([...this.pushes.keys()])}`);
    peer.queue.send(frames, handedOver).catch(onError);
  }

  close(): void {
    if (this.pull.closed) return;
    this.pull.close();
    for (const { push } of this.pushes.values()) if (!push.closed) push.close();
    this.release();
  }
}

/** 'workers 0, 2' / 'worker 1' / 'no worker': for messages. */
export function describeRanks(ranks: number[]): string {
  if (ranks.length === 0) return 'no worker';
  return `worker${ranks.length > 1 ? 's' : ''} ${ranks.join(', ')}`;
}
