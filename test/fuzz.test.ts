/**
 * Fuzzing live runs: while a data-parallel, a model-parallel and a hybrid
 * run (two real worker processes each) train, strangers throw random and
 * mutated traffic at every TCP port of the run (the coordinator's ROUTER and
 * each worker's peer PULL, which in model mode are the tower links, and in
 * hybrid take the conv ring's pieces and the keyed feature and fc
 * exchanges on one socket), and each
 * fuzzed run must end exactly as the same run left alone: the same loss at
 * every step, the same test loss and accuracy, the same weights bit for bit.
 * What the run refused is read back from its 'refused from strangers' log
 * line, printed, and must be there.
 *
 * The strangers:
 *  (a) raw TCP (node:net): port scans (connect and close), random bytes, and
 *      ZMTP made by hand: greetings of every mechanism, bit-flipped
 *      greetings, a NULL handshake carrying forged messages, CURVE HELLOs
 *      with keys that open nothing; split at random into several writes;
 *  (b) zeromq sockets of the right type (DEALER to the coordinator, PUSH to a
 *      peer port) without CURVE, sending random multi-frame messages and
 *      mutations of valid ones (made with the project's own encoders: bits
 *      flipped, frames truncated, duplicated, added, dropped, resized,
 *      headers swapped for other msgpack), and some valid forgeries as they
 *      are (a 'stepDone' under routing id w0, a ring piece, a keyed tensor
 *      under a step's, an evaluation's or a state gather's key); headers
 *      carry the current protocol version as well as others, so
 *      well-versioned garbage is part of the mix;
 *  (c) the same with CURVE and a key of their own, against the real server
 *      public keys (the run's keys come from a key file, as a stranger who
 *      read a public key somewhere would know them).
 * Counted: zeromq frames whose send libzmq accepted (queued on the
 * stranger's socket: under CURVE none of them gets past the handshake, which
 * is the point; each mode must reach 10,000 of these alone), and raw TCP
 * connections, writes and bytes the kernel took, per target.
 *
 * Hybrid gets one case, with CURVE: its peer sockets are the other layouts'
 * (one PULL per worker, taking the ring's pieces and the keyed exchanges
 * alike), so what is new is that live traffic of both kinds shares them
 * while strangers knock; the variants without CURVE test the decoder behind
 * that same socket, whatever the layout, and stay data-parallel. Its runs
 * are as short as model's (measured on 2 cores, load 5-7: 3.5-7 s alone,
 * 4-8 s fuzzed, 7.5-15 s the case, 16,000-30,000 frames handed over), so it
 * keeps the 10,000-frame floor.
 *
 * The same garbage goes to a run over ipc in its private directory (the
 * local default, without CURVE): from a process of the run's own user, the
 * only one the directory lets in (test/private-ipc.test.ts shows another user
 * cannot connect); the raw connections are then Unix-socket ones.
 *
 * With "security": "none" (loopback only) only garbage is sent: raw bytes,
 * port scans and frames that do not decode (each checked with the decoder
 * before it goes; random bytes may pass for ZMTP/1.0, which libzmq still
 * speaks where no ZAP is asked, and then deliver random frames: dropped the
 * same way). A well-formed forged message cannot be told from the
 * peer's own without authentication, and would change the run: that is why
 * CURVE is the default, and why this variant does not forge.
 *
 * Pacing: each test runs the plain run first, and paces the strangers from
 * its duration so that every mode gets ~2.5× the 10,000 frames it must
 * reach (faster where a fuzzed run gets ahead of that schedule, step by
 * step), spread over the run: the coordinator's port from the workers'
 * start, the peer ports from the first step (they are bound by then; a
 * connect to a port nobody listens on yet could take that port as its own
 * ephemeral one and keep the worker from binding it) to the last step
 * (workers report what they refused when they leave, after it).
 */
import { connect, type Socket as NetSocket } from 'node:net';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import * as zmq from 'zeromq';
import { afterEach, describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train, type TrainResult } from '../src/run/loop.js';
import type { RunKeys } from '../src/wire/curve.js';
import { writeRunKeys } from '../src/wire/key-file.js';
import { decodeToCoordinator, decodeToPeer, encodeToCoordinator, encodeToPeer, PROTOCOL_VERSION } from '../src/wire/protocol.js';
import { endpoint } from '../src/wire/transport.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const DATA: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
  trainSamples: 96, testSamples: 16, checkpointEvery: 0,
};
const MODEL: TrainConfig = { ...DATA, arch: 'original', channels: 3, init: 'xavier-uniform' };
const STEPS = DATA.trainSamples / DATA.batch;

