/**
 * Every message between coordinator and workers, and between workers, is
 * here. A message is one msgpack header frame (a discriminated union with a
 * protocol version) plus zero or more raw tensor frames (a Float32Array's
 * bytes, never re-encoded; between workers, bf16 bit patterns where the run
 * sends bf16: the header says which, and how many values). Nothing from the
 * network is trusted: `decode*` checks the version, the shape of the header,
 * the frame count and every frame's size against its type, and refuses
 * anything else with a reason.
 */
import { Packr } from 'msgpackr';
import { z } from 'zod';
import { describeIssue } from '../config/describe-issue.js';
import { MAX_WORLD } from '../config/cluster.js';
import { WIRE_TYPES, type WireType } from '../config/choices.js';
import { WIRE_BYTES, wireTypeOf, type WireArray } from './bf16.js';

/**
 * 3: setup.peerWaitMs, hello.proof and bye.refused (the hardened cluster); 4: ring and xfer say their frame's wire type and value count;
 * 5: ring and xfer say their sender's rank (one communicator receives from several workers), xfer keys may name a state gather.
 */
export const PROTOCOL_VERSION = 5;

/** The most micro-batches a step may be split into (each has 9 exchanges in flight at most). */
export const MAX_MICRO_BATCHES = 256;

/** Raised for any message that is malformed or unexpected; the text is the reason. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

const TensorMeta = z.strictObject({ name: z.string().min(1).max(256), shape: z.array(z.number().int().min(0)).max(8) });
export type TensorMeta = z.infer<typeof TensorMeta>;

const v = z.literal(PROTOCOL_VERSION);
const Count = z.number().int().min(0);

// ---- coordinator -> worker --------------------------------------------------

const Setup = z.strictObject({
  v, kind: z.literal('setup'),
  rank: Count, world: z.number().int().min(1).max(MAX_WORLD),
  /** the layout (parallel/layouts.ts) */
  mode: z.enum(['data', 'model', 'hybrid']),
  /** model mode: replicas of each tower (rows of the replicas × towers grid) */
  replicas: z.number().int().min(1).max(MAX_WORLD).default(1),
  /** model mode: split each step's batch into this many pipelined micro-batches */
  microBatches: z.number().int().min(1).max(MAX_MICRO_BATCHES).default(1),
  /** the training config (validated again by the worker with the trainer's schema) */
  train: z.record(z.string(), z.unknown()),
  /** every worker's peer endpoint, by rank; this worker binds peers[rank] */
  peers: z.array(z.string().min(1)),
  bucketBytes: z.number().int().positive(),
  heartbeat: z.strictObject({ intervalMs: z.number().int().positive(), timeoutMs: z.number().int().positive() }),
  maxMessageBytes: z.number().int().positive(),
  /** how long one wait on a peer (a ring piece, a tower's tensor) may last: the cluster's step deadline floor, ms */
  peerWaitMs: z.number().int().positive(),
});
const Step = z.strictObject({
  v, kind: z.literal('step'), globalStep: Count, epoch: Count, step: Count, lr: z.number().positive(),
  /** send a weight checksum back with stepDone */
  checksum: z.boolean(),
  /** start all-reduce buckets from gradient hooks while backward runs */
  overlap: z.boolean(),
});
const Evaluate = z.strictObject({ v, kind: z.literal('evaluate'), epoch: Count });
/** resume: parameters and momentum.<name> buffers in our layout, one frame each */
const Load = z.strictObject({ v, kind: z.literal('load'), tensors: z.array(TensorMeta) });
/** every worker takes part (a replica's momentum is sharded); only those with `reply` send their tensors back */
const GetState = z.strictObject({ v, kind: z.literal('getState'), reply: z.boolean() });
const Shutdown = z.strictObject({ v, kind: z.literal('shutdown') });
const Abort = z.strictObject({ v, kind: z.literal('abort'), reason: z.string() });

