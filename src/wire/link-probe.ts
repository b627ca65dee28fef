/**
 * The link's latency and bandwidth as the workers' sockets see them: a
 * zeromq PUSH/PULL pair over TCP loopback (the transport the peer links and
 * the ring use), measured in this process. `splitnet compare` feeds both to
 * its step-time prediction.
 */
import * as zmq from 'zeromq';
import { curveClient, curveServer, generateRunKeys, ZapGate } from './curve.js';
import { freePorts } from './free-ports.js';

/** Round trips timed for the latency (the median is kept): enough to ride out a scheduler hiccup. */
const ROUND_TRIPS = 200;
/** Bandwidth: round trips of one BIG_BYTES message (the ring's piece size, 4 MiB); the median is kept */
const BIG_ROUND_TRIPS = 9;
const BIG_BYTES = 4 * 2 ** 20;
/** Loopback answers in well under a second; a socket silent this long means the probe is broken, not slow. */
const RECEIVE_TIMEOUT_MS = 30_000;

export interface LinkProbe {
  /** one-way latency of an 8-byte message, ms (half the median round trip) */
  latencyMs: number;
  /** bytes per second of a lone 4 MiB message (as a ring round sends it), latency excluded */
  bandwidth: number;
}

/**
 * `secure`: both directions over CURVE, as the run's links are by default
 * (encryption roughly halves a loopback link's bandwidth on the 2-core VMs
 * measured, so a plain probe would flatter a secured run).
 */
export async function probeLink(host = '127.0.0.1', secure = true): Promise<LinkProbe> {
  const [p1, p2] = await freePorts(2);
  const [a, b] = secure ? generateRunKeys(2).workers : [];
  const domain = `probe@${p1}`;
  const gate = secure ? await ZapGate.admit(domain, new Set([a!.publicKey, b!.publicKey])) : undefined;
  const aOut = new zmq.Push({ linger: 0, sendTimeout: RECEIVE_TIMEOUT_MS, ...(secure ? curveClient(a!, b!.publicKey) : {}) });
  const bIn = new zmq.Pull({ linger: 0, receiveTimeout: RECEIVE_TIMEOUT_MS, ...(secure ? curveServer(b!, domain) : {}) });
  const bOut = new zmq.Push({ linger: 0, sendTimeout: RECEIVE_TIMEOUT_MS, ...(secure ? curveClient(b!, a!.publicKey) : {}) });
  const aIn = new zmq.Pull({ linger: 0, receiveTimeout: RECEIVE_TIMEOUT_MS, ...(secure ? curveServer(a!, domain) : {}) });
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
    const pings = (async () => {
      for (let i = 0; i < ROUND_TRIPS + 1; i++) { // the first one connects: not timed
        const t0 = performance.now();
        await aOut.send(small);
        await aIn.receive();
        if (i > 0) rtts.push(performance.now() - t0);
      }
    })();
    await Promise.all([pings, echo]); // either side's failure ends the probe, neither is left unhandled
    rtts.sort((a, b) => a - b);
    const latencyMs = rtts[Math.floor(rtts.length / 2)]! / 2;

    // Bandwidth as a ring round sees it: one large message at a time, each
    // into freshly allocated receive memory (on some VMs first-touching new
    // pages costs ~3 ms/MiB, far more than the copy), not a warmed stream.
    const oneWay: number[] = [];
    const bounce = (async () => {
      for (let i = 0; i < BIG_ROUND_TRIPS; i++) {
        const [m] = await bIn.receive();
        await bOut.send(m!);
      }
    })();
    const sends = (async () => {
      for (let i = 0; i < BIG_ROUND_TRIPS; i++) {
        const t0 = performance.now();
        await aOut.send(Buffer.alloc(BIG_BYTES, 1));
        await aIn.receive();
        oneWay.push((performance.now() - t0) / 2);
      }
    })();
    await Promise.all([sends, bounce]);
    oneWay.sort((a, b) => a - b);
    const transferMs = Math.max(1e-3, oneWay[Math.floor(oneWay.length / 2)]! - latencyMs);
    return { latencyMs, bandwidth: BIG_BYTES / (transferMs / 1000) };
  } finally {
    for (const s of [aOut, bIn, bOut, aIn]) s.close();
    gate?.release(domain);
  }
}