/** Frames each mode must hand to the sockets, and the margin the pacing aims for. */
const MIN_FRAMES = 10_000;
const AIM = 2.5;
/** Raw TCP connections per second per target, and how many may be open at once. */
const RAW_PER_SECOND = 100;
const RAW_AT_ONCE = 8;

const spawned = new Spawned();
let fuzzers: Fuzzer[] = [];
afterEach(async () => {
  await Promise.all(fuzzers.map((f) => f.stop()));
  for (const f of fuzzers) expect(f.openCount(), 'fuzz sockets and connections left open').toBe(0);
  fuzzers = [];
  spawned.reap();
});

// ---- randomness ---------------------------------------------------------------

/** mulberry32: a seeded generator, so a failing mix of frames can be told (the timing of a run is not reproducible). */
class Rand {
  private a: number;
  constructor(seed: number) {
    this.a = seed >>> 0;
  }
  next(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  hex(n: number): string {
    return this.bytes(Math.ceil(n / 2)).toString('hex').slice(0, n);
  }
  floats(n: number): Float32Array {
    return Float32Array.from({ length: n }, () => this.next() * 2 - 1);
  }
}

// ---- messages: valid ones, mutations, garbage ------------------------------------

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

function validToCoordinator(r: Rand): Buffer[] {
  switch (r.int(8)) {
    case 0: return encodeToCoordinator({ kind: 'hello', rank: r.int(2), pid: 1 + r.int(99_999), host: 'fuzz', device: 'cpu', proof: r.hex(64) });
    case 1: return encodeToCoordinator({ kind: 'ready', checksum: r.hex(16), backend: 'wasm', params: r.int(1e6) });
    case 2: return encodeToCoordinator({ kind: 'stepDone', globalStep: r.int(STEPS + 2), loss: r.next() * 3, samples: 4, computeMs: 5, waitMs: 1, bytesSent: r.int(1e6), liveTensors: 10 });
    case 3: return encodeToCoordinator({ kind: 'evalDone', epoch: 0, correct: r.int(16), lossSum: r.next() * 30, samples: 16 });
    case 4: {
      const n = 1 + r.int(64);
      return encodeToCoordinator({ kind: 'state', tensors: [{ name: 'conv1.weight', shape: [n] }] }, [r.floats(n)]);
    }
    case 5: return encodeToCoordinator({ kind: 'loaded', checksum: r.hex(16) });
    case 6: return encodeToCoordinator({ kind: 'error', reason: 'fuzz' });
    default: return encodeToCoordinator({ kind: 'bye', refused: { fuzz: r.int(1000) } });
  }
}

function validToPeer(r: Rand): Buffer[] {
  const n = 1 + r.int(256);
  if (r.int(2) === 0) {
    return encodeToPeer({ kind: 'ring', from: r.int(3), seq: r.int(STEPS + 2), bucket: r.int(3), phase: r.pick(['rs', 'ag'] as const), round: r.int(2), chunk: r.int(2), offset: r.int(4) * 4096 }, [r.floats(n)]);
  }
  const key = r.pick([
    () => `${r.int(STEPS + 2)}/0/${r.pick(['conv3', 'fc6', 'fc7', 'fc8', 'logits'])}/${r.pick(['fwd', 'bwd'])}`,
    () => `eval0/${r.int(2)}/${r.pick(['fc7', 'fc8', 'logits'])}/fwd`,
    () => `state${r.int(2)}/${r.int(2)}/${r.pick(['fc6', 'fc7', 'fc8'])}.t${r.int(2)}.${r.pick(['kernel', 'bias'])}/fwd`,
  ])();
  return encodeToPeer({ kind: 'xfer', from: r.int(3), key }, [r.floats(n)]);
}

/** A random msgpack value where a header goes: mostly the right version (the current one) and kinds, wrong everything else. */
function randomHeader(r: Rand): Buffer {
  const V = PROTOCOL_VERSION;
  const kinds = ['hello', 'ready', 'stepDone', 'bye', 'ring', 'xfer', 'setup', 'step', '', 'x'.repeat(300)];
  const any = (): unknown => r.pick<unknown>([null, true, -1, 2 ** 40, 1.5, NaN, 'w0', r.hex(8), [1, 2], { v: V }, Buffer.alloc(3)]);
  const h: Record<string, unknown> = { v: r.pick([V, V, V, V - 1, 2, 1, 99, String(V), null]), kind: r.pick(kinds) };
  for (let i = r.int(6); i > 0; i--) h[r.pick(['rank', 'seq', 'key', 'loss', 'tensors', 'refused', 'proof', 'zzz'])] = any();
  return r.int(8) === 0 ? packr.pack(r.pick<unknown>([[1, 2, 3], 'text', 42, null, h])) : packr.pack(h);
}

/** 1–3 of: flip bits, truncate, duplicate, add, drop, resize, swap, empty a frame, or replace the header. */
function mutate(r: Rand, frames: Buffer[]): Buffer[] {
  const out: Buffer[] = frames.map((f) => Buffer.from(f));
  for (let k = 1 + r.int(3); k > 0; k--) {
    const i = r.int(out.length);
    const f = out[i]!;
    switch (r.int(9)) {
      case 0: for (let b = 1 + r.int(8); b > 0 && f.length > 0; b--) f[r.int(f.length)]! ^= 1 << r.int(8); break;
      case 1: out[i] = f.subarray(0, r.int(f.length + 1)); break;
      case 2: out.splice(i, 0, Buffer.from(f)); break;
      case 3: out.splice(r.int(out.length + 1), 0, r.bytes(r.int(64))); break;
      case 4: if (out.length > 1) out.splice(i, 1); break;
      case 5: out[i] = r.int(2) === 0 ? Buffer.concat([f, r.bytes(1 + r.int(7))]) : f.subarray(0, Math.max(0, f.length - 1 - r.int(7))); break;
      case 6: { const j = r.int(out.length); [out[i], out[j]] = [out[j]!, f]; break; }
      case 7: out[i] = Buffer.alloc(0); break;
      default: out[0] = randomHeader(r);
    }
  }
  return out.length > 0 ? out : [r.bytes(1)];
}

function randomFrames(r: Rand): Buffer[] {
  return Array.from({ length: 1 + r.int(5) }, () => (r.int(4) === 0 ? randomHeader(r) : r.bytes(r.int(300))));
}

/** What a stranger sends over zeromq: with CURVE anything goes (it never arrives); without, only what does not decode. */
function fuzzMessage(r: Rand, kind: Target['kind'], secure: boolean): Buffer[] {
  if (!secure) {
    const frames = randomFrames(r);
    const decode = kind === 'coordinator' ? decodeToCoordinator : decodeToPeer;
    try {
      decode(frames, 2 ** 30);
    } catch {
      return frames; // refused by the decoder, as it must be
    }
    return [Buffer.from([0xc1, 0xc1]), ...frames.slice(1)]; // decoded (it never has): not msgpack instead
  }
  const valid = () => (kind === 'coordinator' ? validToCoordinator(r) : validToPeer(r));
  const roll = r.int(10);
  if (roll < 2) return valid(); // a well-formed forgery, as it is
  if (roll < 4) return randomFrames(r);
  return mutate(r, valid());
}

// ---- ZMTP by hand ---------------------------------------------------------------------

function greeting(mechanism: string, major = 3, minor = 0): Buffer {
  const g = Buffer.alloc(64);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = major;
  g[11] = minor;
  g.write(mechanism, 12, 'ascii');
  return g;
}

function command(name: string, body: Buffer): Buffer {
  const payload = Buffer.concat([Buffer.from([name.length]), Buffer.from(name, 'latin1'), body]);
  if (payload.length < 256) return Buffer.concat([Buffer.from([0x04, payload.length]), payload]);
  const size = Buffer.alloc(8);
  size.writeBigUInt64BE(BigInt(payload.length));
  return Buffer.concat([Buffer.from([0x06]), size, payload]);
}

function zmtpFrame(data: Buffer, more: boolean): Buffer {
  if (data.length < 256) return Buffer.concat([Buffer.from([more ? 1 : 0, data.length]), data]);
  const size = Buffer.alloc(8);
  size.writeBigUInt64BE(BigInt(data.length));
  return Buffer.concat([Buffer.from([more ? 3 : 2]), size, data]);
}

function properties(props: Record<string, string>): Buffer {
  return Buffer.concat(Object.entries(props).map(([k, v]) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(v.length);
    return Buffer.concat([Buffer.from([k.length]), Buffer.from(k), len, Buffer.from(v)]);
  }));
}

