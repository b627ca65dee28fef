/**
 * CURVE (ZeroMQ's CurveZMQ: Curve25519 key exchange, then every frame
 * encrypted and authenticated) for every TCP socket of a run, and the ZAP
 * handler that decides who may connect.
 *
 * Every process of a run has its own key pair. A bound socket is a CURVE
 * server; each connecting socket proves it holds a secret key, and libzmq
 * asks this process's ZAP handler (RFC 27: a socket bound at
 * inproc://zeromq.zap.01) whether that public key may talk to the socket,
 * named by its ZAP domain:
 *   'coordinator@<port>'  the run's worker keys
 *   'peer@<ep>'    the peers whose messages the socket bound on <ep>
 *                  receives: every worker its communicator exchanges with
 * Everyone else is refused during the handshake: they never deliver a
 * message, and a refusal is counted by its reason.
 *
 * ZAP does not say which routing id the connecting socket carries (its
 * "identity" frame is the server socket's own), so binding a key to a
 * worker's place takes one more step: a worker's hello carries a proof that
 * it holds worker r's secret key (helloProof), which only worker r can
 * compute. Without it another key of the run could claim `w0`.
 */
import { createHmac, createPrivateKey, createPublicKey, diffieHellman, timingSafeEqual } from 'node:crypto';
import * as zmq from 'zeromq';
import { Refusals } from './refusals.js';

/** A Z85-encoded Curve25519 key pair, as zmq.curveKeyPair() makes it (40 characters each). */
export interface KeyPair { publicKey: string; secretKey: string }

/** What a worker needs to take part in a secured run: its own keys and everyone's public key. */
export interface WorkerKeys {
  own: KeyPair;
  coordinator: string;
  /** public keys of every worker, by rank */
  workers: string[];
}

/** The keys of a whole run: the coordinator's pair and one pair per worker. */
export interface RunKeys { coordinator: KeyPair; workers: KeyPair[] }

const Z85_KEY = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;

/** Refuses a key that is not 40 Z85 characters, naming where it came from. */
export function checkKey(key: unknown, what: string): string {
  if (typeof key !== 'string' || !Z85_KEY.test(key)) throw new Error(`${what}: expected a 40-character Z85 CURVE key, got ${typeof key === 'string' ? `${key.length} characters` : typeof key}`);
  return key;
}

/** Fails clearly where the zeromq build has no CURVE (it needs libsodium or tweetnacl compiled in). */
export function requireCurve(): void {
  if (!zmq.capability.curve) throw new Error("this zeromq build has no CURVE support (zmq.capability.curve is false): reinstall zeromq with its prebuilt binary, or run on loopback with \"security\": \"none\"");
}

export function generateRunKeys(world: number): RunKeys {
  requireCurve();
  return { coordinator: zmq.curveKeyPair(), workers: Array.from({ length: world }, () => zmq.curveKeyPair()) };
}

export function workerKeys(keys: RunKeys, rank: number): WorkerKeys {
  return { own: keys.workers[rank]!, coordinator: keys.coordinator.publicKey, workers: keys.workers.map((k) => k.publicKey) };
}

/**
 * Socket options of a CURVE server that asks the ZAP handler about `domain`.
 * zapEnforceDomain: without it libzmq admits every key while no ZAP handler
 * is bound (the "Stonehouse" legacy: encryption without authentication;
 * measured with zeromq 6.8), so a gate closed too early, or never opened,
 * would open the socket to anyone; with it such a handshake is refused.
 */
export const curveServer = (own: KeyPair, domain: string) =>
  ({ curveServer: true, curveSecretKey: own.secretKey, curvePublicKey: own.publicKey, zapDomain: domain, zapEnforceDomain: true }) as const;

/** Socket options of a CURVE client of the server whose public key is `server`. */
export const curveClient = (own: KeyPair, server: string) =>
  ({ curveServerKey: server, curvePublicKey: own.publicKey, curveSecretKey: own.secretKey }) as const;

/** Who may connect to the sockets of one ZAP domain: their public keys. */
export type Admission = Set<string>;

/**
 * The process's ZAP handler. One per process (libzmq has one ZAP endpoint
 * per context, and zeromq.js uses one context); `admit` names who may
 * connect to each domain. A request for a domain nobody registered is
 * refused: a socket that asks ZAP must have said whom it expects.
 */
export class ZapGate {
  /** refusals by reason since the gate opened */
  readonly refused = new Refusals();
  private readonly domains = new Map<string, Admission>();
  private constructor(private readonly socket: zmq.Router) {}

  /** the gate being bound or bound (`bound` once it is) */
  private static current: Promise<ZapGate> | undefined;
  private static bound: ZapGate | undefined;
  /** domains admitted and not yet released: the gate closes with the last */
  private users = 0;

  /**
   * The process's gate, bound on first use, with `who` admitted to `domain`.
   * Every user names its own domain (a socket's kind and endpoint), so two
   * clusters or a link probe in one process do not overwrite each other, and
   * releases it when its socket closes.
   */
  static async admit(domain: string, who: Admission): Promise<ZapGate> {
    ZapGate.current ??= ZapGate.bind().catch((err: unknown) => {
      ZapGate.current = undefined; // the next admit tries again
      throw err;
    });
    const gate = await ZapGate.current;
    if (gate.socket.closed) return ZapGate.admit(domain, who); // its last user released it while this one waited
    if (gate.domains.has(domain)) throw new Error(`ZAP domain '${domain}' is already admitted in this process: two sockets on one endpoint`);
    gate.domains.set(domain, who);
    gate.users++;
    return gate;
  }

