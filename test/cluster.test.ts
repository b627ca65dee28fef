/**
 * The cluster runtime with real worker processes on loopback: a clean run
 * leaves nothing behind; a crash, a silent worker, a malformed or outdated
 * message each stop everything with the worker's name and the reason.
 */
import { fileURLToPath } from 'node:url';
import * as zmq from 'zeromq';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ClusterError } from '../src/run/coordinator.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train, type TrainOptions } from '../src/run/loop.js';
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
    await expect(result).rejects.toThrow(/worker 0 .* sent a malformed message: protocol version 99, expected 2/);
  });

  it('an unknown peer is refused and the run goes on', async () => {
    // The coordinator says why it refused on stderr: watch what this process writes there (still written through).
    const stderr = vi.spyOn(process.stderr, 'write');
    try {
      const { result, cluster } = await run({
        onEvent: (e) => {
          if (e.type !== 'started') return;
          const intruder = new zmq.Dealer({ routingId: 'intruder', linger: 0 });
          intruder.connect(`tcp://127.0.0.1:${cluster.coordinator.port}`);
          void intruder.send([Buffer.from([0xc1])]).finally(() => setTimeout(() => intruder.close(), 200));
        },
      });
      const r = await result;
      const written = stderr.mock.calls.map(([chunk]) => (typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString())).join('');
      expect(written).toContain("coordinator: refused a message from unknown peer 'intruder': not a worker of this run (w0..w1)\n");
      // ... and the run still finished: every step, the evaluation
      expect(r.finished).toBe(true);
      expect(r.losses).toHaveLength(CONFIG.trainSamples / CONFIG.batch);
      expect(r.epochs).toHaveLength(1);
    } finally {
      stderr.mockRestore();
    }
  });
});