/** A CURVE HELLO of the right shape: version, 72 bytes of padding, a client key, a nonce, a box nothing opens. */
const curveHello = (r: Rand) => command('HELLO', Buffer.concat([Buffer.from([1, 0]), Buffer.alloc(72), r.bytes(32), r.bytes(8), r.bytes(80)]));

/** What one raw connection writes, as the writes it is split into; [] is a port scan. */
function rawPayload(r: Rand, kind: Target['kind'], secure: boolean): Buffer[] {
  let bytes: Buffer;
  const choice = secure ? r.int(9) : r.int(3);
  switch (choice) {
    case 0: return [];
    case 1: bytes = r.bytes(1 + r.int(1500)); break;
    case 2: bytes = Buffer.concat([r.bytes(1 + r.int(64)), r.bytes(r.int(64))]); break;
    case 3: {
      // NULL handshake, then forged messages: a CURVE server refuses the mechanism
      const msg = kind === 'coordinator' ? validToCoordinator(r) : validToPeer(r);
      bytes = Buffer.concat([
        greeting('NULL'),
        command('READY', properties({ 'Socket-Type': kind === 'coordinator' ? 'DEALER' : 'PUSH', ...(kind === 'coordinator' ? { Identity: r.pick(['w0', 'w1']) } : {}) })),
        ...(r.int(2) === 0 ? mutate(r, msg) : msg).map((f, i, all) => zmtpFrame(f, i < all.length - 1)),
      ]);
      break;
    }
    case 4: bytes = Buffer.concat([greeting('CURVE'), curveHello(r)]); break;
    case 5: bytes = Buffer.concat([greeting('CURVE'), r.int(2) === 0 ? command(r.pick(['INITIATE', 'READY', 'ERROR', 'MESSAGE', 'PING']), r.bytes(r.int(300))) : r.bytes(r.int(300))]); break;
    case 6: {
      const g = greeting(r.pick(['NULL', 'CURVE', 'PLAIN']));
      for (let b = 1 + r.int(4); b > 0; b--) g[r.int(64)]! ^= 1 << r.int(8);
      bytes = Buffer.concat([g, mutate(r, [curveHello(r)])[0]!]);
      break;
    }
    case 7: bytes = Buffer.concat([greeting('PLAIN'), command('HELLO', Buffer.concat([Buffer.from([2]), Buffer.from('w0'), Buffer.from([4]), Buffer.from('pass')]))]); break;
    default: bytes = Buffer.concat([greeting(r.pick(['NULL', 'CURVE', 'GSSAPI', 'X'.repeat(20)]), r.pick([1, 2, 3, 4, 255]), r.int(256)), r.bytes(r.int(200))]);
  }
  // split at random points: the server must cope with a greeting in pieces
  const chunks: Buffer[] = [];
  let at = 0;
  for (let n = r.int(4); n > 0 && at < bytes.length; n--) {
    const next = at + 1 + r.int(Math.max(1, bytes.length - at));
    chunks.push(bytes.subarray(at, next));
    at = next;
  }
  if (at < bytes.length) chunks.push(bytes.subarray(at));
  return chunks;
}

