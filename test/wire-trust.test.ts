/**
 * Who may talk to a run, as a specification: CURVE keys and the ZAP gate
 * admit only the run's own processes, a worker's hello proves which worker
 * it is, a peer's poisoned payload fails the link with its sender, and
 * without CURVE garbage is dropped and counted rather than fatal.
 */
import { PassThrough } from 'node:stream';
import { chmodSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as zmq from 'zeromq';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { checkSecurity, parseClusterConfig } from '../src/config/cluster.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { readWorkerStdin } from '../src/run/worker-secrets.js';
import { checkHelloProof, helloProof, ZapGate } from '../src/wire/curve.js';
import { readRunKeys, writeRunKeys } from '../src/wire/key-file.js';
import { freePorts } from '../src/wire/free-ports.js';
import { Communicator } from '../src/wire/communicator.js';
import { createPrivateDir, removePrivateDir } from '../src/wire/private-dir.js';
import { endpoint } from '../src/wire/transport.js';
import { encodeToPeer } from '../src/wire/protocol.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-worker.mjs', import.meta.url));
const HB = { intervalMs: 500, timeoutMs: 5_000 };
const open: Array<{ close(): void }> = [];
const spawned = new Spawned();
afterEach(() => {
  for (const s of open.splice(0).reverse()) s.close(); // links before the directory they sit in
  ZapGate.running()?.close();
  spawned.reap();
});

/**
 * Two workers' communicators in this process, each exchanging with the other (as the towers do); with `keyed`, each end's CURVE keys from a fresh key file;
 * over `transport` (ipc: in a fresh private directory, removed after the test).
 */
