/**
 * The two sockets of a worker-to-worker link, shared by the ring (data
 * parallel) and the tower link (model parallel): a PULL bound on this
 * worker's endpoint, receiving from one peer, and a PUSH connected to the
 * peer this worker sends to.
 *
 * Trust:
 * - With keys (CURVE), the PULL admits only the sending peer's key (ZAP
 *   domain 'peer@<endpoint>'); anyone else is refused in the handshake and counted by
 *   the gate, and never delivers a message. A message that then fails to
 *   decode came from the peer itself: that is a fault, and fails the link.
 * - Without keys (a loopback run with "security": "none"), a message cannot
 *   be told from a stranger's: one that fails to decode is dropped and
 *   counted, and the run goes on (a message the peer really sent and that was
 *   lost that way ends in the receive's deadline). A well-formed message with
 *   non-finite values fails the link in either case: it is most likely the
 *   peer's diverged training, and summing it would spread NaN everywhere.
 * Liveness comes from the outgoing connection only (see watchOutgoing): a
 * port scan on the bound port is a non-event.
 */
import * as zmq from 'zeromq';
import { curveClient, curveServer, ZapGate, type KeyPair } from './curve.js';
import { ToCoordinator, ToPeer, ToWorker } from './protocol.js';
import { Refusals } from './refusals.js';
import { checkEndpoint } from './private-dir.js';
import { bindAddress, countRefusedHandshakes, receiveLoop, socketOptions, watchOutgoing, type Heartbeat } from './transport.js';

export interface PeerSocketOptions {
  /** this worker's endpoint (bound) */
  bind: string;
  /** the endpoint of the worker this one sends to */
  connect: string;
  /** names for messages: the peers sent to and received from */
  sendsTo: string;
  receivesFrom: string;
  heartbeat: Heartbeat;
  maxMessageBytes: number;
  /** CURVE: this worker's keys, the receive-from peer's public key and the send-to peer's; undefined: plain TCP */
  keys?: { own: KeyPair; from: string; to: string };
}

export interface PeerSocketEvents {
  /** a message arrived; throw (any error) to refuse it */
  deliver(frames: Buffer[]): void;
  /** the link is broken: the reason names the peer */
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
  /** zeromq.js allows one send in progress per socket: sends are chained */
  private sending: Promise<void> = Promise.resolve();

  private constructor(private readonly push: zmq.Push, private readonly pull: zmq.Pull, private readonly release: () => void) {}

  static async open(opts: PeerSocketOptions, on: PeerSocketEvents): Promise<PeerSockets> {
    // ipc: both ends in the run's private directory, checked before any socket exists
    checkEndpoint(opts.bind);
    checkEndpoint(opts.connect);
    const base = socketOptions(opts.heartbeat, opts.maxMessageBytes);
    // A domain per bound socket: each admits its own peer (one per process in a run; tests hold several).
    const domain = `peer@${opts.bind}`;
    const gate = opts.keys ? await ZapGate.admit(domain, new Set([opts.keys.from])) : undefined;
    const pull = new zmq.Pull({ ...base, ...(opts.keys ? curveServer(opts.keys.own, domain) : {}) });
    const push = new zmq.Push({ ...base, sendHighWaterMark: 0, ...(opts.keys ? curveClient(opts.keys.own, opts.keys.to) : {}) });
    try {
      await pull.bind(bindAddress(opts.bind));
    } catch (err) {
      push.close();
      pull.close();
      gate?.release(domain);
      throw new Error(`cannot listen on ${opts.bind}: ${(err as Error).message}`);
    }
    const sockets = new PeerSockets(push, pull, () => gate?.release(domain));
    countRefusedHandshakes(pull, (why) => sockets.drop(why));
    watchOutgoing(push, opts.sendsTo, (why) => on.fail(new Error(why)));
    push.connect(opts.connect);
    receiveLoop(pull, (frames) => {
      try {
        on.deliver(frames);
      } catch (err) {
        const why = `refused a message from ${opts.receivesFrom}: ${(err as Error).message}`;
        if (opts.keys) on.fail(new Error(why));
        else sockets.drop(dropKey((err as Error).message));
      }
    }, (err) => on.fail(new Error(`link from ${opts.receivesFrom}: ${err.message}`)));
    return sockets;
  }

  private drop(reason: string): void {
    // Counted by the reason's first words, numbers left out: 'protocol version N, expected N'.
    this.dropped.count(reason.replace(/\d+/g, 'N').slice(0, 80));
  }

  /**
   * Queues a message behind the sends before (not awaited: libzmq's I/O
   * thread sends while the caller computes). `frames` runs when its turn
   * comes; `handedOver` gets the main thread's part of the send (encoding and
   * handing the frames to libzmq), ms; a failed send goes to `onError`.
   */
  send(frames: () => Buffer[], handedOver: (t0: number, t1: number) => void, onError: (err: Error) => void): void {
    this.sending = this.sending.then(() => {
      const t0 = performance.now();
      const sent = this.push.send(frames());
      handedOver(t0, performance.now());
      return sent;
    }).catch(onError);
  }

  close(): void {
    if (this.pull.closed) return;
    this.pull.close();
    if (!this.push.closed) this.push.close();
    this.release();
  }
}