// ---- the strangers ------------------------------------------------------------------------

/** Where a target listens, as the run names it (wire/transport.ts endpoint). */
const zmqAddress = (t: Target): string => endpoint(t.ipcDir ? 'ipc' : 'tcp', '127.0.0.1', t.port, t.ipcDir?.());
const rawAddress = (t: Target): { path: string } | { host: string; port: number } =>
  t.ipcDir ? { path: zmqAddress(t).slice('ipc://'.length) } : { host: '127.0.0.1', port: t.port };

interface Target {
  name: string;
  port: number;
  /** transport ipc: the run's private socket directory (known once the run has started); the port names the socket in it */
  ipcDir?: () => string;
  kind: 'coordinator' | 'peer';
  /** the CURVE server key of the socket on that port */
  serverKey?: string;
}

interface Tally {
  /** raw TCP: connections made, refused by the OS, writes and bytes the kernel took */
  connections: number; connectErrors: number; rawWrites: number; rawBytes: number;
  /** zeromq frames (and messages) libzmq accepted: without CURVE, with a key of its own */
  plainFrames: number; keyedFrames: number; messages: number;
  /**
   * zeromq sockets opened, and sends refused: once its handshake is refused,
   * libzmq drops the socket's only pipe and sends fail at once (EAGAIN, as
   * sendTimeout is 0); that socket is then replaced by a fresh one
   */
  sockets: number; sendRefused: number;
}

const newTally = (): Tally => ({ connections: 0, connectErrors: 0, rawWrites: 0, rawBytes: 0, plainFrames: 0, keyedFrames: 0, messages: 0, sockets: 0, sendRefused: 0 });
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const yieldNow = () => new Promise<void>((resolve) => setImmediate(resolve));

class Fuzzer {
  readonly tallies = new Map<string, Tally>();
  private stopped = false;
  private readonly zsockets = new Set<zmq.Socket>();
  private readonly conns = new Set<NetSocket>();
  private readonly loops: Array<Promise<void>> = [];
  private readonly attacked = new Set<string>();

  /** `framesPerSecond`: per zeromq loop (one per flavour and target) */
  constructor(private readonly r: Rand, private readonly secure: boolean, private readonly framesPerSecond: number) {}