export const ToWorker = z.discriminatedUnion('kind', [Setup, Step, Evaluate, Load, GetState, Shutdown, Abort]);
export type ToWorker = z.infer<typeof ToWorker>;

// ---- worker -> coordinator --------------------------------------------------

/** `proof`: with CURVE, that the sender holds worker `rank`'s secret key (wire/curve.ts helloProof) */
const Hello = z.strictObject({
  v, kind: z.literal('hello'), rank: Count, pid: z.number().int().positive(), host: z.string(), device: z.string(),
  proof: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 hex characters').optional(),
});
/** `checksum`: of the weights a worker replicates (absent for a tower of its own: nothing to compare it with) */
const Ready = z.strictObject({ v, kind: z.literal('ready'), checksum: z.string().optional(), backend: z.string(), params: Count });
/** Spans one step may report: enough for every ring piece of AlexNet's buckets, bounded so a report cannot balloon. */
export const MAX_STEP_SPANS = 10_000;
/** Links and buckets one step may report per link (AlexNet has 5 cross links; the default 25 MiB buckets make 10 of the full net). */
export const MAX_STEP_LINKS = 4_096;
const Ms = z.number().finite().min(0);
/** Where a worker's step time went and what it moved (splitnet compare). */
const StepDetail = z.strictObject({
  sendMs: Ms,
  optimizerMs: Ms,
  bytesReceived: Count,
  sentByLink: z.record(z.string().min(1).max(64), Count).refine((r) => Object.keys(r).length <= MAX_STEP_LINKS, { message: `more than ${MAX_STEP_LINKS} links or buckets` }),
  rssBytes: Count,
  backendBytes: Count,
  cpuMs: Ms.optional(),
  spans: z.array(z.strictObject({
    cat: z.enum(['compute', 'send', 'wait', 'optimizer']), name: z.string().min(1).max(200), startMs: z.number().finite(), durMs: Ms,
  })).max(MAX_STEP_SPANS),
});
const StepDone = z.strictObject({
  v, kind: z.literal('stepDone'), globalStep: Count, loss: z.number(), samples: Count,
  /** forward + backward + update, minus waitMs, milliseconds */
  computeMs: z.number().min(0),
  /** waiting on peers: all-reduce time not hidden behind backward, or cross-link waits, milliseconds */
  waitMs: z.number().min(0),
  /** bytes this worker sent to peers during the step */
  bytesSent: Count,
  /** live backend tensors after the step ('tensors' names a message's frames) */
  liveTensors: Count,
  checksum: z.string().optional(),
  detail: StepDetail.optional(),
});
const EvalDone = z.strictObject({ v, kind: z.literal('evalDone'), epoch: Count, correct: Count, lossSum: z.number(), samples: Count });
const State = z.strictObject({ v, kind: z.literal('state'), tensors: z.array(TensorMeta) });
const Loaded = z.strictObject({ v, kind: z.literal('loaded'), checksum: z.string().optional() });
const WorkerError = z.strictObject({ v, kind: z.literal('error'), reason: z.string() });
/** Reasons a refusal may be counted under, at most: a flood of garbage cannot make a report balloon. */
export const MAX_REFUSAL_REASONS = 64;
/** `refused`: messages and connections this worker refused from strangers during the run, by reason. */
const Bye = z.strictObject({
  v, kind: z.literal('bye'),
  refused: z.record(z.string().min(1).max(160), Count).refine((r) => Object.keys(r).length <= MAX_REFUSAL_REASONS, { message: `more than ${MAX_REFUSAL_REASONS} reasons` }).default({}),
});

export const ToCoordinator = z.discriminatedUnion('kind', [Hello, Ready, StepDone, EvalDone, State, Loaded, WorkerError, Bye]);
export type ToCoordinator = z.infer<typeof ToCoordinator>;

// ---- worker -> worker -------------------------------------------------------

