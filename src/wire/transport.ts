/**
 * Sockets and waiting. Liveness comes from libzmq, not from JS timers: a wasm
 * training step blocks the event loop for seconds, so JS-level heartbeats
 * would call a busy worker dead. ZMTP heartbeats run on libzmq's I/O thread
 * (a hung or partitioned peer times out), the kernel closes a dead process's
 * TCP connection (the peer sees 'disconnect' ~0.1 s later), and every wait
 * has a deadline.
 */
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import * as zmq from 'zeromq';
import { isLocal } from '../config/cluster.js';
import { checkEndpoint } from './private-dir.js';
import { firstNonFiniteBf16, type WireArray } from './bf16.js';

export interface Heartbeat {
  intervalMs: number;
  timeoutMs: number;
}

/**
 * Options every socket of a run gets: ZMTP heartbeats, no linger, and
 * ZMQ_MAXMSGSIZE, so libzmq drops the connection of a peer that announces an
 * oversized frame before assembling it (the decoder's own cap on a whole
 * message comes after).
 */
export function socketOptions(hb: Heartbeat, maxMessageBytes: number): {
  heartbeatInterval: number; heartbeatTimeout: number; heartbeatTimeToLive: number; linger: number; maxMessageSize: number;
} {
  return { heartbeatInterval: hb.intervalMs, heartbeatTimeout: hb.timeoutMs, heartbeatTimeToLive: hb.timeoutMs, linger: 0, maxMessageSize: maxMessageBytes };
}

/**
 * Calls `onLost` when an outgoing connection (one this socket connected) is
 * lost after its handshake: the peer died, or its heartbeats stopped (a
 * stopped process). Only outgoing connections are watched: anyone can open
 * and close a connection to a bound port (a port scan), so a bound socket's
 * disconnects say nothing about the peer. A refused handshake (the server
 * does not know our key) is reported too.
 */
export function watchOutgoing(socket: zmq.Socket, peer: string, onLost: (why: string) => void): void {
  let up = false;
  socket.events.on('handshake', () => { up = true; });
  socket.events.on('disconnect', () => {
    if (up) onLost(`${peer} disconnected (it exited, or sent no heartbeat)`);
    up = false;
  });
  socket.events.on('handshake:error:auth', (e) => onLost(`${peer} refused this process's key (${e.error.message})`));
}

/**
 * Counts, by reason, the connections a bound socket refused in the handshake
 * (not ZMTP, not CURVE, cut off before the handshake ended): a port scan or a
 * stranger, never a fault of the run. A key the ZAP gate refused is not
 * counted here: the gate counts it, with the key's verdict (counted here as
 * well, each refused key would be reported twice, under two reasons).
 */
export function countRefusedHandshakes(socket: zmq.Socket, count: (why: string) => void): void {
  socket.events.on('handshake:error:protocol', (e) => count(`handshake failed: ${e.error.message} (not ZMTP, or not CURVE)`));
  socket.events.on('handshake:error:other', (e) => count(`handshake failed: ${e.error.message}`));
}

/**
 * The address a socket on `host:port` is reached at. ipc needs every process
 * on one host, and `dir`: the run's private directory (private-dir.ts), where
 * the port only names the socket.
 */
export function endpoint(transport: 'tcp' | 'ipc', host: string, port: number, dir?: string): string {
  if (transport === 'ipc') {
    if (!isLocal(host)) throw new Error(`transport ipc needs every process on this host; ${host} is not local`);
    if (dir === undefined) throw new Error('transport ipc: expected the run\'s private directory for the sockets, got none');
    return checkEndpoint(`ipc://${join(dir, `${port}.ipc`)}`);
  }
  return `tcp://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/**
 * What a process binds for an endpoint it owns: a loopback name, or an
 * address one of this machine's interfaces has, exactly (a worker in a
 * network namespace, the coordinator on a shaped network's bridge: nothing
 * else reaches the port); any other name (a host name, an address behind
 * NAT) on all interfaces.
 */
export function bindAddress(ep: string): string {
  if (ep.startsWith('ipc://')) return checkEndpoint(ep);
  const m = /^tcp:\/\/(\[[^\]]+\]|[^:]+):(\d+)$/.exec(ep);
  if (m === null) throw new Error(`not a tcp endpoint: ${ep}`);
  const host = m[1]!.replace(/^\[|\]$/g, '');
  return isLocal(host) || ownAddress(host) ? ep : `tcp://0.0.0.0:${m[2]}`;
}

/** Whether `host` is an address of one of this process's network interfaces (its namespace's). */
function ownAddress(host: string): boolean {
  return Object.values(networkInterfaces()).some((list) => list?.some((a) => a.address === host));
}

/** A deadline passed; the text says what was awaited and for how long. */
export class TimeoutError extends Error {
  override readonly name = 'TimeoutError';
}

interface Waiter<T> { resolve: (v: T) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }

/** Messages arrive here from a receive loop; `next` waits for one with a deadline. */
export class Inbox<T> {
  private readonly queue: T[] = [];
  private readonly waiters: Waiter<T>[] = [];
  private failure: Error | undefined;

  push(item: T): void {
    const w = this.waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(item);
    } else {
      this.queue.push(item);
    }
  }

  /** The oldest waiting item, without waiting (undefined when none). */
  take(): T | undefined {
    return this.queue.shift();
  }

  /** Every pending and future `next` rejects with `err`. */
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
  }

  next(timeoutMs: number, what: string): Promise<T> {
    const item = this.queue.shift();
    if (item !== undefined) return Promise.resolve(item);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.findIndex((w) => w.timer === timer);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new TimeoutError(`${what}: nothing within ${(timeoutMs / 1000).toFixed(1)} s`));
      }, timeoutMs);
      timer.unref(); // a deadline alone does not keep a process alive: its sockets do
      this.waiters.push({ resolve, reject, timer });
    });
  }
}

/**
 * Runs `onFrames` for every message a socket receives until it closes.
 * EAGAIN is a spurious wake-up, not an error: over CURVE, zeromq.js (6.x on
 * libzmq 4.3.5) may find a socket readable while a large multi-frame message
 * is still being decrypted, and its receive then rejects with EAGAIN
 * (measured: once in 300 two-frame messages of 1 MiB; the next receive gets
 * every message, whole and in order).
 */
export function receiveLoop(socket: zmq.Readable & zmq.Socket, onFrames: (frames: Buffer[]) => void, onError: (err: Error) => void): void {
  void (async () => {
    while (!socket.closed) {
      let frames: Buffer[];
      try {
        frames = (await socket.receive()) as Buffer[];
      } catch (err) {
        if ((err as { code?: string }).code === 'EAGAIN') continue;
        if (!socket.closed) onError(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      onFrames(frames);
    }
  })();
}

/**
 * The index of the first value that is NaN or ±Infinity, or -1. Payloads
 * from the wire are checked before they are summed or used: one NaN would
 * spread through every weight. A plain loop (x - x is 0 for finite x only)
 * runs at memory speed, ~1 ms per 4 MiB piece.
 */
export function firstNonFinite(a: WireArray): number {
  if (a instanceof Uint16Array) return firstNonFiniteBf16(a);
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    if (x - x !== 0) return i;
  }
  return -1;
}