  /** Starts the strangers on `t` (once). */
  attack(t: Target): void {
    if (this.stopped || this.attacked.has(t.name)) return;
    this.attacked.add(t.name);
    this.tallies.set(t.name, newTally());
    this.loops.push(this.rawLoop(t), this.zmqLoop(t, 'plain'));
    if (this.secure) this.loops.push(this.zmqLoop(t, 'keyed'));
  }

  /** Stops every loop and closes every socket and connection. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.closeAll();
    await Promise.allSettled(this.loops);
    this.closeAll();
  }

  openCount(): number {
    return this.zsockets.size + this.conns.size;
  }

  total(key: keyof Tally): number {
    return [...this.tallies.values()].reduce((n, t) => n + t[key], 0);
  }

  private closeAll(): void {
    for (const s of this.zsockets) if (!s.closed) s.close();
    this.zsockets.clear();
    for (const c of this.conns) c.destroy();
  }

  /** The zeromq loops' pace, times this: raised when a run goes faster than the plain run it was sized by. */
  private boost = 1;

  /** `fraction` of the run is done: behind the frames due by now, the zeromq loops go faster. */
  progress(fraction: number): void {
    const sent = this.total('plainFrames') + this.total('keyedFrames');
    if (sent < AIM * MIN_FRAMES * fraction && this.boost < 16) this.boost *= 2;
  }

  /** Waits until `done` items at `perSecond` are due; yields at least once. */
  private async pace(t0: number, done: number, perSecond: number): Promise<void> {
    const ahead = (done / perSecond) * 1000 - (performance.now() - t0);
    await (ahead > 1 ? sleep(Math.min(ahead, 100)) : yieldNow());
  }

  /** Paced connections, up to RAW_AT_ONCE open at a time (a server may keep a half-sent greeting waiting). */
  private async rawLoop(t: Target): Promise<void> {
    const t0 = performance.now();
    const open = new Set<Promise<void>>();
    for (let n = 1; !this.stopped; n++) {
      const c = this.rawOnce(t, rawPayload(this.r, t.kind, this.secure));
      open.add(c);
      void c.then(() => open.delete(c));
      if (open.size >= RAW_AT_ONCE) await Promise.race(open);
      await this.pace(t0, n, RAW_PER_SECOND);
    }
    await Promise.allSettled(open);
  }

  private rawOnce(t: Target, chunks: Buffer[]): Promise<void> {
    const tally = this.tallies.get(t.name)!;
    const scanHard = chunks.length === 0 && this.r.int(2) === 0;
    return new Promise((resolve) => {
      const s = connect(rawAddress(t));
      let connected = false;
      this.conns.add(s);
      s.on('error', () => {
        // ECONNRESET / EPIPE: the server hung up on us, as it should; before connecting: the OS refused
        if (!connected) tally.connectErrors++;
      });
      s.on('close', () => {
        this.conns.delete(s);
        resolve();
      });
      s.on('connect', () => {
        connected = true;
        tally.connections++;
        if (scanHard) {
          s.destroy();
          return;
        }
        for (const c of chunks) {
          s.write(c, (err) => {
            if (err) return;
            tally.rawWrites++;
            tally.rawBytes += c.length;
          });
        }
        s.end();
        setTimeout(() => s.destroy(), 300).unref();
      });
    });
  }

  private open(t: Target, flavour: 'plain' | 'keyed'): zmq.Dealer | zmq.Push {
    const own = flavour === 'keyed' ? zmq.curveKeyPair() : undefined;
    const curve = own && t.serverKey ? { curveServerKey: t.serverKey, curvePublicKey: own.publicKey, curveSecretKey: own.secretKey } : {};
    // sendTimeout 0: a send that cannot be queued (no pipe left after a refused handshake, or a full queue) fails at once, never waits
    const base = { linger: 0, sendTimeout: 0, sendHighWaterMark: 20_000, ...curve };
    let s: zmq.Dealer | zmq.Push;
    if (t.kind === 'coordinator') {
      // With CURVE, the workers' own ids too; without, never theirs (the ROUTER would take a w0 for the worker).
      const id = this.secure ? this.r.pick(['w0', 'w1', `w${2 + this.r.int(9)}`, this.r.hex(6), '']) : this.r.pick([`x${this.r.hex(6)}`, '']);
      s = new zmq.Dealer({ ...base, ...(id !== '' ? { routingId: id } : {}) });
    } else {
      s = new zmq.Push(base);
    }
    this.zsockets.add(s);
    this.tallies.get(t.name)!.sockets++;
    s.connect(zmqAddress(t));
    return s;
  }

