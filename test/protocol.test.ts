import { pack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import {
  decodeToCoordinator, decodeToPeer, decodeToWorker, encodeToCoordinator, encodeToPeer, encodeToWorker, PROTOCOL_VERSION,
} from '../src/wire/protocol.js';

const MAX = 1 << 20;

describe('protocol', () => {
  it('round-trips a header with raw tensor frames, without re-encoding the bytes', () => {
    const t = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const frames = encodeToCoordinator({ kind: 'state', tensors: [{ name: 'w', shape: [2, 3] }] }, [t]);
    expect(frames[1]!.buffer).toBe(t.buffer); // the tensor frame is a view, not a copy
    const d = decodeToCoordinator(frames, MAX);
    expect(d.msg).toEqual({ v: PROTOCOL_VERSION, kind: 'state', tensors: [{ name: 'w', shape: [2, 3] }] });
    expect(Array.from(d.tensors[0]!)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('copies a misaligned tensor frame instead of failing', () => {
    const frames = encodeToPeer({ kind: 'ring', from: 1, seq: 0, bucket: 0, phase: 'rs', round: 0, chunk: 0, offset: 0 }, [Float32Array.from([7, 8])]);
    const shifted = Buffer.alloc(9).subarray(1);
    frames[1]!.copy(shifted);
    expect(Array.from(decodeToPeer([frames[0]!, shifted], MAX).tensors[0]!)).toEqual([7, 8]);
  });

  const header = (o: unknown) => pack(o);
  const refusals: Array<[string, Buffer[], string]> = [
    ['an empty message', [], 'empty message: no header frame'],
    ['a header that is not msgpack', [Buffer.from([0x92, 0x01])], 'header frame is not msgpack (Unexpected end of MessagePack data)'],
    ['a header that is not a map', [header([1, 2])], 'header is an array, expected a map'],
    ['a header that is a string', [header('hello')], 'header is string, expected a map'],
    ['another protocol version', [header({ v: 1, kind: 'shutdown' })], `protocol version 1, expected ${PROTOCOL_VERSION}`],
    ['an unknown kind', [header({ v: PROTOCOL_VERSION, kind: 'reboot' })], "bad 'reboot' message: kind: Invalid discriminator value. Expected 'setup' | 'step' | 'evaluate' | 'load' | 'getState' | 'shutdown' | 'abort'"],
    ['a missing field', [header({ v: PROTOCOL_VERSION, kind: 'step', globalStep: 1 })], "bad 'step' message: epoch: Invalid input: expected number, received undefined"],
    ['an extra field', [header({ v: PROTOCOL_VERSION, kind: 'shutdown', now: true })], "bad 'shutdown' message: (header): unknown key 'now'"],
    ['a tensor frame too many', [header({ v: PROTOCOL_VERSION, kind: 'shutdown' }), Buffer.alloc(4)], "'shutdown' message declares 0 tensor frame(s), carries 1"],
    ['a tensor of the wrong size', [header({ v: PROTOCOL_VERSION, kind: 'load', tensors: [{ name: 'w', shape: [2, 2] }] }), Buffer.alloc(12)],
      "'load' tensor w: [2,2] needs 4 floats, frame has 3"],
    ['a frame that is not whole floats', [header({ v: PROTOCOL_VERSION, kind: 'load', tensors: [{ name: 'w', shape: [1] }] }), Buffer.alloc(5)],
      "'load' tensor w: 5 bytes is not a whole number of float32"],
    ['a setup that carries tensors (resume is a load message)', [header({ v: PROTOCOL_VERSION, kind: 'setup', rank: 0, world: 1, mode: 'data', train: {}, peers: ['x'], bucketBytes: 1, heartbeat: { intervalMs: 1, timeoutMs: 2 }, maxMessageBytes: 1, peerWaitMs: 1, tensors: [] })],
      "bad 'setup' message: (header): unknown key 'tensors'"],
    ['an oversized message', [header({ v: PROTOCOL_VERSION, kind: 'shutdown' }), Buffer.alloc(MAX)], `exceeds the limit of ${MAX}`],
  ];
  for (const [what, frames, reason] of refusals) {
    it(`refuses ${what} with the reason`, () => {
      expect(() => decodeToWorker(frames, MAX)).toThrow(reason);
    });
  }

  it('keeps directions apart: a worker message is not a coordinator command', () => {
    const hello = encodeToCoordinator({ kind: 'hello', rank: 0, pid: 1, host: 'h', device: 'cpu' });
    expect(() => decodeToWorker(hello, MAX)).toThrow("bad 'hello' message: kind: Invalid discriminator value");
    expect(() => decodeToCoordinator(encodeToWorker({ kind: 'shutdown' }), MAX)).toThrow("bad 'shutdown' message");
  });

  it('peer messages: a ring message is tagged by its collective (seq) and its sender, a keyed exchange must name step, micro-batch, link and direction, or a state gather', () => {
    const ring = { v: PROTOCOL_VERSION, kind: 'ring', from: 0, bucket: 0, phase: 'rs', round: 0, chunk: 0, offset: 0, wire: 'fp32', count: 1 };
    const data = Buffer.alloc(4);
    expect(decodeToPeer([header({ ...ring, seq: 3 }), data], MAX).msg).toMatchObject({ kind: 'ring', seq: 3 });
    expect(() => decodeToPeer([header({ ...ring, step: 3 }), data], MAX)).toThrow("bad 'ring' message: seq: Invalid input: expected number, received undefined");
    const { from: _, ...anonymous } = ring;
    expect(() => decodeToPeer([header({ ...anonymous, seq: 3 }), data], MAX)).toThrow("bad 'ring' message: from: Invalid input: expected number, received undefined");
    expect(() => decodeToPeer([header({ ...ring, seq: 3, from: -1 }), data], MAX)).toThrow("bad 'ring' message: from:");
    for (const key of ['7/0/conv3/fwd', '7/1/logits/bwd', 'eval0/3/fc6/fwd', '7/0/tower.1/fwd', 'state2/0/conv1.weight/fwd', 'state0/13/momentum.fc6_w-1/fwd']) {
      expect(decodeToPeer(encodeToPeer({ kind: 'xfer', from: 1, key }, [Float32Array.from([1])]), MAX).msg).toMatchObject({ kind: 'xfer', from: 1, key });
    }
    for (const key of ['7/conv3/fwd', '7/0/conv3/up', 'eval0/3/fc6', '../../etc/passwd', 'state1/0/conv1/bwd', 'state1/0/Conv1/fwd', `state1/0/${'a'.repeat(65)}/fwd`, '7/0/conv_3/fwd']) {
      expect(() => decodeToPeer([header({ v: PROTOCOL_VERSION, kind: 'xfer', from: 1, key, wire: 'fp32', count: 1 }), data], MAX), key)
        .toThrow("bad 'xfer' message: key: expected '<step>/<micro>/<link>/<fwd|bwd>', 'eval<epoch>/<batch>/<link>/fwd' or 'state<n>/<i>/<name>/fwd'");
    }
    expect(() => decodeToPeer([header({ v: PROTOCOL_VERSION, kind: 'xfer', key: '7/0/conv3/fwd', wire: 'fp32', count: 1 }), data], MAX))
      .toThrow("bad 'xfer' message: from: Invalid input: expected number, received undefined");
  });

  describe('peer tensor frames say their wire type and count', () => {
    const ring = { kind: 'ring', from: 0, seq: 0, bucket: 0, phase: 'rs', round: 0, chunk: 0, offset: 0 } as const;

    it('a bf16 tensor [3] travels as 6 bytes of bit patterns, announced as bf16 × 3, and arrives as the same bits', () => {
      const bits = Uint16Array.from([0x3f80, 0xc000, 0x7f80]);
      const frames = encodeToPeer(ring, [bits]);
      expect(frames[1]!.byteLength).toBe(6);
      const d = decodeToPeer(frames, MAX);
      expect(d.msg).toMatchObject({ wire: 'bf16', count: 3 });
      expect(d.tensors[0]).toBeInstanceOf(Uint16Array);
      expect(Array.from(d.tensors[0]!)).toEqual([0x3f80, 0xc000, 0x7f80]);
      expect(decodeToPeer(encodeToPeer(ring, [Float32Array.from([1, 2])]), MAX).msg).toMatchObject({ wire: 'fp32', count: 2 });
    });

    it('copies a misaligned bf16 frame instead of failing', () => {
      const frames = encodeToPeer({ kind: 'xfer', from: 0, key: '0/0/fc6/fwd' }, [Uint16Array.from([0x4040, 0x3f80])]);
      const shifted = Buffer.alloc(5).subarray(1);
      frames[1]!.copy(shifted);
      expect(Array.from(decodeToPeer([frames[0]!, shifted], MAX).tensors[0]!)).toEqual([0x4040, 0x3f80]);
    });

    const bad: Array<[string, object, number, string]> = [
      ['bf16 × 3 in a 12-byte frame (the float32 size)', { wire: 'bf16', count: 3 }, 12, "'ring' tensor: 3 bf16 values need 6 bytes, frame has 12"],
      ['fp32 × 3 in a 6-byte frame (the bf16 size)', { wire: 'fp32', count: 3 }, 6, "'ring' tensor: 3 fp32 values need 12 bytes, frame has 6"],
      ['an unknown wire type', { wire: 'fp16', count: 1 }, 2, "bad 'ring' message: wire: Invalid option: expected one of \"fp32\"|\"bf16\""],
      ['no count', { wire: 'bf16' }, 2, "bad 'ring' message: count: Invalid input: expected number, received undefined"],
    ];
    for (const [what, fields, bytes, reason] of bad) {
      it(`refuses ${what}, naming the type and the size`, () => {
        expect(() => decodeToPeer([header({ v: PROTOCOL_VERSION, ...ring, ...fields }), Buffer.alloc(bytes)], MAX)).toThrow(reason);
      });
    }
  });
});
