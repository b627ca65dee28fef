/**
 * The link's latency and bandwidth as the workers' sockets see them: a
 * zeromq PUSH/PULL pair each way over the run's transport (TCP, or ipc in a
 * private directory for local workers), bouncing off an echo. The echo runs in this process for
 * loopback, or in another process for a link that only another process can
 * stand behind (a worker's network namespace, run/shaped-network.ts).
 * `splitnet compare` feeds both figures to its step-time prediction.
 */
import * as zmq from 'zeromq';
import { z } from 'zod';
import { describeIssue } from '../config/describe-issue.js';
import { UsageError } from '../errors.js';
import { curveClient, curveServer, generateRunKeys, ZapGate, type KeyPair } from './curve.js';
import { freePorts } from './free-ports.js';
import { createPrivateDir, removePrivateDir } from './private-dir.js';
import { join } from 'node:path';

/** Round trips timed for the latency (the median is kept): enough to ride out a scheduler hiccup. */
const ROUND_TRIPS = 200;
/** Bandwidth: round trips of one BIG_BYTES message (the ring's piece size, 4 MiB); the median is kept */
const BIG_ROUND_TRIPS = 9;
const BIG_BYTES = 4 * 2 ** 20;
/**
 * A socket silent this long means the probe is broken, not slow: the
 * slowest link accepted (1 Mbit/s, shaped-network.ts) moves a 4 MiB round
 * trip in about 70 s.
 */
const RECEIVE_TIMEOUT_MS = 120_000;

export interface LinkProbe {
  /** one-way latency of an 8-byte message, ms (half the median round trip) */
  latencyMs: number;
  /** bytes per second of a lone 4 MiB message (as a ring round sends it), latency excluded */
  bandwidth: number;
}

/** What an echo needs: where it listens, where it answers, and (CURVE) its keys and the prober's public key. */
export interface EchoPlan {
  /** endpoint the echo binds its PULL on (tcp, or ipc in this process) */
  listen: string;
  /** endpoint of the prober's PULL, which the echo's PUSH connects to */
  answer: string;
  curve?: { own: KeyPair; prober: string };
}

/** A running echo: `stop` ends it and resolves once its sockets are closed. */
export interface Echo { stop(): Promise<void> }

/** Starts an echo described by an EchoPlan (in this process, or elsewhere). */
export type StartEcho = (plan: EchoPlan) => Promise<Echo>;

/**
 * Bounces every message from `listen` back to `answer` until stopped. Used
 * in this process and by `splitnet link-echo` inside a namespace.
 */
export async function runEcho(plan: EchoPlan): Promise<Echo> {
  const domain = `echo@${plan.listen}`;
  const gate = plan.curve ? await ZapGate.admit(domain, new Set([plan.curve.prober])) : undefined;
  const input = new zmq.Pull({ linger: 0, ...(plan.curve ? curveServer(plan.curve.own, domain) : {}) });
  const output = new zmq.Push({ linger: 0, sendTimeout: RECEIVE_TIMEOUT_MS, ...(plan.curve ? curveClient(plan.curve.own, plan.curve.prober) : {}) });
  try {
    await input.bind(plan.listen);
    output.connect(plan.answer);
  } catch (err) {
    input.close();
    output.close();
    gate?.release(domain);
    throw err;
  }
  const loop = (async () => {
    try {
      for (;;) {
        const [m] = await input.receive();
        await output.send(m!);
      }
    } catch {
      // closed by stop(): the probe is over
    }
  })();
  return {
    stop: async () => {
      input.close();
      output.close();
      await loop;
      gate?.release(domain);
    },
  };
}

export interface ProbeOptions {
  /** the address this process's PULL binds, and the echo answers to */
  host?: string;
  /** the address the echo listens on (default: `host`) */
  echoHost?: string;
  /** both directions over CURVE, as the run's links are by default */
  secure?: boolean;
  /** how the echo is started (default: in this process) */
  startEcho?: StartEcho;
  /** 'ipc': both ends in a fresh private directory of this process (the local workers' transport), not TCP */
  transport?: 'tcp' | 'ipc';
}

