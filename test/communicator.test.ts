/**
 * One communicator per worker, in this process over loopback sockets: a ring
 * all-reduce and keyed exchanges travel at once over one set of sockets, and
 * a message from a worker the communicator does not exchange with, or a ring
 * piece from anyone but the ring's predecessor, is refused (plain: dropped
 * and counted; CURVE: a key outside talksTo is refused in the handshake).
 */
import { join } from 'node:path';
import * as zmq from 'zeromq';
import { afterEach, describe, expect, it } from 'vitest';
import { Communicator, type CommunicatorOptions } from '../src/wire/communicator.js';
import { ZapGate } from '../src/wire/curve.js';
import { freePorts } from '../src/wire/free-ports.js';
import { writeRunKeys } from '../src/wire/key-file.js';
import { encodeToPeer } from '../src/wire/protocol.js';
import { pseudoRandom } from './helpers/backends.js';
import { tempDir } from './helpers/idx-files.js';
import { allReduce } from './helpers/ring.js';

const COMMON = { heartbeat: { intervalMs: 500, timeoutMs: 5_000 }, maxMessageBytes: 2 ** 24, waitMs: 5_000 };
const open: Array<{ close(): void }> = [];
afterEach(() => {
  for (const s of open.splice(0).reverse()) s.close();
  ZapGate.running()?.close();
});

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `world` communicators on loopback, worker r exchanging with talksTo[r]; with `keyed`, CURVE keys from a fresh key file. */
async function communicators(world: number, talksTo: number[][], keyed = false, extra: Partial<CommunicatorOptions> = {}) {
  const peers = (await freePorts(world)).map((p) => `tcp://127.0.0.1:${p}`);
  const keys = keyed ? writeRunKeys(join(tempDir(), 'keys.json'), world) : undefined;
  const comms: Communicator[] = [];
  for (let rank = 0; rank < world; rank++) {
    const c = await Communicator.open({
      rank, world, peers, talksTo: talksTo[rank]!, ...COMMON, ...extra,
      ...(keys ? { keys: { own: keys.workers[rank]!, workers: keys.workers.map((k) => k.publicKey) } } : {}),
    });
    open.push(c);
    comms.push(c);
  }
  return { comms, peers, keys };
}

describe('one communicator: a ring and keyed exchanges over one set of sockets', () => {
  for (const keyed of [false, true]) {
    it(`3 workers${keyed ? ' with CURVE' : ''}: a ring over [0, 1, 2] sums while 0 and 2 exchange keyed tensors both ways`, async () => {
      // 0 → 1 → 2 → 0 is the ring; 0 and 2 are ring neighbours too, so their keyed exchanges share the ring's sockets.
      const { comms } = await communicators(3, [[1, 2], [0, 2], [0, 1]], keyed);
      const rings = comms.map((c) => c.ring([0, 1, 2]));
      const sizes = [5, 1000, 3];
      rings.forEach((ring) => { ring.configure(sizes); ring.begin(0); });
      const data = comms.map((_, r) => sizes.map((s, b) => pseudoRandom(s, 10 * r + b + 1)));
      const expected = sizes.map((s, b) => Float32Array.from({ length: s }, (_, i) => (data[0]![b]![i]! + data[1]![b]![i]! + data[2]![b]![i]!) / 3));
      const reduced = data.map((d) => d.map((x) => x.slice()));
      const payloads = [0, 1, 2].map((i) => pseudoRandom(17, 100 + i));
      const [c0, , c2] = comms as [Communicator, Communicator, Communicator];
      // Interleaved: the keyed sends go out while the ring's pieces are in flight, and are received in another order.
      const ringDone = Promise.all(rings.flatMap((ring, r) => sizes.map((_, b) => allReduce(ring, b, reduced[r]![b]!))));
      payloads.forEach((p, i) => c0.send(2, `0/${i}/fc6/fwd`, p));
      c2.send(0, 'state0/0/conv1.weight/fwd', payloads[1]!);
      const got2 = await Promise.all([2, 0, 1].map((i) => c2.receive(0, `0/${i}/fc6/fwd`, 17)));
      const got0 = await c0.receive(2, 'state0/0/conv1.weight/fwd', 17);
      await ringDone;
      expect(got2.map((g) => [...g])).toEqual([2, 0, 1].map((i) => [...payloads[i]!]));
      expect([...got0]).toEqual([...payloads[1]!]);
      for (let b = 0; b < sizes.length; b++) {
        for (let r = 0; r < 3; r++) {
          expect(Array.from(reduced[r]![b]!), `worker ${r} bucket ${b}`).toEqual(Array.from(reduced[0]![b]!));
          expect(Math.max(...reduced[r]![b]!.map((v, i) => Math.abs(v - expected[b]![i]!))), `worker ${r} bucket ${b}`).toBeLessThan(1e-6);
        }
      }
      // bytesSent counts both kinds; the ring's own count is its pieces only
      expect(c0.bytesSent).toBe(rings[0]!.bytesSent + 3 * 17 * 4);
      expect(comms[1]!.bytesSent).toBe(rings[1]!.bytesSent);
      for (const c of comms) expect([...c.dropped]).toEqual([]);
    });
  }

  it('a ring over a group of 1 sends nothing; a group without this worker, or a second ring, is refused', async () => {
    const { comms } = await communicators(2, [[], []]);
    const ring = comms[0]!.ring([0]);
    ring.configure([4]);
    ring.begin(0);
    const data = Float32Array.of(1, 2, 3, 4);
    await allReduce(ring, 0, data);
    expect([...data]).toEqual([1, 2, 3, 4]);
    expect(comms[0]!.bytesSent).toBe(0);
    expect(() => comms[0]!.ring([0])).toThrow("a second ring on worker 0's communicator");
    expect(() => comms[1]!.ring([0])).toThrow('a ring over worker 0: expected a group with this worker (1) in it');
    expect(() => comms[1]!.ring([1, 0])).toThrow('a ring over [1, 0]: expected distinct ascending ranks below 2');
    expect(() => comms[1]!.ring([0, 1])).toThrow('a ring over [0, 1] needs worker 0, and worker 1 exchanges with no worker');
  });

  it("a ring's error names the real ranks of its group, not the places", async () => {
    // Worker 3 of a ring over [1, 3]: its predecessor is worker 1; nothing arrives, so the wait names it.
    const { comms } = await communicators(4, [[], [3], [], [1]], false, { waitMs: 200 });
    const ring = comms[3]!.ring([1, 3]);
    ring.configure([4]);
    ring.begin(0);
    await expect(ring.reduceScatter(0, new Float32Array(4))).rejects.toThrow('ring reduce-scatter bucket 0 round 0 from worker 1: nothing within');
  });
});

