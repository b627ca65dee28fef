/**
 * Ring all-reduce (Patarasuk & Yuan 2009; Horovod, NCCL) of gradient buckets
 * over direct worker-to-worker sockets among a group of workers: each sends
 * only to its successor in the group and receives only from its predecessor.
 * `rank` and `world` are the place in the group and its size; `ranks` names
 * the workers, by place, for messages (the communicator routes the frames).
 *
 * Contract (as PyTorch DDP's reducer): every worker plans the same buckets in
 * the same order from the model description; a bucket of L floats is split
 * into N chunks; N-1 reduce-scatter rounds leave worker r with the sum of
 * chunk r+1 (`ownedChunk`), N-1 all-gather rounds hand every worker's owned
 * chunk around; each worker sends (N-1)/N × L floats per bucket in each.
 * The two halves are separate calls, so a sharded optimizer (ZeRO stage 1)
 * can update its chunk in between (the average is a reduce-scatter, the
 * owned chunk scaled by 1/N, an all-gather).
 *
 * Messages are tagged with a collective sequence number (`begin(seq)`): every
 * worker runs the same collectives in the same order, one training step or
 * one state gather each.
 *
 * Wire type (`begin(seq, wire)`), the same on every worker for a collective:
 *   fp32  chunks travel as they are, zero-copy.
 *   bf16  chunks travel rounded to bf16 (wire/bf16.ts; half the bytes).
 *         Reduce-scatter: each hop adds the decoded piece into its float32
 *         bucket (accumulation stays float32; a partial sum is rounded once
 *         per hop, N−1 roundings for the last). All-gather: the sender first
 *         rounds the chunk it sends *in its own bucket* to the bf16 values
 *         it sends, so after an all-gather every worker holds the same bits
 *         (chunks forwarded in later rounds arrived as bf16: rounding them
 *         again changes nothing). So all-gather only what may be rounded:
 *         data-parallel.ts gathers each owner's SGD step, never its weights.
 *   The encoded pieces live in two buffers per bucket (reduce-scatter and
 *   all-gather, L bf16 values each, allocated on first use): within one
 *   phase every round sends a different chunk, but for N ≥ 3 a chunk sent in
 *   reduce-scatter is sent again in all-gather while its first frame may
 *   still be queued, so the phases do not share.
 *   A piece of the other type than the collective's is refused.
 */
import type { WireType } from '../config/choices.js';
import { addBf16Into, addInto, fromBf16, roundToBf16InPlace, toBf16, wireTypeOf, type WireArray } from './bf16.js';
import { ProtocolError, type PeerHeader } from './protocol.js';
import { Inbox } from './transport.js';
import { Traffic } from './traffic.js';

export interface BucketParam { name: string; offset: number; size: number }
export interface Bucket { index: number; size: number; params: BucketParam[] }

/** A piece of a chunk as it arrives: its float offset within the chunk, and its values (float32 or bf16 bits). */
interface Piece { offset: number; data: WireArray }

/**
 * Groups parameters, given in the order backward produces their gradients,
 * into buckets of at most `bucketBytes` (a larger parameter gets its own).
 */
export function planBuckets(params: Array<{ name: string; size: number }>, bucketBytes: number): Bucket[] {
  const buckets: Bucket[] = [];
  let current: Bucket | undefined;
  for (const p of params) {
    if (current === undefined || (current.size + p.size) * 4 > bucketBytes && current.size > 0) {
      current = { index: buckets.length, size: 0, params: [] };
      buckets.push(current);
    }
    current.params.push({ name: p.name, offset: current.size, size: p.size });
    current.size += p.size;
  }
  return buckets;
}

const mod = (a: number, n: number) => ((a % n) + n) % n;

/**
 * A chunk travels in pieces of at most this many floats (4 MiB), each applied
 * straight into the bucket as it arrives. Why: a receive buffer larger than
 * glibc's largest mmap threshold (32 MiB) is mapped afresh for every message,
 * and first-touching fresh pages cost ~3 ms per MiB on the VMs measured
 * (~100× touching reused memory): fc7's 67 MB gradient as one chunk cost
 * ~0.3 s a step in page faults alone. Pieces of 4 MiB come from reused heap.
 */
export const PIECE_FLOATS = 2 ** 20;

/** [begin, end) of chunk c of a bucket of `size` floats split in `world` chunks. */
export function chunkRange(size: number, world: number, c: number): [number, number] {
  return [Math.floor((c * size) / world), Math.floor(((c + 1) * size) / world)];
}

