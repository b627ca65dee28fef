/**
 * The link's latency and bandwidth as the workers' sockets see them: a
 * zeromq PUSH/PULL pair over TCP loopback (the transport the peer links and
 * the ring use), measured in this process. `splitnet compare` feeds both to
 * its step-time prediction.
 */
import * as zmq from 'zeromq';
import { freePorts } from './free-ports.js';

/** Round trips timed for the latency (the median is kept): enough to ride out a scheduler hiccup. */
const ROUND_TRIPS = 200;
/** Bandwidth: this many messages of BIG_BYTES, about the size of the ring's pieces (4 MiB) */
const BIG_MESSAGES = 32;
const BIG_BYTES = 4 * 2 ** 20;

export interface LinkProbe {
  /** one-way latency of an 8-byte message, ms (half the median round trip) */
  latencyMs: number;
  /** bytes per second, 4 MiB messages back to back */
  bandwidth: number;
}

export async function probeLink(host = '127.0.0.1'): Promise<LinkProbe> {
  const [p1, p2] = await freePorts(2);
  const aOut = new zmq.Push({ linger: 0 });
  const bIn = new zmq.Pull({ linger: 0 });
  const bOut = new zmq.Push({ linger: 0 });
  const aIn = new zmq.Pull({ linger: 0 });
  try {
    await bIn.bind(`tcp://${host}:${p1}`);
    await aIn.bind(`tcp://${host}:${p2}`);
    aOut.connect(`tcp://${host}:${p1}`);
    bOut.connect(`tcp://${host}:${p2}`);
    // B echoes what it receives until it has echoed every round trip.
    const echo = (async () => {
      for (let i = 0; i < ROUND_TRIPS + 1; i++) {
        const [m] = await bIn.receive();
        await bOut.send(m!);
      }
    })();
    const small = Buffer.alloc(8);
    const rtts: number[] = [];
    for (let i = 0; i < ROUND_TRIPS + 1; i++) { // the first one connects: not timed
      const t0 = performance.now();
      await aOut.send(small);
      await aIn.receive();
      if (i > 0) rtts.push(performance.now() - t0);
    }
    await echo;
    rtts.sort((a, b) => a - b);
    const latencyMs = rtts[Math.floor(rtts.length / 2)]! / 2;

    const big = Buffer.alloc(BIG_BYTES, 1);
    const transfer = async (): Promise<number> => {
      const t0 = performance.now();
      const received = (async () => {
        for (let i = 0; i < BIG_MESSAGES; i++) await bIn.receive();
      })();
      for (let i = 0; i < BIG_MESSAGES; i++) await aOut.send(big);
      await received;
      return (performance.now() - t0) / 1000;
    };
    // The first pass maps fresh receive buffers (page faults cost ~3 ms/MiB on some VMs): timed is the second.
    await transfer();
    const seconds = await transfer();
    return { latencyMs, bandwidth: (BIG_MESSAGES * BIG_BYTES) / seconds };
  } finally {
    for (const s of [aOut, bIn, bOut, aIn]) s.close();
  }
}