  /**
   * Binds the ZAP endpoint. A gate closed moments ago may still hold it
   * (libzmq releases it on its reaper thread): measured, 13 of 200 immediate
   * rebinds failed with EADDRINUSE; retried for up to 1 s.
   */
  private static async bind(): Promise<ZapGate> {
    for (let attempt = 0; ; attempt++) {
      const socket = new zmq.Router({ linger: 0 });
      try {
        await socket.bind('inproc://zeromq.zap.01');
      } catch (err) {
        socket.close();
        if ((err as { code?: string }).code !== 'EADDRINUSE' || attempt >= 100) throw err;
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      const gate = new ZapGate(socket);
      ZapGate.bound = gate;
      void gate.serve();
      return gate;
    }
  }

  /** The process's gate if one is open. */
  static running(): ZapGate | undefined {
    return ZapGate.bound;
  }

  /** Forgets `domain`; the last release closes the gate. */
  release(domain: string): void {
    this.domains.delete(domain);
    if (--this.users <= 0) this.close();
  }

  /** Closes the gate now, whoever still uses it (tests; a process that is done). */
  close(): void {
    if (!this.socket.closed) this.socket.close();
    if (ZapGate.bound === this) {
      ZapGate.bound = undefined;
      ZapGate.current = undefined;
    }
  }

  private count(why: string): string {
    this.refused.count(why);
    return why;
  }

  /** The verdict on one request: undefined admits, a string is the refusal's reason. */
  private judge(domain: string, mechanism: string, key: Buffer | undefined): string | undefined {
    const who = this.domains.get(domain);
    if (who === undefined) return this.count(`no admission list for ZAP domain '${domain}'`);
    if (mechanism !== 'CURVE' || key === undefined || key.length !== 32) return this.count(`mechanism ${mechanism}, expected CURVE`);
    // Counted by the domain's kind ('peer@<endpoint>' as 'peer'): reasons stay few however many sockets there are.
    if (!who.has(z85Encode(key))) return this.count(`unknown key on '${domain.split('@')[0]}'`);
    return undefined;
  }

  /** RFC 27: [envelope…, '', version, request id, domain, address, identity, mechanism, credentials…] → [envelope…, '', version, request id, status, text, user id, metadata]. */
  private async serve(): Promise<void> {
    try {
      for await (const frames of this.socket) {
        const f = frames as Buffer[];
        const empty = f.findIndex((b) => b.length === 0);
        if (empty < 0 || f.length < empty + 8) continue; // not a ZAP request: libzmq never sends one
        const [version, requestId, domain, , , mechanism, key] = f.slice(empty + 1);
        const refusal = this.judge(domain!.toString(), mechanism!.toString(), key);
        await this.socket.send([...f.slice(0, empty + 1), version!, requestId!,
          Buffer.from(refusal === undefined ? '200' : '400'), Buffer.from(refusal ?? 'OK'), Buffer.from(refusal === undefined ? z85Encode(key!) : ''), Buffer.alloc(0)]);
      }
    } catch {
      // closed with the process's sockets
    }
  }
}

/** Z85 (ZeroMQ RFC 32) of a 32-byte key: what zmq.curveKeyPair() returns, so keys compare as strings. */
const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';
export function z85Encode(bytes: Buffer): string {
  let out = '';
  for (let i = 0; i < bytes.length; i += 4) {
    let value = bytes.readUInt32BE(i);
    const chunk: string[] = [];
    for (let j = 0; j < 5; j++) {
      chunk.unshift(Z85[value % 85]!);
      value = Math.floor(value / 85);
    }
    out += chunk.join('');
  }
  return out;
}

export function z85Decode(text: string): Buffer {
  const out = Buffer.alloc((text.length / 5) * 4);
  for (let i = 0; i < text.length; i += 5) {
    let value = 0;
    for (let j = 0; j < 5; j++) value = value * 85 + Z85.indexOf(text[i + j]!);
    out.writeUInt32BE(value, (i / 5) * 4);
  }
  return out;
}

/** Curve25519 keys as node:crypto's X25519 (the same curve, raw 32-byte keys). */
const privateKey = (k: KeyPair) => createPrivateKey({ key: { kty: 'OKP', crv: 'X25519', x: z85Decode(k.publicKey).toString('base64url'), d: z85Decode(k.secretKey).toString('base64url') }, format: 'jwk' });
const publicKey = (k: string) => createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: z85Decode(k).toString('base64url') }, format: 'jwk' });

/**
 * Worker r's proof that it holds worker r's secret key: HMAC-SHA256, keyed
 * by the X25519 secret shared with the coordinator, of its place `w<r>`.
 * Both sides compute the shared secret (DH(worker secret, coordinator
 * public) = DH(coordinator secret, worker public)); no one else can. The
 * hello travels inside CURVE, so the proof is never seen on the wire. With
 * the launcher's fresh keys it is good for one run only; a key file from
 * `splitnet keys` makes the same proofs for every run that uses it, and
 * every process that can read the file holds every key (srun's tasks do):
 * there it protects against strangers, not against the file's readers.
 * 64 hex characters.
 */
export function helloProof(own: KeyPair, coordinatorPublic: string, rank: number): string {
  const shared = diffieHellman({ privateKey: privateKey(own), publicKey: publicKey(coordinatorPublic) });
  return createHmac('sha256', shared).update(`splitnet hello w${rank}`).digest('hex');
}

/** Whether `proof` is worker `rank`'s, by the coordinator's key pair and that worker's public key. */
export function checkHelloProof(coordinator: KeyPair, workerPublic: string, rank: number, proof: string): boolean {
  const want = Buffer.from(helloProof(coordinator, workerPublic, rank), 'hex');
  const got = Buffer.from(proof, 'hex');
  return got.length === want.length && timingSafeEqual(got, want);
}