describe('who a communicator takes messages from', () => {
  it('plain: a message from a worker not in talksTo is dropped and counted, and the real one still arrives', async () => {
    const { comms, peers } = await communicators(2, [[1], [0]]);
    const [a, b] = comms as [Communicator, Communicator];
    const stranger = new zmq.Push({ linger: 0 });
    open.push(stranger);
    stranger.connect(peers[0]!);
    await stranger.send(encodeToPeer({ kind: 'xfer', from: 7, key: '0/0/conv3/fwd' }, [Float32Array.of(666)]));
    await stranger.send(encodeToPeer({ kind: 'xfer', from: 0, key: '0/0/conv3/fwd' }, [Float32Array.of(666)])); // itself
    await pause(300);
    b.send(0, '0/0/conv3/fwd', Float32Array.of(1, 2));
    expect([...(await a.receive(1, '0/0/conv3/fwd', 2))]).toEqual([1, 2]);
    expect(Object.fromEntries(a.dropped)).toEqual({ "a 'xfer' message from worker N: expected one from worker N": 2 });
  });

  it('plain: a ring piece from a worker that is not the ring predecessor, or to a worker in no ring, is dropped and counted', async () => {
    // 3 workers that all talk to each other; the ring is 0 → 1 → 2 → 0, so worker 1 takes ring pieces from 0 only.
    const { comms, peers } = await communicators(3, [[1, 2], [0, 2], [0, 1]]);
    const ring = comms[1]!.ring([0, 1, 2]);
    ring.configure([6]);
    ring.begin(0);
    const piece = (from: number) => encodeToPeer({ kind: 'ring', from, seq: 0, bucket: 0, phase: 'rs', round: 0, chunk: 0, offset: 0 }, [new Float32Array(2)]);
    const [to1, to2] = [1, 2].map((r) => {
      const forger = new zmq.Push({ linger: 0 });
      open.push(forger);
      forger.connect(peers[r]!);
      return forger;
    }) as [zmq.Push, zmq.Push];
    await to1.send(piece(2)); // a neighbour, but the successor
    await to2.send(piece(0)); // worker 2's predecessor is 1; and worker 2 has made no ring
    await pause(300);
    expect(Object.fromEntries(comms[1]!.dropped)).toEqual({ "a 'ring' message from worker N: expected ring pieces from worker N only": 1 });
    expect(Object.fromEntries(comms[2]!.dropped)).toEqual({ "a 'ring' message from worker N: worker N is in no ring": 1 });
  });

  it('CURVE: the key of a worker of the run outside talksTo is refused in the handshake, counted, and its messages never arrive', async () => {
    // Worker 0 exchanges with 1 only; worker 2 holds a key of the run, but not one worker 0 admits.
    const { comms, peers, keys } = await communicators(3, [[1], [0], []], true, { waitMs: 300 });
    const [a, b] = comms as [Communicator, Communicator];
    const other = keys!.workers[2]!;
    const outsider = new zmq.Push({ linger: 0, curveServerKey: keys!.workers[0]!.publicKey, curvePublicKey: other.publicKey, curveSecretKey: other.secretKey });
    open.push(outsider);
    outsider.connect(peers[0]!);
    void outsider.send(encodeToPeer({ kind: 'xfer', from: 1, key: '0/0/fc6/fwd' }, [Float32Array.of(666)])).catch(() => {});
    await pause(300);
    expect(ZapGate.running()!.refused.get("unknown key on 'peer'")).toBeGreaterThanOrEqual(1);
    await expect(a.receive(1, '0/0/fc6/fwd', 1)).rejects.toThrow("'0/0/fc6/fwd' from worker 1: nothing within");
    b.send(0, '0/0/fc7/fwd', Float32Array.of(3));
    expect([...(await a.receive(1, '0/0/fc7/fwd', 1))]).toEqual([3]);
  });

  it('CURVE: a message from an admitted peer that names a worker outside talksTo breaks the communicator, once', async () => {
    const broken: Error[] = [];
    const { comms, peers, keys } = await communicators(3, [[1], [0], []], true, { onBroken: (err) => broken.push(err) });
    const [a] = comms as [Communicator];
    // Worker 1's own key, claiming to be worker 2: only worker 1 itself could send this.
    const own = keys!.workers[1]!;
    const liar = new zmq.Push({ linger: 0, curveServerKey: keys!.workers[0]!.publicKey, curvePublicKey: own.publicKey, curveSecretKey: own.secretKey });
    open.push(liar);
    liar.connect(peers[0]!);
    await liar.send(encodeToPeer({ kind: 'xfer', from: 2, key: '0/0/fc6/fwd' }, [Float32Array.of(1)]));
    await liar.send(encodeToPeer({ kind: 'ring', from: 1, seq: 0, bucket: 0, phase: 'rs', round: 0, chunk: 0, offset: 0 }, [Float32Array.of(1)]));
    await expect(a.receive(1, '0/0/fc6/fwd', 1)).rejects.toThrow("refused a message from a peer: a 'xfer' message from worker 2: expected one from worker 1");
    await pause(100);
    expect(broken.map((e) => e.message)).toEqual(["refused a message from a peer: a 'xfer' message from worker 2: expected one from worker 1"]);
  });

  it('refuses a send to or a receive from a worker outside talksTo, and a place that is not one', async () => {
    const { comms, peers } = await communicators(3, [[1], [0], []]);
    expect(() => comms[0]!.send(2, '0/0/fc6/fwd', Float32Array.of(1))).toThrow("'0/0/fc6/fwd' to worker 2: worker 0 exchanges with worker 1");
    await expect(comms[0]!.receive(2, '0/0/fc6/fwd', 1)).rejects.toThrow("'0/0/fc6/fwd' from worker 2: worker 0 exchanges with worker 1");
    await expect(Communicator.open({ rank: 0, world: 3, peers, talksTo: [0], ...COMMON })).rejects.toThrow('worker 0 talks to 0: expected other ranks of a world of 3');
    await expect(Communicator.open({ rank: 3, world: 3, peers, talksTo: [], ...COMMON })).rejects.toThrow('rank 3 in a world of 3: expected 0 to 2');
    await expect(Communicator.open({ rank: 0, world: 2, peers, talksTo: [], ...COMMON })).rejects.toThrow('3 peer endpoints for a world of 2: expected one per worker');
  });

  it('plain: a duplicate of a key is refused, also one of the next step that arrived before this worker began it', async () => {
    const { comms, peers } = await communicators(2, [[1], [0]]);
    const [a, b] = comms as [Communicator, Communicator];
    const twin = new zmq.Push({ linger: 0 });
    open.push(twin);
    twin.connect(peers[0]!);
    // the faster peer's first message of step 6 arrives while this worker is still in step 5
    b.send(0, '6/0/conv3/fwd', Float32Array.of(1));
    await pause(200);
    a.forgetSeen(6); // step 6 begins here: step 5's keys go, step 6's stay
    await twin.send(encodeToPeer({ kind: 'xfer', from: 1, key: '6/0/conv3/fwd' }, [Float32Array.of(666)]));
    await pause(200);
    expect([...(await a.receive(1, '6/0/conv3/fwd', 1))]).toEqual([1]);
    expect(Object.fromEntries(a.dropped)).toEqual({ '… from worker N arrived twice': 1 });
  });

  it('plain: more unclaimed messages than its bound (the layout\'s, given at open) are dropped and counted', async () => {
    const { comms } = await communicators(2, [[1], [0]], false, { maxUnclaimed: 3 });
    const [a, b] = comms as [Communicator, Communicator];
    for (let i = 0; i < 5; i++) b.send(0, `0/${i}/fc6/fwd`, Float32Array.of(i));
    await pause(300);
    for (let i = 0; i < 3; i++) expect([...(await a.receive(1, `0/${i}/fc6/fwd`, 1))]).toEqual([i]);
    expect(Object.fromEntries(a.dropped)).toEqual({ 'more than N unclaimed messages': 2 });
  });
});