  /** One socket after another (each a fresh connection, a fresh handshake to refuse), sending paced messages. */
  private async zmqLoop(t: Target, flavour: 'plain' | 'keyed'): Promise<void> {
    const tally = this.tallies.get(t.name)!;
    const t0 = performance.now();
    let frames = 0;
    while (!this.stopped) {
      const s = this.open(t, flavour);
      const until = performance.now() + 200 + this.r.int(400);
      while (!this.stopped && performance.now() < until) {
        const msg = fuzzMessage(this.r, t.kind, this.secure);
        try {
          await s.send(msg);
        } catch {
          tally.sendRefused++;
          break;
        }
        frames += msg.length;
        tally.messages++;
        if (flavour === 'plain') tally.plainFrames += msg.length;
        else tally.keyedFrames += msg.length;
        await this.pace(t0, frames, this.framesPerSecond * this.boost);
      }
      if (!s.closed) s.close();
      this.zsockets.delete(s);
    }
  }
}

// ---- runs ----------------------------------------------------------------------------------

interface Refusal { count: number; where: 'coordinator' | 'workers'; reason: string }

/** The run's '  refused from strangers: N× coordinator: <reason>; M× workers: <reason>; …' line, as rows. */
function parseRefusals(lines: string[]): Refusal[] {
  const line = lines.find((l) => l.includes('refused from strangers: '));
  if (line === undefined) return [];
  const body = line.slice(line.indexOf('refused from strangers: ') + 'refused from strangers: '.length);
  const rows: Refusal[] = [];
  for (const m of body.matchAll(/(\d+)× (coordinator|workers): (.*?)(?=; \d+× (?:coordinator|workers): |$)/g)) {
    rows.push({ count: Number(m[1]), where: m[2] as Refusal['where'], reason: m[3]! });
  }
  return rows;
}

interface Fuzzed {
  result: TrainResult;
  lines: string[];
  /** from the workers' start to the last step, and from the first step to the last, ms */
  coordinatorWindowMs: number;
  peerWindowMs: number;
}

/**
 * The run's private ipc directory, found where it is made: TMPDIR points at
 * a fresh directory of the test's for the run, so the one splitnet-* in it is the run's.
 */
function privateDirOf(tmp: string): () => string {
  return () => {
    const dirs = readdirSync(tmp).filter((n) => n.startsWith('splitnet-'));
    if (dirs.length !== 1) throw new Error(`expected the run's one private ipc directory in ${tmp}, found [${dirs.join(', ')}]`);
    return join(tmp, dirs[0]!);
  };
}

type Layout = 'data' | 'model' | 'hybrid';