/**
 * What a worker-to-worker message says of its one tensor frame: the element
 * type ('fp32': float32, 'bf16': bfloat16 bit patterns, wire/bf16.ts) and the
 * number of values; the frame must be exactly count × 4 or count × 2 bytes.
 * encodeToPeer fills both in from the tensor it sends.
 */
const FrameType = { wire: z.enum(WIRE_TYPES), count: Count };
/** The sender's rank: a worker's one bound socket receives from every worker it exchanges with. */
const Sender = { from: Count };

const Ring = z.strictObject({
  v, kind: z.literal('ring'), ...Sender,
  /** collective sequence number: one per training step or state gather, the same on every worker */
  seq: Count, bucket: Count,
  /** reduce-scatter or all-gather */
  phase: z.enum(['rs', 'ag']), round: Count, chunk: Count,
  /** where this piece starts in the chunk, floats (a chunk travels in pieces of PIECE_FLOATS) */
  offset: Count,
  ...FrameType,
});
/**
 * A keyed exchange: '<globalStep>/<micro-batch>/<link>/<fwd|bwd>' in training,
 * 'eval<epoch>/<batch>/<link>/fwd' in evaluation, 'state<n>/<i>/<name>/fwd'
 * in state gather n. Links are lower-case letters, digits and dots; a state
 * gather's names also '_' and '-', up to 64 characters.
 */
export const XFER_KEY = /^(\d+\/\d+\/[a-z0-9.]+\/(fwd|bwd)|eval\d+\/\d+\/[a-z0-9.]+\/fwd|state\d+\/\d+\/[a-z0-9._-]{1,64}\/fwd)$/;
const Xfer = z.strictObject({
  v, kind: z.literal('xfer'), ...Sender,
  key: z.string().max(128).regex(XFER_KEY, "expected '<step>/<micro>/<link>/<fwd|bwd>', 'eval<epoch>/<batch>/<link>/fwd' or 'state<n>/<i>/<name>/fwd'"),
  ...FrameType,
});
export const ToPeer = z.discriminatedUnion('kind', [Ring, Xfer]);
export type ToPeer = z.infer<typeof ToPeer>;
/** A peer message as code constructs it: encodeToPeer adds the version and the frame's type and count. */
export type PeerHeader<K extends ToPeer['kind']> = Omit<Extract<ToPeer, { kind: K }>, 'v' | 'wire' | 'count'>;

// ---- frames -----------------------------------------------------------------

/** A message without its version: what code constructs; encode adds `v`. */
type Unversioned<T> = T extends unknown ? Omit<T, 'v'> : never;

export interface Decoded<T, A extends WireArray = Float32Array> {
  msg: T;
  /** the raw tensor frames, as float32 or bf16 bit patterns (copied only when a frame is misaligned) */
  tensors: A[];
}

function encode(msg: object, tensors: WireArray[]): Buffer[] {
  const header = packr.pack({ v: PROTOCOL_VERSION, ...msg });
  return [header, ...tensors.map((t) => Buffer.from(t.buffer, t.byteOffset, t.byteLength))];
}

export const encodeToWorker = (msg: Unversioned<ToWorker>, tensors: Float32Array[] = []): Buffer[] => encode(msg, tensors);
export const encodeToCoordinator = (msg: Unversioned<ToCoordinator>, tensors: Float32Array[] = []): Buffer[] => encode(msg, tensors);
/** A peer message and its one tensor (float32, or bf16 bit patterns in a Uint16Array); the header says which and how many values. */
export const encodeToPeer = (msg: PeerHeader<'ring'> | PeerHeader<'xfer'>, [tensor]: [WireArray]): Buffer[] =>
  encode({ ...msg, wire: wireTypeOf(tensor), count: tensor.length }, [tensor]);

function asFloat32(frame: Buffer, what: string): Float32Array {
  if (frame.byteLength % 4 !== 0) throw new ProtocolError(`${what}: ${frame.byteLength} bytes is not a whole number of float32`);
  if (frame.byteOffset % 4 === 0) return new Float32Array(frame.buffer, frame.byteOffset, frame.byteLength / 4);
  const copy = new Float32Array(frame.byteLength / 4);
  new Uint8Array(copy.buffer).set(frame);
  return copy;
}

