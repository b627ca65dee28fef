/**
 * Sockets and waiting. Liveness comes from libzmq, not from JS timers: a wasm
 * training step blocks the event loop for seconds, so JS-level heartbeats
 * would call a busy worker dead. ZMTP heartbeats run on libzmq's I/O thread
 * (a hung or partitioned peer times out), the kernel closes a dead process's
 * TCP connection (the peer sees 'disconnect' ~0.1 s later), and every wait
 * has a deadline.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as zmq from 'zeromq';
import { isLocal } from '../config/cluster.js';

export interface Heartbeat {
  intervalMs: number;
  timeoutMs: number;
}

export function socketOptions(hb: Heartbeat): { heartbeatInterval: number; heartbeatTimeout: number; heartbeatTimeToLive: number; linger: number } {
  return { heartbeatInterval: hb.intervalMs, heartbeatTimeout: hb.timeoutMs, heartbeatTimeToLive: hb.timeoutMs, linger: 0 };
}

/** The address a socket on `host:port` is reached at. ipc needs every process on one host. */
export function endpoint(transport: 'tcp' | 'ipc', host: string, port: number): string {
  if (transport === 'ipc') {
    if (!isLocal(host)) throw new Error(`transport ipc needs every process on this host; ${host} is not local`);
    return `ipc://${join(tmpdir(), `splitnet-${port}.ipc`)}`;
  }
  return `tcp://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** What a process binds for an endpoint it owns: a remote host's worker listens on all interfaces. */
export function bindAddress(ep: string): string {
  if (ep.startsWith('ipc://')) return ep;
  const m = /^tcp:\/\/(\[[^\]]+\]|[^:]+):(\d+)$/.exec(ep);
  if (m === null) throw new Error(`not a tcp endpoint: ${ep}`);
  const host = m[1]!.replace(/^\[|\]$/g, '');
  return isLocal(host) ? ep : `tcp://0.0.0.0:${m[2]}`;
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

/** Runs `onFrames` for every message a socket receives until it closes. */
export function receiveLoop(socket: zmq.Readable & zmq.Socket, onFrames: (frames: Buffer[]) => void, onError: (err: Error) => void): void {
  void (async () => {
    try {
      for await (const frames of socket) onFrames(frames as Buffer[]);
    } catch (err) {
      if (!socket.closed) onError(err instanceof Error ? err : new Error(String(err)));
    }
  })();
}
