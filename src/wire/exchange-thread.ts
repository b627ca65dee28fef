/**
 * The receiving half of a model-parallel peer link, on its own thread.
 *
 * The split network's forward and backward run inside one synchronous tfjs
 * autodiff call, so the main thread cannot await a socket in the middle of
 * it. This thread owns the PULL socket, validates every message and hands it
 * over through shared memory; the main thread blocks on Atomics.wait until
 * it is there (Node allows that on the main thread). Messages are handed
 * over one at a time, in arrival order; the main thread says when it has
 * taken one (a postMessage), and the next goes into the buffer.
 *
 * The sending half lives here too: zeromq.js completes a send through the
 * event loop of the thread that made it, and the training thread's loop does
 * not run while it waits in Atomics.wait (sends made from it stalled after a
 * few hundred messages). The training thread posts each tensor here instead.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as zmq from 'zeromq';
import { decodeToPeer, encodeToPeer } from './protocol.js';
import { CTRL, MAX_QUEUED, type ExchangeThreadData } from './exchange-shared.js';
import { bindAddress, socketOptions } from './transport.js';

const data = workerData as ExchangeThreadData;
const ctrl = new Int32Array(data.ctrl);
const payload = new Uint8Array(data.payload);
const keyBytes = new Uint8Array(data.key);
const reasonBytes = new Uint8Array(data.reason);
const queue: Array<{ key: string; bytes: Uint8Array }> = [];
let failed = false;

/**
 * Marks the link failed. The reason has its own buffer and `seq` is left
 * alone, so a hand-over the main thread is reading is not disturbed; the main
 * thread checks the status before every wait and on every wake-up.
 */
function fail(reason: string): void {
  if (failed) return;
  failed = true;
  const b = Buffer.from(reason.slice(0, 1000));
  reasonBytes.set(b.subarray(0, reasonBytes.length));
  Atomics.store(ctrl, CTRL.reasonLength, Math.min(b.length, reasonBytes.length));
  Atomics.store(ctrl, CTRL.status, 1);
  Atomics.notify(ctrl, CTRL.seq);
}

/** Puts the next queued message into shared memory once the previous one was taken. */
function pump(): void {
  if (failed || queue.length === 0) return;
  if (Atomics.load(ctrl, CTRL.taken) !== Atomics.load(ctrl, CTRL.seq)) return;
  const m = queue.shift()!;
  if (m.bytes.length > payload.length) {
    fail(`a '${m.key}' message of ${m.bytes.length} bytes exceeds the exchange buffer of ${payload.length}`);
    return;
  }
  payload.set(m.bytes);
  const k = Buffer.from(m.key);
  keyBytes.set(k);
  Atomics.store(ctrl, CTRL.length, m.bytes.length);
  Atomics.store(ctrl, CTRL.keyLength, k.length);
  Atomics.add(ctrl, CTRL.seq, 1);
  Atomics.notify(ctrl, CTRL.seq);
}

const pull = new zmq.Pull(socketOptions(data.heartbeat));
const push = new zmq.Push({ ...socketOptions(data.heartbeat), sendHighWaterMark: 0 });
push.connect(data.connect);
// Sends go out one after another: zeromq.js allows one send in progress per socket.
let sending: Promise<void> = Promise.resolve();
parentPort!.on('message', (m: unknown) => {
  if (m === 'taken') pump();
  if (typeof m === 'object' && m !== null && 'key' in m) {
    const { key, values } = m as { key: string; values: Float32Array };
    sending = sending.then(() => push.send(encodeToPeer({ kind: 'xfer', key }, [values])))
      .catch((err: Error) => fail(`sending '${key}' to worker ${data.peerRank}: ${err.message}`));
  }
  if (m === 'close') {
    push.close();
    // Close the socket and let the thread's event loop end by itself:
    // terminating a thread that holds a zeromq socket aborts the process.
    failed = true;
    pull.close();
    parentPort!.close();
  }
});
pull.events.on('disconnect', () => fail(`worker ${data.peerRank} disconnected`));
try {
  await pull.bind(bindAddress(data.bind));
} catch (err) {
  push.close();
  pull.close();
  parentPort!.postMessage({ error: `cannot listen on ${data.bind}: ${(err as Error).message}` });
  parentPort!.close();
  throw err;
}
parentPort!.postMessage('bound');
try {
  for await (const frames of pull) {
    try {
      const { msg, tensors: [t] } = decodeToPeer(frames as Buffer[], data.maxMessageBytes);
      if (msg.kind !== 'xfer') throw new Error(`'${msg.kind}' message on a model-parallel link`);
      if (queue.length >= MAX_QUEUED) throw new Error(`more than ${MAX_QUEUED} messages ahead of the training thread`);
      queue.push({ key: msg.key, bytes: new Uint8Array(t!.buffer, t!.byteOffset, t!.byteLength) });
      pump();
    } catch (err) {
      fail(`refused a message from worker ${data.peerRank}: ${(err as Error).message}`);
    }
  }
} catch (err) {
  if (!pull.closed) fail(`link to worker ${data.peerRank}: ${(err as Error).message}`);
}