async function linkPair(keyed: boolean, transport: 'tcp' | 'ipc' = 'tcp') {
  const [pa, pb] = await freePorts(2);
  const keys = keyed ? writeRunKeys(join(tempDir(), 'keys.json'), 2) : undefined;
  const dir = transport === 'ipc' ? createPrivateDir() : undefined;
  if (dir !== undefined) open.push({ close: () => removePrivateDir(dir) });
  const ep = (p: number) => endpoint(transport, '127.0.0.1', p, dir);
  const common = { maxMessageBytes: 2 ** 24, heartbeat: HB, waitMs: 5_000 };
  const peers = [ep(pa!), ep(pb!)];
  const [a, b] = await Promise.all([0, 1].map((rank) => Communicator.open({
    rank, world: 2, peers, talksTo: [1 - rank], ...common,
    ...(keys ? { keys: { own: keys.workers[rank]!, workers: keys.workers.map((k) => k.publicKey) } } : {}),
  }))) as [Communicator, Communicator];
  open.push(a, b);
  return { a, b, keys, portA: pa!, portB: pb!, endpointA: ep(pa!) };
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('between workers: CURVE, and plain over loopback TCP or private ipc', () => {
  it("a communicator admits only its peers' keys: a stranger with the server's public key is refused at ZAP, counted, and the link goes on", async () => {
    const { a, b, keys, portA } = await linkPair(true);
    const own = zmq.curveKeyPair();
    const stranger = new zmq.Push({ linger: 0, curveServerKey: keys!.workers[0]!.publicKey, curvePublicKey: own.publicKey, curveSecretKey: own.secretKey });
    open.push(stranger);
    stranger.connect(`tcp://127.0.0.1:${portA}`);
    void stranger.send(encodeToPeer({ kind: 'xfer', from: 1, key: '0/0/conv3/fwd' }, [new Float32Array([666])])).catch(() => {});
    await pause(300);
    b.send(0, '0/0/conv3/fwd', new Float32Array([1, 2, 3]));
    expect([...(await a.receive(1, '0/0/conv3/fwd', 3))]).toEqual([1, 2, 3]);
    expect(ZapGate.running()!.refused.get("unknown key on 'peer'")).toBeGreaterThanOrEqual(1);
  });

  it('a non-finite activation from the peer fails the receive, naming the peer and the tensor', async () => {
    const { a, b } = await linkPair(true);
    b.send(0, '0/0/fc6/fwd', new Float32Array([1, Number.NaN, 3]));
    await expect(a.receive(1, '0/0/fc6/fwd', 3)).rejects.toThrow(/worker 1 sent a non-finite '0\/0\/fc6\/fwd' \(NaN at float 1\): its training diverged/);
  });

  for (const transport of ['tcp', 'ipc'] as const) {
    it(`without CURVE over ${transport === 'tcp' ? 'loopback TCP' : 'ipc in the private directory (the local default)'}, frames that do not decode are dropped and counted, and the real messages still arrive`, async () => {
      const { a, b, endpointA } = await linkPair(false, transport);
      const garbage = new zmq.Push({ linger: 0 });
      open.push(garbage);
      garbage.connect(endpointA);
      for (let i = 0; i < 20; i++) await garbage.send([Buffer.from([0xc1, i]), Buffer.alloc(3)]);
      await pause(300);
      b.send(0, '0/0/conv3/fwd', new Float32Array([4, 5]));
      expect([...(await a.receive(1, '0/0/conv3/fwd', 2))]).toEqual([4, 5]);
      const total = [...a.dropped.values()].reduce((x, y) => x + y, 0);
      expect(total).toBe(20);
      expect([...a.dropped.keys()][0]).toMatch(/header frame is not msgpack/);
    });
  }

  it('over ipc in the private directory without CURVE, a non-finite activation still fails the receive, naming the peer', async () => {
    const { a, b } = await linkPair(false, 'ipc');
    b.send(0, '0/0/fc6/fwd', new Float32Array([1, Number.POSITIVE_INFINITY]));
    await expect(a.receive(1, '0/0/fc6/fwd', 2)).rejects.toThrow(/worker 1 sent a non-finite '0\/0\/fc6\/fwd' \(Infinity at float 1\)/);
  });

  it('ipc + CURVE, when the config asks for it: a stranger with its own key is refused at ZAP, the link goes on', async () => {
    const { a, b, keys, endpointA } = await linkPair(true, 'ipc');
    const own = zmq.curveKeyPair();
    const stranger = new zmq.Push({ linger: 0, curveServerKey: keys!.workers[0]!.publicKey, curvePublicKey: own.publicKey, curveSecretKey: own.secretKey });
    open.push(stranger);
    stranger.connect(endpointA);
    void stranger.send(encodeToPeer({ kind: 'xfer', from: 1, key: '0/0/conv3/fwd' }, [new Float32Array([666])])).catch(() => {});
    await pause(300);
    b.send(0, '0/0/conv3/fwd', new Float32Array([1, 2, 3]));
    expect([...(await a.receive(1, '0/0/conv3/fwd', 3))]).toEqual([1, 2, 3]);
    expect(ZapGate.running()!.refused.get("unknown key on 'peer'")).toBeGreaterThanOrEqual(1);
  });
});

describe('which security a local transport gets', () => {
  const base = { coordinator: { host: '127.0.0.1', port: 5550 }, workers: [{ host: '127.0.0.1', device: 'cpu', port: 5560 }] };
  it('tcp defaults to CURVE; ipc (a private directory) to none; either may say otherwise', () => {
    expect(parseClusterConfig({ ...base, transport: 'tcp' }).security).toBe('curve');
    expect(parseClusterConfig({ ...base, transport: 'ipc' }).security).toBe('none');
    expect(parseClusterConfig({ ...base, transport: 'ipc', security: 'curve' }).security).toBe('curve');
    expect(parseClusterConfig({ ...base, transport: 'tcp', security: 'none' }).security).toBe('none');
  });

  it('ipc with a host that is not this one is refused, naming it', () => {
    expect(() => parseClusterConfig({ ...base, transport: 'ipc', workers: [{ host: '10.0.0.7', device: 'cpu', port: 5560 }] }, 'cfg'))
      .toThrow('cfg: transport: "ipc" needs every process on this host, and 10.0.0.7 is not local: use "tcp"');
  });
});

describe("a worker's place", () => {
  it("only worker r's secret key makes worker r's hello proof", () => {
    const keys = writeRunKeys(join(tempDir(), 'keys.json'), 2);
    const proof0 = helloProof(keys.workers[0]!, keys.coordinator.publicKey, 0);
    expect(checkHelloProof(keys.coordinator, keys.workers[0]!.publicKey, 0, proof0)).toBe(true);
    // Worker 1 claiming rank 0 with its own key:
    expect(checkHelloProof(keys.coordinator, keys.workers[0]!.publicKey, 0, helloProof(keys.workers[1]!, keys.coordinator.publicKey, 0))).toBe(false);
    // Worker 0's proof is for rank 0 only:
    expect(checkHelloProof(keys.coordinator, keys.workers[1]!.publicKey, 1, proof0)).toBe(false);
  });

  it("a process with another worker's key cannot take w0's place: the run stops before sending it anything", async () => {
    const keyFile = join(tempDir(), 'keys.json');
    const keys = writeRunKeys(keyFile, 2);
    const cluster = await localCluster(2, { keys: keyFile, timeouts: { registerMs: 15_000, stepMs: 30_000, shutdownGraceMs: 1_000 } });
    const stderr: string[] = [];
    // What the impostor was sent: it writes 'GOT <kind>' for every message, and the launcher relays its stderr here.
    const relayed: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array, ...rest: unknown[]) => {
      relayed.push(String(chunk));
      return (write as (c: string | Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
    });
    const config: TrainConfig = { ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1, trainSamples: 16, testSamples: 8 };
    let pids: number[] = [];
    const impostor = { own: keys.workers[1], proof: helloProof(keys.workers[1]!, keys.coordinator.publicKey, 0) };
    const err = await train({
      config, outDir: tempDir(), mode: 'data', cluster, workers: cluster.workers, log: (l) => stderr.push(l), progress: false,
      workerEnv: { SPLITNET_TEST_IMPOSTOR: JSON.stringify(impostor) },
      workerCommand: (rank) => (rank === 0 ? { command: process.execPath, args: [HOSTILE, 'impostor'] } : undefined),
      onEvent: spawned.watch((e) => { if (e.type === 'started') pids = e.pids; }),
    }).catch((e: unknown) => e as Error).finally(() => spy.mockRestore());
    expect(err).toBeInstanceOf(Error);
    const got = relayed.join('').split('\n').filter((l) => l.includes('GOT '));
    expect(got.filter((l) => !/GOT abort$/.test(l)), 'messages the impostor was sent').toEqual([]);
    expect((err as Error).message).toBe("the hello as w0 does not prove it holds worker 0's key: another process of the run claimed its place (it was sent neither the setup nor any weight)");
    expect(stderr.join('\n')).toContain("1× coordinator: a hello as w0 without w0's key");
    for (const pid of pids) expect(alive(pid), `pid ${pid}`).toBe(false);
  });
});

describe('keys and secrets', () => {
  it('a key file is written 600 and refused once others may read it', () => {
    const path = join(tempDir(), 'keys.json');
    const keys = writeRunKeys(path, 3);
    expect(readRunKeys(path, 3)).toEqual(keys);
    expect(() => readRunKeys(path, 4)).toThrow(/keys for 3 workers, the cluster has 4/);
    chmodSync(path, 0o644);
    expect(() => readRunKeys(path, 3)).toThrow(/readable by others \(mode 644\): chmod 600 it/);
  });

  it("a worker reads its keys from the launcher's first stdin line, and learns the launcher is gone when the pipe closes", async () => {
    const keys = writeRunKeys(join(tempDir(), 'keys.json'), 2);
    const pipe = new PassThrough();
    const reading = readWorkerStdin(pipe, 5_000);
    pipe.write(`${JSON.stringify({ keys: { own: keys.workers[1], coordinator: keys.coordinator.publicKey, workers: keys.workers.map((k) => k.publicKey) } })}\n`);
    const got = await reading;
    expect(got.keys?.own).toEqual(keys.workers[1]);
    expect(got.launcherGone.aborted).toBe(false);
    pipe.end();
    await pause(50);
    expect(got.launcherGone.aborted).toBe(true);
  });

  it('a bad secrets line is refused with the reason', async () => {
    const pipe = new PassThrough();
    const reading = readWorkerStdin(pipe, 5_000);
    pipe.write('{"keys": {"own": {"publicKey": "short", "secretKey": "x"}, "coordinator": "y", "workers": []}}\n');
    await expect(reading).rejects.toThrow(/stdin: bad secrets line \(keys\.own\.publicKey: expected a 40-character Z85 CURVE key\)/);
  });

  it('plain TCP beyond loopback is refused unless --insecure', async () => {
    const cluster = await localCluster(2, { security: 'none' });
    const remote = { ...cluster, workers: [cluster.workers[0]!, { ...cluster.workers[1]!, host: '10.0.0.7' }] };
    expect(() => checkSecurity(remote, false)).toThrow(/security: "none" with non-loopback hosts \(10\.0\.0\.7\): anyone on the network could join or poison the run; use "curve", or pass --insecure/);
    expect(() => checkSecurity(remote, true)).not.toThrow();
    expect(() => checkSecurity(cluster, false)).not.toThrow();
    expect(() => checkSecurity({ ...remote, security: 'curve' }, false)).not.toThrow();
  });
});