/** A ring message as the ring sees it: the communicator adds and checks the sender. */
export type RingHeader = Omit<PeerHeader<'ring'>, 'from'>;

export type SendFrames = (msg: RingHeader, data: WireArray) => void;

/** The chunk of every bucket that worker `rank` holds summed after a reduce-scatter. */
export const ownedChunk = (rank: number, world: number): number => mod(rank + 1, world);

export class RingAllReduce {
  /** bytes handed to the successor since construction */
  bytesSent = 0;
  /** bytes by bucket and send time, per step (splitnet compare) */
  readonly traffic = new Traffic();
  private readonly mail = new Map<string, Inbox<Piece>>();
  private readonly delivered = new Set<string>();
  private seq = -1;
  /** the current collective's wire type */
  private wire: WireType = 'fp32';
  /** floats per bucket, the same on every worker */
  private sizes: number[] = [];
  /** bf16 send buffers per bucket, [L] each: see the header */
  private readonly encoded = new Map<number, { rs: Uint16Array; ag: Uint16Array }>();

  constructor(
    readonly rank: number,
    readonly world: number,
    private readonly send: SendFrames,
    private readonly waitMs: number,
    /** the workers' ranks, by place in the ring (identity when the group is every worker) */
    private readonly ranks: readonly number[] = Array.from({ length: world }, (_, i) => i),
  ) {
    if (ranks.length !== world) throw new Error(`a ring of ${world} named by ${ranks.length} ranks`);
  }

  /** The bucket plan: floats per bucket, in the fixed order every worker uses. */
  configure(bucketSizes: number[]): void {
    this.sizes = [...bucketSizes];
    this.encoded.clear();
  }

  /**
   * Starts collective `seq`. A faster predecessor may already have sent its
   * first chunks (they wait in the mailbox); anything older is dropped.
   */
  begin(seq: number, wire: WireType = 'fp32'): void {
    this.seq = seq;
    this.wire = wire;
    for (const key of this.mail.keys()) if (Number(key.split('/')[0]) < seq) this.mail.delete(key);
    for (const key of this.delivered) if (Number(key.split('/')[0]) < seq) this.delivered.delete(key);
  }

  private box(key: string): Inbox<Piece> {
    let b = this.mail.get(key);
    if (b === undefined) {
      b = new Inbox<Piece>();
      this.mail.set(key, b);
    }
    return b;
  }

  /** A message from the predecessor (from the socket's receive loop). Throws ProtocolError if unexpected. */
  deliver(msg: RingHeader, data: WireArray): void {
    // The current collective, or the next one: the predecessor may start it before this worker does.
    if (msg.seq !== this.seq && msg.seq !== this.seq + 1) throw new ProtocolError(`ring message for collective ${msg.seq} during collective ${this.seq}`);
    if (msg.bucket >= this.sizes.length) throw new ProtocolError(`ring message for bucket ${msg.bucket}: a step has ${this.sizes.length}`);
    if (msg.round >= this.world - 1) throw new ProtocolError(`ring message for round ${msg.round}: a ring of ${this.world} has ${this.world - 1}`);
    const expectedChunk = msg.phase === 'rs' ? mod(this.rank - msg.round - 1, this.world) : mod(this.rank - msg.round, this.world);
    if (msg.chunk !== expectedChunk) throw new ProtocolError(`ring ${msg.phase} round ${msg.round}: chunk ${msg.chunk}, expected ${expectedChunk}`);
    const [b, e] = chunkRange(this.sizes[msg.bucket]!, this.world, msg.chunk);
    if (msg.offset % PIECE_FLOATS !== 0 || msg.offset >= Math.max(1, e - b)) {
      throw new ProtocolError(`ring chunk ${msg.chunk} of bucket ${msg.bucket}: a piece at offset ${msg.offset} of a ${e - b}-float chunk in pieces of ${PIECE_FLOATS}`);
    }
    const want = Math.min(PIECE_FLOATS, e - b - msg.offset);
    if (data.length !== want) throw new ProtocolError(`ring chunk ${msg.chunk} of bucket ${msg.bucket}: ${data.length} floats at offset ${msg.offset}, expected ${want}`);
    const key = `${msg.seq}/${msg.bucket}/${msg.phase}/${msg.round}`;
    if (this.delivered.has(`${key}@${msg.offset}`)) throw new ProtocolError(`ring message ${key} at offset ${msg.offset} arrived twice`);
    this.delivered.add(`${key}@${msg.offset}`);
    this.box(key).push({ offset: msg.offset, data });
  }