const tcp = (host: string, port: number) => `tcp://${host.includes(':') ? `[${host}]` : host}:${port}`;

/**
 * `secure`: both directions over CURVE, as the run's links are by default
 * (encryption roughly halves a loopback link's bandwidth on the 2-core VMs
 * measured, so a plain probe would flatter a secured run).
 */
export async function probeLink(o: ProbeOptions = {}): Promise<LinkProbe> {
  const host = o.host ?? '127.0.0.1';
  const echoHost = o.echoHost ?? host;
  const secure = o.secure ?? true;
  const [pEcho, pBack] = await freePorts(2);
  const [mine, theirs] = secure ? generateRunKeys(2).workers : [];
  const dir = o.transport === 'ipc' ? createPrivateDir() : undefined;
  const listen = dir !== undefined ? `ipc://${join(dir, 'echo.ipc')}` : tcp(echoHost, pEcho!);
  const answer = dir !== undefined ? `ipc://${join(dir, 'back.ipc')}` : tcp(host, pBack!);
  const domain = `probe@${answer}`;
  let gate: ZapGate | undefined;
  let back: zmq.Pull | undefined;
  let out: zmq.Push | undefined;
  let echo: Echo | undefined;
  try {
    gate = secure ? await ZapGate.admit(domain, new Set([theirs!.publicKey])) : undefined;
    back = new zmq.Pull({ linger: 0, receiveTimeout: RECEIVE_TIMEOUT_MS, ...(secure ? curveServer(mine!, domain) : {}) });
    out = new zmq.Push({ linger: 0, sendTimeout: RECEIVE_TIMEOUT_MS, ...(secure ? curveClient(mine!, theirs!.publicKey) : {}) });
    await back.bind(answer);
    echo = await (o.startEcho ?? runEcho)({ listen, answer, ...(secure ? { curve: { own: theirs!, prober: mine!.publicKey } } : {}) });
    out.connect(listen);
    const [tx, rx] = [out, back];
    const roundTrip = async (m: Buffer): Promise<number> => {
      const t0 = performance.now();
      await tx.send(m);
      await rx.receive();
      return performance.now() - t0;
    };
    const small = Buffer.alloc(8);
    await roundTrip(small); // connects: not timed
    const rtts: number[] = [];
    for (let i = 0; i < ROUND_TRIPS; i++) rtts.push(await roundTrip(small));
    const latencyMs = median(rtts) / 2;
    // Bandwidth as a ring round sees it: one large message at a time, each
    // into freshly allocated receive memory (on some VMs first-touching new
    // pages costs ~3 ms/MiB, far more than the copy), not a warmed stream.
    const oneWay: number[] = [];
    for (let i = 0; i < BIG_ROUND_TRIPS; i++) oneWay.push((await roundTrip(Buffer.alloc(BIG_BYTES, 1))) / 2);
    const transferMs = Math.max(1e-3, median(oneWay) - latencyMs);
    return { latencyMs, bandwidth: BIG_BYTES / (transferMs / 1000) };
  } finally {
    out?.close();
    back?.close();
    await echo?.stop();
    gate?.release(domain);
    if (dir !== undefined) removePrivateDir(dir);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const Key = z.string().length(40);
const EchoPlanSchema = z.strictObject({
  listen: z.string().regex(/^tcp:\/\/.+:\d+$/, 'expected tcp://host:port'),
  answer: z.string().regex(/^tcp:\/\/.+:\d+$/, 'expected tcp://host:port'),
  curve: z.strictObject({ own: z.strictObject({ publicKey: Key, secretKey: Key }), prober: Key }).optional(),
});

/** An EchoPlan from one JSON line (`splitnet link-echo` reads it on stdin: the keys never appear on a command line). */
export function parseEchoPlan(line: string): EchoPlan {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch (err) {
    throw new UsageError(`link-echo: stdin: expected one JSON line, got ${JSON.stringify(line.slice(0, 40))} (${(err as Error).message})`);
  }
  const r = EchoPlanSchema.safeParse(raw);
  if (!r.success) throw new UsageError(describeIssue('link-echo: stdin', r.error.issues[0]!));
  return r.data as EchoPlan;
}
