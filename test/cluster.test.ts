/**
 * The cluster runtime with real worker processes on loopback: a clean run
 * leaves nothing behind; a crash, a silent worker, a malformed or outdated
 * message each stop everything with the worker's name and the reason.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as zmq from 'zeromq';
import { afterEach, describe, expect, it } from 'vitest';
import { ClusterError } from '../src/run/coordinator.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train, type TrainOptions } from '../src/run/loop.js';
import { writeRunKeys } from '../src/wire/key-file.js';
import { PROTOCOL_VERSION } from '../src/wire/protocol.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const CONFIG: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
  trainSamples: 48, testSamples: 16, checkpointEvery: 0,
};
const quiet = { log: () => {}, progress: false } as const;
const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-worker.mjs', import.meta.url));

const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

async function run(extra: Partial<TrainOptions>, clusterOverrides: Record<string, unknown> = {}) {
  const cluster = await localCluster(2, clusterOverrides);
  let pids: number[] = [];
  const onEvent = extra.onEvent;
  const started = Date.now();
  const result = train({
    config: CONFIG, outDir: tempDir(), mode: 'data', cluster, workers: cluster.workers, ...quiet, ...extra,
    onEvent: spawned.watch((e) => { if (e.type === 'started') pids = e.pids; onEvent?.(e); }),
  });
  return { result, pids: () => pids, cluster, started };
}

describe('cluster runtime', () => {
  it('launches, trains and shuts down cleanly: every worker exits, the ports are free again', async () => {
    const { result, pids, cluster } = await run({});
    const r = await result;
    expect(r.finished).toBe(true);
    expect(r.mode).toBe('data');
    expect(r.world).toBe(2);
    expect(pids()).toHaveLength(2);
    for (const pid of pids()) expect(alive(pid), `worker pid ${pid}`).toBe(false);
    const probe = new zmq.Pull();
    await probe.bind(`tcp://127.0.0.1:${cluster.coordinator.port}`); // would throw EADDRINUSE
    probe.close();
  });

  it('a worker that dies mid-run stops everything, naming it', async () => {
    let victim = -1;
    const { result, pids } = await run({
      onEvent: (e) => {
        if (e.type === 'started') victim = e.pids[1]!;
        if (e.type === 'step' && e.globalStep === 2) process.kill(victim, 'SIGKILL');
      },
    });
    const err = await result.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClusterError);
    // Either the coordinator sees the exit first, or worker 0 sees its ring predecessor go and says so.
    expect((err as Error).message).toMatch(new RegExp(`worker 1 \\(127\\.0\\.0\\.1, cpu, pid ${victim}\\) exited on SIGKILL at epoch 0 step 2|worker 0 .* failed: worker 1 disconnected`));
    for (const pid of pids()) expect(alive(pid)).toBe(false);
  });

  it('a worker that never registers is noticed within the register timeout and killed', async () => {
    const { result, pids, started } = await run(
      { workerCommand: (rank) => (rank === 1 ? { command: process.execPath, args: [HOSTILE, 'hang'] } : undefined) },
      { timeouts: { registerMs: 3_000, stepMs: 30_000, shutdownGraceMs: 1_000 } },
    );
    await expect(result).rejects.toThrow(/worker 1 \(127\.0\.0\.1, cpu, pid \d+\): registration \(hello\) within 3 s: nothing within 3\.0 s/);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(pids()).toHaveLength(2);
    for (const pid of pids()) expect(alive(pid)).toBe(false);
  });

  it('a malformed message from a worker stops the run with the reason', async () => {
    const { result, pids } = await run({ workerCommand: (rank) => (rank === 1 ? { command: process.execPath, args: [HOSTILE, 'garbage'] } : undefined) });
    await expect(result).rejects.toThrow(/worker 1 \(127\.0\.0\.1, cpu, pid \d+\) sent a malformed message: header frame is not msgpack/);
    expect(pids()).toHaveLength(2);
    for (const pid of pids()) expect(alive(pid)).toBe(false);
  });

  it('a message of another protocol version is refused with the versions', async () => {
    const { result } = await run({ workerCommand: (rank) => (rank === 0 ? { command: process.execPath, args: [HOSTILE, 'old'] } : undefined) });
    await expect(result).rejects.toThrow(new RegExp(`worker 0 .* sent a malformed message: protocol version 99, expected ${PROTOCOL_VERSION}$`));
  });

  it('strangers are refused in the handshake, counted by reason, and the run goes on (CURVE)', async () => {
    const lines: string[] = [];
    // The run's keys from a key file, so this test knows the coordinator's public key as a stranger might.
    const keyFile = join(tempDir(), 'keys.json');
    const runKeys = writeRunKeys(keyFile, 2);
    const { result, cluster } = await run({
      log: (l) => lines.push(l),
      onEvent: (e) => {
        if (e.type !== 'started') return;
        // One client without CURVE, one with a key of its own: neither gets past the handshake.
        const plain = new zmq.Dealer({ routingId: 'w0', linger: 0 });
        const own = zmq.curveKeyPair();
        const unknown = new zmq.Dealer({ routingId: 'w1', linger: 0, curveServerKey: runKeys.coordinator.publicKey, curvePublicKey: own.publicKey, curveSecretKey: own.secretKey });
        for (const s of [plain, unknown]) {
          s.connect(`tcp://127.0.0.1:${cluster.coordinator.port}`);
          void s.send([Buffer.from([0xc1])]).catch(() => {});
          setTimeout(() => s.close(), 500);
        }
      },
    }, { keys: keyFile });
    const r = await result;
    expect(r.finished).toBe(true);
    expect(r.losses).toHaveLength(CONFIG.trainSamples / CONFIG.batch);
    const refused = lines.find((l) => l.includes('refused from strangers'));
    // Each client retries while it is open: counted once per attempt.
    expect(refused).toMatch(/\d+× coordinator: handshake failed: .*\(not ZMTP, or not CURVE\)/);
    expect(refused).toMatch(/\d+× coordinator: unknown key on 'coordinator'/);
  });

  it('without CURVE (loopback, "security": "none") a message under an unknown id is dropped, counted, and the run goes on', async () => {
    const lines: string[] = [];
    const { result, cluster } = await run({
      log: (l) => lines.push(l),
      onEvent: (e) => {
        if (e.type !== 'started') return;
        const intruder = new zmq.Dealer({ routingId: 'intruder', linger: 0 });
        intruder.connect(`tcp://127.0.0.1:${cluster.coordinator.port}`);
        void intruder.send([Buffer.from([0xc1])]).finally(() => setTimeout(() => intruder.close(), 200));
      },
    }, { security: 'none' });
    const r = await result;
    expect(lines.find((l) => l.includes('refused from strangers'))).toContain('1× coordinator: message from unknown peer id (not w0..w1)');
    expect(r.finished).toBe(true);
    expect(r.losses).toHaveLength(CONFIG.trainSamples / CONFIG.batch);
    expect(r.epochs).toHaveLength(1);
  });
});
