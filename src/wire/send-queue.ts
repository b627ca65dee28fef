/**
 * One send in flight per socket. zeromq.js refuses a second `send` while one
 * is in progress on the same socket (EBUSY), so every process that sends
 * from more than one place chains its sends here: each waits for the one
 * before, and a failed send does not hold up the ones after it (its caller
 * hears of the failure through the promise `send` returns).
 */

/** What a queue sends on: any zeromq socket that can write. */
export interface Sender { send(frames: Buffer[]): Promise<void> }

export class SendQueue {
  private tail: Promise<void> = Promise.resolve();

  constructor(private readonly socket: Sender) {}

  /**
   * Queues a message behind the sends before. `frames` runs when its turn
   * comes (so encoding costs nothing until then, and a zero-copy frame is
   * made as late as possible); `handedOver` gets the main thread's part of
   * the send (encoding and handing the frames to libzmq), as
   * performance.now() times. The promise settles when libzmq has the frames.
   */
  send(frames: () => Buffer[], handedOver?: (t0: number, t1: number) => void): Promise<void> {
    const sent = this.tail.then(() => {
      const t0 = performance.now();
      const sending = this.socket.send(frames());
      handedOver?.(t0, performance.now());
      return sending;
    });
    this.tail = sent.catch(() => {});
    return sent;
  }
}