async function run(mode: Layout, clusterOverrides: Record<string, unknown>, fuzz?: { fuzzer: Fuzzer; keys?: RunKeys }): Promise<Fuzzed> {
  const cluster = await localCluster(2, clusterOverrides);
  const ipc = cluster.transport === 'ipc';
  const outDir = tempDir();
  const savedTmp = process.env.TMPDIR;
  const tmp = tempDir();
  if (ipc) process.env.TMPDIR = tmp;
  try {
    return await runOn(mode, cluster, outDir, ipc ? privateDirOf(tmp) : undefined, fuzz);
  } finally {
    if (ipc) {
      if (savedTmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmp;
      // (the workers' tsx keeps its cache there too: not the run's)
      expect(readdirSync(tmp).filter((n) => n.startsWith('splitnet-')), 'the private directory, after the run').toEqual([]);
    }
  }
}

async function runOn(mode: Layout, cluster: Awaited<ReturnType<typeof localCluster>>, outDir: string, ipcDir: (() => string) | undefined, fuzz?: { fuzzer: Fuzzer; keys?: RunKeys }): Promise<Fuzzed> {
  const lines: string[] = [];
  let started = 0;
  let firstStep = 0;
  let lastStep = 0;
  const targets: Target[] = [
    { name: 'coordinator', port: cluster.coordinator.port, kind: 'coordinator', ...(fuzz?.keys ? { serverKey: fuzz.keys.coordinator.publicKey } : {}), ...(ipcDir ? { ipcDir } : {}) },
    ...cluster.workers.map((w, i): Target => ({ name: `worker ${i} peer port`, port: w.port, kind: 'peer', ...(fuzz?.keys ? { serverKey: fuzz.keys.workers[i]!.publicKey } : {}), ...(ipcDir ? { ipcDir } : {}) })),
  ];
  const result = await train({
    config: mode === 'model' ? MODEL : DATA, outDir, mode, cluster, workers: cluster.workers, progress: false,
    log: (l) => lines.push(l),
    onEvent: spawned.watch((e) => {
      if (e.type === 'started') {
        started = performance.now();
        fuzz?.fuzzer.attack(targets[0]!);
      } else if (e.type === 'step') {
        if (e.globalStep === 1) {
          firstStep = performance.now();
          for (const t of targets.slice(1)) fuzz?.fuzzer.attack(t);
        }
        fuzz?.fuzzer.progress(e.globalStep / STEPS);
        if (e.globalStep === STEPS) {
          lastStep = performance.now();
          void fuzz?.fuzzer.stop(); // before the workers say goodbye with their counts
        }
      }
    }),
  });
  return { result, lines, coordinatorWindowMs: lastStep - started, peerWindowMs: lastStep - firstStep };
}

function framesPerLoop(plain: Fuzzed, secure: boolean): number {
  // Loops: per target one plain (and one keyed with CURVE); the peer ports have the shorter window.
  const perTarget = secure ? 2 : 1;
  const loopSeconds = perTarget * (plain.coordinatorWindowMs + 2 * plain.peerWindowMs) / 1000;
  return Math.max(200, (AIM * MIN_FRAMES) / loopSeconds);
}

function expectSameRun(fuzzed: TrainResult, plain: TrainResult): void {
  expect(fuzzed.finished).toBe(true);
  expect(fuzzed.losses).toHaveLength(STEPS);
  expect(fuzzed.losses).toEqual(plain.losses); // every step's loss, exactly
  expect(fuzzed.losses.at(-1)).toBe(plain.losses.at(-1));
  expect(fuzzed.epochs).toEqual(plain.epochs); // test loss and accuracy
  expect([...fuzzed.params.keys()]).toEqual([...plain.params.keys()]);
  const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  for (const [name, w] of plain.params) expect(bytes(fuzzed.params.get(name)!).equals(bytes(w)), `weights ${name}, bit for bit`).toBe(true);
}

function report(title: string, f: Fuzzer, refusals: Refusal[], plain: Fuzzed, fuzzed: Fuzzed): void {
  const rows = [...f.tallies].map(([name, t]) => [name, t.connections, t.rawWrites, t.rawBytes, t.plainFrames, t.keyedFrames, t.plainFrames + t.keyedFrames, t.sockets, t.sendRefused]);
  rows.push(['total', f.total('connections'), f.total('rawWrites'), f.total('rawBytes'), f.total('plainFrames'), f.total('keyedFrames'), f.total('plainFrames') + f.total('keyedFrames'), f.total('sockets'), f.total('sendRefused')]);
  const head = ['target', 'tcp conns', 'tcp writes', 'tcp bytes', 'zmq frames plain', 'zmq frames keyed', 'zmq frames', 'zmq sockets', 'sends refused'];
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const fmt = (r: Array<string | number>) => r.map((c, i) => (i === 0 ? String(c).padEnd(width[i]!) : String(c).padStart(width[i]!))).join('  ');
  const out = [
    `${title}: run ${(plain.result.wallSeconds).toFixed(1)} s alone, ${(fuzzed.result.wallSeconds).toFixed(1)} s fuzzed; final loss ${fuzzed.result.losses.at(-1)} (alone: ${plain.result.losses.at(-1)})`,
    fmt(head), ...rows.map(fmt),
    'refused from strangers (the run\'s log line):',
    ...refusals.map((x) => `  ${String(x.count).padStart(7)}  ${x.where.padEnd(11)}  ${x.reason}`),
  ];
  console.log(out.join('\n'));
}

const sum = (rows: Refusal[], where: Refusal['where'], reason?: RegExp) =>
  rows.filter((x) => x.where === where && (reason === undefined || reason.test(x.reason))).reduce((n, x) => n + x.count, 0);

async function fuzzedWithCurve(mode: Layout, seed: number) {
  const keyFile = join(tempDir(), 'keys.json');
  const keys = writeRunKeys(keyFile, 2);
  const plain = await run(mode, { keys: keyFile });
  const fuzzer = new Fuzzer(new Rand(seed), true, framesPerLoop(plain, true));
  fuzzers.push(fuzzer);
  const fuzzed = await run(mode, { keys: keyFile }, { fuzzer, keys });
  await fuzzer.stop();
  const refusals = parseRefusals(fuzzed.lines);
  report(`fuzz ${mode === 'hybrid' ? 'hybrid' : `${mode}-parallel`}, CURVE (seed ${seed})`, fuzzer, refusals, plain, fuzzed);

  expectSameRun(fuzzed.result, plain.result);
  expect(parseRefusals(plain.lines)).toEqual([]); // alone, nobody was refused
  expect(fuzzer.total('plainFrames') + fuzzer.total('keyedFrames')).toBeGreaterThanOrEqual(MIN_FRAMES);
  for (const [name, t] of fuzzer.tallies) {
    expect(t.connections, `${name}: raw connections`).toBeGreaterThan(0);
    expect(t.plainFrames, `${name}: frames without CURVE`).toBeGreaterThan(0);
    expect(t.keyedFrames, `${name}: frames with a stranger's key`).toBeGreaterThan(0);
  }
  // Strangers are refused in the handshake, on every port, by reason...
  expect(sum(refusals, 'coordinator', /^unknown key on 'coordinator'$/)).toBeGreaterThan(0);
  expect(sum(refusals, 'coordinator', /not ZMTP, or not CURVE/)).toBeGreaterThan(0);
  expect(sum(refusals, 'workers', /^unknown key on 'peer'$/)).toBeGreaterThan(0);
  expect(sum(refusals, 'workers', /not ZMTP, or not CURVE/)).toBeGreaterThan(0);
  // ...and not one of their messages got through to be looked at.
  for (const x of refusals) expect(x.reason).toMatch(/^handshake |^unknown key on '(coordinator|peer)'$|^mechanism /);
  for (const pid of spawned.pids) expect(alive(pid), `worker pid ${pid}`).toBe(false);
}

/** A run without CURVE, fuzzed with garbage only (a forgery would be taken for the peer's own: see the top). */
async function fuzzedPlain(overrides: Record<string, unknown>, seed: number, title: string) {
  const plain = await run('data', overrides);
  const fuzzer = new Fuzzer(new Rand(seed), false, framesPerLoop(plain, false));
  fuzzers.push(fuzzer);
  const fuzzed = await run('data', overrides, { fuzzer });
  await fuzzer.stop();
  const refusals = parseRefusals(fuzzed.lines);
  report(`fuzz data-parallel, ${title} (seed ${seed})`, fuzzer, refusals, plain, fuzzed);

  expectSameRun(fuzzed.result, plain.result);
  expect(parseRefusals(plain.lines)).toEqual([]);
  expect(fuzzer.total('plainFrames')).toBeGreaterThanOrEqual(MIN_FRAMES);
  // Messages under ids not the workers' are dropped at the coordinator; no more than were sent there.
  const unknownIds = sum(refusals, 'coordinator', /^message from unknown peer id/);
  expect(unknownIds).toBeGreaterThan(0);
  // (raw garbage may pass for ZMTP/1.0, which a socket without ZAP still speaks: at most one message per 2 bytes)
  const atCoordinator = fuzzer.tallies.get('coordinator')!;
  expect(unknownIds).toBeLessThanOrEqual(atCoordinator.messages + atCoordinator.rawBytes / 2);
  // Messages that do not decode are dropped by the workers, counted by reason.
  const undecodable = sum(refusals, 'workers') - sum(refusals, 'workers', /^handshake /);
  expect(undecodable).toBeGreaterThan(0);
  // Garbage of the current protocol version gets past the version check and is refused by the schema.
  expect(sum(refusals, 'workers', /^bad '.*' message/)).toBeGreaterThan(0);
  // A reason is the decoder's words, not the stranger's (what it quoted is left out): printable ASCII.
  for (const x of refusals) expect(x.reason).toMatch(/^[\x20-\x7e…]*$/);
  // Port scans and garbage are handshake failures.
  expect(sum(refusals, 'coordinator', /^handshake /)).toBeGreaterThan(0);
  expect(sum(refusals, 'workers', /^handshake /)).toBeGreaterThan(0);
  for (const pid of spawned.pids) expect(alive(pid), `worker pid ${pid}`).toBe(false);
}

describe('fuzzing live runs', () => {
  it('data-parallel over 2 workers, CURVE: ≥ 10,000 random and mutated frames, every stranger refused by reason, the same losses and weights', async () => {
    await fuzzedWithCurve('data', 0x5eed);
  });

  it('model-parallel over 2 workers (the tower links), CURVE: ≥ 10,000 random and mutated frames, every stranger refused by reason, the same losses and weights', async () => {
    await fuzzedWithCurve('model', 0x70e5);
  });

  it('hybrid over 2 workers (one peer socket each takes the conv ring and the feature and fc exchanges), CURVE: ≥ 10,000 random and mutated frames, every stranger refused by reason, the same losses and weights', async () => {
    await fuzzedWithCurve('hybrid', 0x4b1d);
  });

  it('data-parallel without CURVE ("security": "none", loopback TCP): garbage and port scans are dropped and counted, the same losses and weights', async () => {
    await fuzzedPlain({ security: 'none' }, 0xbad, '"security": "none"');
  });

  it('data-parallel over ipc in the private directory (the local default: no CURVE): garbage and scans from a process of the same user are dropped and counted, the same losses and weights, nothing left behind', async () => {
    await fuzzedPlain({ transport: 'ipc' }, 0x1bc, 'ipc in a private directory');
  });
});