/** A frame announced as `count` values of `wire`: exactly that many bytes, or refused naming both. */
function asWire(frame: Buffer, wire: WireType, count: number, what: string): WireArray {
  const want = count * WIRE_BYTES[wire];
  if (frame.byteLength !== want) throw new ProtocolError(`${what}: ${count} ${wire} values need ${want} bytes, frame has ${frame.byteLength}`);
  if (wire === 'fp32') return asFloat32(frame, what);
  if (frame.byteOffset % 2 === 0) return new Uint16Array(frame.buffer, frame.byteOffset, count);
  const copy = new Uint16Array(count);
  new Uint8Array(copy.buffer).set(frame);
  return copy;
}

function decode<S extends z.ZodType>(schema: S, frames: Buffer[], maxBytes: number): Decoded<z.infer<S>, WireArray> {
  if (frames.length === 0) throw new ProtocolError('empty message: no header frame');
  const total = frames.reduce((n, f) => n + f.byteLength, 0);
  if (total > maxBytes) throw new ProtocolError(`message of ${total} bytes exceeds the limit of ${maxBytes}`);
  let header: unknown;
  try {
    header = packr.unpack(frames[0]!);
  } catch (err) {
    throw new ProtocolError(`header frame is not msgpack (${(err as Error).message})`);
  }
  if (Array.isArray(header)) throw new ProtocolError('header is an array, expected a map');
  if (typeof header !== 'object' || header === null) throw new ProtocolError(`header is ${header === null ? 'null' : typeof header}, expected a map`);
  const version = (header as { v?: unknown }).v;
  if (version !== PROTOCOL_VERSION) throw new ProtocolError(`protocol version ${String(version)}, expected ${PROTOCOL_VERSION}`);
  const r = schema.safeParse(header);
  if (!r.success) {
    const kind = String((header as { kind?: unknown }).kind);
    throw new ProtocolError(describeIssue(`bad '${kind}' message`, r.error.issues[0]!, '(header)'));
  }
  const msg = r.data as { kind: string; tensors?: TensorMeta[]; wire?: WireType; count?: number };
  const body = frames.slice(1);
  const peer = msg.kind === 'ring' || msg.kind === 'xfer';
  const metas: TensorMeta[] = peer ? [{ name: 'data', shape: [msg.count!] }] : (msg.tensors ?? []);
  if (body.length !== metas.length) {
    throw new ProtocolError(`'${msg.kind}' message declares ${metas.length} tensor frame(s), carries ${body.length}`);
  }
  const tensors = body.map((f, i): WireArray => {
    const meta = metas[i]!;
    if (peer) return asWire(f, msg.wire!, msg.count!, `'${msg.kind}' tensor`);
    const t = asFloat32(f, `'${msg.kind}' tensor ${meta.name}`);
    const want = meta.shape.reduce((a, b) => a * b, 1);
    if (t.length !== want) throw new ProtocolError(`'${msg.kind}' tensor ${meta.name}: [${meta.shape}] needs ${want} floats, frame has ${t.length}`);
    return t;
  });
  return { msg: r.data, tensors };
}

// Between coordinator and workers every tensor is float32 (weights, momentum: checkpoints are exact).
export const decodeToWorker = (frames: Buffer[], maxBytes: number): Decoded<ToWorker> => decode(ToWorker, frames, maxBytes) as Decoded<ToWorker>;
export const decodeToCoordinator = (frames: Buffer[], maxBytes: number): Decoded<ToCoordinator> => decode(ToCoordinator, frames, maxBytes) as Decoded<ToCoordinator>;
export const decodeToPeer = (frames: Buffer[], maxBytes: number): Decoded<ToPeer, WireArray> => decode(ToPeer, frames, maxBytes);