  /** Fails every wait (a peer died, the run is aborting). */
  fail(err: Error): void {
    if (this.failure) return; // the first reason is the one reported
    for (const b of this.mail.values()) b.fail(err);
    this.failure = err;
  }
  private failure: Error | undefined;

  private sendChunk(bucket: number, phase: 'rs' | 'ag', round: number, data: Float32Array): void {
    const chunk = phase === 'rs' ? mod(this.rank - round, this.world) : mod(this.rank + 1 - round, this.world);
    const [b, e] = chunkRange(data.length, this.world, chunk);
    let bits: Uint16Array | undefined;
    if (this.wire === 'bf16') {
      bits = this.encodeBuffer(bucket, data.length)[phase].subarray(b, e);
      // All-gather: what the others will hold, this worker holds too (see the header).
      if (phase === 'ag') roundToBf16InPlace(data, b, e, bits);
      else toBf16(data.subarray(b, e), bits);
    }
    for (let offset = 0; offset < Math.max(1, e - b); offset += PIECE_FLOATS) {
      const end = Math.min(e - b, offset + PIECE_FLOATS);
      const piece = bits !== undefined ? bits.subarray(offset, end) : data.subarray(b + offset, b + end);
      this.send({ kind: 'ring', seq: this.seq, bucket, phase, round, chunk, offset }, piece); // the transport records it in `traffic`
      this.bytesSent += piece.byteLength;
    }
  }

  private encodeBuffer(bucket: number, size: number): { rs: Uint16Array; ag: Uint16Array } {
    let buf = this.encoded.get(bucket);
    if (buf === undefined || buf.rs.length !== size) {
      buf = { rs: new Uint16Array(size), ag: new Uint16Array(size) };
      this.encoded.set(bucket, buf);
    }
    return buf;
  }

  /**
   * Receives chunk `chunk` of a bucket piece by piece; `apply` puts each
   * piece into place (adds it, or copies it) at its float offset in the chunk.
   */
  private async receive(bucket: number, phase: 'rs' | 'ag', round: number, length: number, apply: (offset: number, piece: WireArray) => void): Promise<void> {
    const key = `${this.seq}/${bucket}/${phase}/${round}`;
    const what = `ring ${phase === 'rs' ? 'reduce-scatter' : 'all-gather'} bucket ${bucket} round ${round} from worker ${this.ranks[mod(this.rank - 1, this.world)]}`;
    for (let got = 0; got < Math.max(1, length);) {
      if (this.failure) throw this.failure;
      const { offset, data } = await this.box(key).next(this.waitMs, what);
      if (wireTypeOf(data) !== this.wire) throw new ProtocolError(`${what}: a ${wireTypeOf(data)} piece in a collective sent as ${this.wire}`);
      this.traffic.received(data.byteLength);
      apply(offset, data);
      got += Math.max(1, data.length);
    }
    this.mail.delete(key);
  }

  /**
   * Reduce-scatter of a bucket: the first send goes out before this returns
   * its promise (called from backward, libzmq's I/O thread transmits while
   * backward goes on). Resolves with [begin, end) of the owned chunk, which
   * then holds the sum over all workers. Frames go out zero-copy: nothing may
   * write to a sent chunk until the collective is over everywhere.
   */
  async reduceScatter(bucket: number, data: Float32Array): Promise<[number, number]> {
    const n = this.world;
    for (let round = 0; round < n - 1; round++) {
      this.sendChunk(bucket, 'rs', round, data);
      const [b, e] = chunkRange(data.length, n, mod(this.rank - round - 1, n));
      await this.receive(bucket, 'rs', round, e - b, (offset, piece) => {
        if (piece instanceof Uint16Array) addBf16Into(data, b + offset, piece); // float32 accumulation
        else addInto(data, b + offset, piece);
      });
    }
    return chunkRange(data.length, n, ownedChunk(this.rank, n));
  }

  /**
   * All-gather of a bucket: every worker's owned chunk of `data` goes to all.
   * With bf16 the owned chunk is first rounded in place: `data` ends the
   * same, bit for bit, on every worker.
   */
  async allGather(bucket: number, data: Float32Array): Promise<void> {
    const n = this.world;
    for (let round = 0; round < n - 1; round++) {
      this.sendChunk(bucket, 'ag', round, data);
      const [b, e] = chunkRange(data.length, n, mod(this.rank - round, n));
      await this.receive(bucket, 'ag', round, e - b, (offset, piece) => {
        if (piece instanceof Uint16Array) fromBf16(piece, data.subarray(b + offset, b + offset + piece.length));
        else data.set(piece, b + offset);
      });
    }
  }
}
