/**
 * The fault matrix: a worker SIGKILLed or SIGSTOPped in a phase of a layout
 * (the phases chosen below) fails the run with a ClusterError that names it
 * and the reason, soon after the signal, and leaves no process behind (a
 * stopped worker cannot exit by itself: the coordinator's close() must kill
 * it) and no port taken.
 *
 * The fault lands inside its phase, not near it: test/fixtures/fault-hook.mjs,
 * preloaded into the workers, makes worker 1 send itself the signal at a
 * given command or at its first peer send after it, and writes when and where.
 * Each case prints one line: fault, mode, phase, detection and stop times
 * (ms after the signal) and the message.
 *
 * - detection: the signal to the moment the failure reaches the loop (the
 *   coordinator's close() begins). A SIGKILL is seen through the process exit
 *   or the peer's dropped connection; a SIGSTOP only through ZMTP heartbeats
 *   on the peer's outgoing connection: heartbeat.timeoutMs after the last
 *   pong (plus up to one interval), plus the worker's 1 s grace when the
 *   break comes between commands, plus the report.
 * - stop: the signal to train()'s rejection, once every worker has exited;
 *   for a stopped worker that is an abort nobody reads, shutdownGraceMs for
 *   the exits, SIGTERM (held while stopped), shutdownGraceMs, SIGKILL.
 * After each case every port of the run (the coordinator's and each worker's
 * peer port) binds again.
 *
 * Which phases, per layout. Not every combination: each case costs a run
 * (3-8 s here), so the layouts after data and model cover the exchanges
 * their own code adds, where a fault reaches a peer by another path:
 * - data (2 workers): the step's compute and its ring, the evaluation, the
 *   checkpoint's momentum gather on the ring.
 * - model (2 towers): the step's cross-link exchange, the evaluation's, the
 *   checkpoint's state gather.
 * - hybrid (2 workers): the step's feature all-gather ('<step>/0/fc6/fwd',
 *   the exchange no other layout makes), the same step's conv ring (the
 *   ring sharing one communicator with keyed exchanges: its pieces come
 *   after the head's backward), the checkpoint's gather of the head's units
 *   at worker 0 ('state<n>/<0|1>/<name>/fwd', keyed, after the trunk's ring
 *   gather), and the evaluation (the trunk on every worker, then the head's
 *   exchanges over all workers). Its head's cross links in the step are the
 *   towers' code (model covers it).
 * - the 2 × 2 grid (model, 4 workers, replicas 2): a fault in the ring among
 *   a tower's replicas during the step (worker 1's column ring with worker 3),
 *   the one link a 2-worker run has not: the lost worker has two peers (its
 *   row's other tower, worker 0, and its column's replica, worker 3), and
 *   either may be the one that notices. Its cross links, evaluation and
 *   checkpoint are model's with a row index.
 * A send fault may name the message it waits for (test/fixtures/fault-hook.mjs:
 * '@ring', '@xfer <key>'): hybrid's step sends features before ring pieces.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as zmq from 'zeromq';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Cluster, ClusterError } from '../src/run/coordinator.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const HOOK = pathToFileURL(fileURLToPath(new URL('./fixtures/fault-hook.mjs', import.meta.url))).href;

/** Small heartbeats, so that a stopped worker is noticed in seconds. */
const HEARTBEAT = { intervalMs: 250, timeoutMs: 2_000 };
const GRACE_MS = 500;
/**
 * How much later than heartbeat.timeoutMs a stopped worker may be noticed:
 * up to one heartbeat interval (0.25 s) before libzmq's timeout starts
 * counting, the worker's 1 s grace for a link broken between commands (its
 * peer stopped after it had answered), the report, and slack for a busy
 * event loop on a loaded machine. Measured on 2 cores, load 3-8: 1.8-2.3 s
 * within a command, 2.9-3.2 s between commands, i.e. at most 1.2 s over.
 */
const STOP_MARGIN_MS = 3_000;
/** A killed worker is noticed through its exit or its peer's dropped connection (measured: 40-220 ms). */
const KILL_DETECT_MS = 1_500;
/**
 * close() after a failure: the abort (at most 0.5 s), shutdownGraceMs for the exits, SIGTERM, shutdownGraceMs,
 * SIGKILL, the last stderr lines (at most 0.5 s), and slack for a loaded machine (measured: 1.0-2.1 s in all).
 */
const CLOSE_MS = 2 * GRACE_MS + 500 + 500 + 2_000;
/** The coordinator's deadlines are far away: only heartbeats, exits and reports can end these runs in time. */
const TIMEOUTS = { registerMs: 30_000, stepMs: 60_000, shutdownGraceMs: GRACE_MS };

const BASE: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
  trainSamples: 16, testSamples: 16, checkpointEvery: 1,
};
const CONFIGS = {
  data: BASE, model: { ...BASE, arch: 'original', init: 'xavier-uniform' }, hybrid: BASE,
} satisfies Record<'data' | 'model' | 'hybrid', TrainConfig>;

interface Phase {
  mode: 'data' | 'model' | 'hybrid';
  /** model: replicas of each tower (a grid of replicas × 2 towers); 1 elsewhere */
  replicas?: number;
  phase: string;
  /** where the hook fires (see test/fixtures/fault-hook.mjs) */
  at: string;
  /** what the hook must say it hit */
  where: RegExp;
  /** where the coordinator says the run stood, when the exit names it */
  stood: string;
}

// 2 steps of 8 (globalStep 0, 1), each followed by a checkpoint (checkpointEvery 1), the evaluation, the final checkpoint.
const PHASES: Phase[] = [
  { mode: 'data', phase: 'step (compute)', at: 'during:step:1', where: /^inside 'step 1'/, stood: 'epoch 0 step 1' },
  { mode: 'data', phase: 'all-reduce (ring exchange)', at: 'send:step:1', where: /^before the first peer send of 'step 1'/, stood: 'epoch 0 step 1' },
  { mode: 'data', phase: 'evaluation', at: 'receive:evaluate', where: /^on receipt of 'evaluate'/, stood: 'evaluation of epoch 0' },
  { mode: 'data', phase: 'checkpoint (momentum gather)', at: 'send:getState', where: /^before the first peer send of 'getState'/, stood: 'the checkpoint after epoch 0 step 0' },
  { mode: 'model', phase: 'step exchange', at: 'send:step:1', where: /^before the first peer send of 'step 1'/, stood: 'epoch 0 step 1' },
  { mode: 'model', phase: 'evaluation (cross-link exchange)', at: 'send:evaluate', where: /^before the first peer send of 'evaluate'/, stood: 'evaluation of epoch 0' },
  { mode: 'model', phase: 'checkpoint (state gather)', at: 'receive:getState', where: /^on receipt of 'getState'/, stood: 'the checkpoint after epoch 0 step 0' },
  {
    mode: 'hybrid', phase: 'step exchange (features all-gather)', at: 'send:step:1@xfer 1/0/fc6/fwd',
    where: /^before the first peer send of 'step 1' that is 'xfer 1\/0\/fc6\/fwd…': xfer 1\/0\/fc6\/fwd$/, stood: 'epoch 0 step 1',
  },
  {
    mode: 'hybrid', phase: 'conv all-reduce (ring exchange)', at: 'send:step:1@ring',
    where: /^before the first peer send of 'step 1' that is 'ring…': ring bucket \d+ rs round 0$/, stood: 'epoch 0 step 1',
  },
  {
    mode: 'hybrid', phase: 'checkpoint (fc units gathered at worker 0)', at: 'send:getState@xfer state',
    where: /^before the first peer send of 'getState' that is 'xfer state…': xfer state0\/0\/fc\S+\/fwd$/, stood: 'the checkpoint after epoch 0 step 0',
  },
  { mode: 'hybrid', phase: 'evaluation (fc exchange)', at: 'send:evaluate', where: /^before the first peer send of 'evaluate'/, stood: 'evaluation of epoch 0' },
  {
    mode: 'model', replicas: 2, phase: 'ring among a tower\'s replicas', at: 'send:step:1@ring',
    where: /^before the first peer send of 'step 1' that is 'ring…': ring bucket \d+ rs round 0$/, stood: 'epoch 0 step 1',
  },
];

const workersOf = (p: Phase): number => (p.mode === 'model' ? 2 * (p.replicas ?? 1) : 2);
const layoutOf = (p: Phase): string =>
  p.mode === 'hybrid' ? 'hybrid' : p.replicas !== undefined ? `${p.replicas} × 2 grid (model-parallel)` : `${p.mode}-parallel`;
/** Those who send to worker 1, and so may notice first that it is gone: its row's towers and its ring's neighbours. */
const peersOf1 = (p: Phase): number[] => (p.mode === 'model' && p.replicas === 2 ? [0, 3] : [0]);

const W = (rank: number) => `worker ${rank} \\(127\\.0\\.0\\.1, cpu, pid \\d+\\)`;
const lost1 = (by: number[]) => `(?:${by.map(W).join('|')}) failed: worker 1 disconnected \\(it exited, or sent no heartbeat\\)`;
/**
 * Worker 1 named as the one that failed, with the reason: a killed one by its exit (and the phase), or by
 * a peer (worker 0; in the grid, 0 or 3), whose link to it broke first; a stopped one by a peer (a stopped
 * process neither exits nor answers).
 */
const namesWorker1 = (signal: 'SIGKILL' | 'SIGSTOP', p: Phase): RegExp =>
  new RegExp(signal === 'SIGKILL' ? `^(${W(1)} exited on SIGKILL at ${p.stood}(: .*)?|${lost1(peersOf1(p))})$` : `^${lost1(peersOf1(p))}$`);

const spawned = new Spawned();
/** When the failure reached the loop: the first call of the coordinator's close(). */
let closeCalledAt: number | undefined;
const realClose = Cluster.prototype.close;
vi.spyOn(Cluster.prototype, 'close').mockImplementation(function (this: Cluster) {
  closeCalledAt ??= Date.now();
  return realClose.call(this);
});
beforeEach(() => { closeCalledAt = undefined; });
afterEach(() => { spawned.reap(); });
afterAll(() => { vi.restoreAllMocks(); });

/** Binds `ep` (and closes it again), retrying on EADDRINUSE for up to `ms`; any other failure, or a port still taken then, throws. */
async function bindWithin(ep: string, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    const probe = new zmq.Pull({ linger: 0 });
    try {
      await probe.bind(ep);
      return;
    } catch (err) {
      if ((err as { code?: string }).code !== 'EADDRINUSE' || Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 20));
    } finally {
      probe.close();
    }
  }
}

describe('fault matrix: a worker killed or stopped in any phase stops the run, names it, and leaves nothing running', () => {
  for (const signal of ['SIGKILL', 'SIGSTOP'] as const) {
    for (const p of PHASES) {
      it(`${signal} during ${layoutOf(p)} ${p.phase}`, async () => {
        const cluster = await localCluster(workersOf(p), { heartbeat: HEARTBEAT, timeouts: TIMEOUTS });
        const mark = join(tempDir(), 'fault.json');
        let pids: number[] = [];
        const err = await train({
          config: CONFIGS[p.mode], outDir: tempDir(), mode: p.mode, cluster, workers: cluster.workers, log: () => {}, progress: false,
          ...(p.replicas !== undefined ? { replicas: p.replicas } : {}),
          workerEnv: {
            NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${HOOK}`.trim(),
            FAULT_RANK: '1', FAULT_AT: p.at, FAULT_SIGNAL: signal, FAULT_MARK: mark,
          },
          onEvent: spawned.watch((e) => { if (e.type === 'started') pids = e.pids; }),
        }).then(() => new Error('the run finished: the fault never fired'), (e: unknown) => e);
        const rejectedAt = Date.now();
        expect(existsSync(mark), `the hook never fired (${p.at}); the run ended with: ${String(err)}`).toBe(true);
        const fault = JSON.parse(readFileSync(mark, 'utf8')) as { t: number; where: string; pid: number };
        expect(fault.where).toMatch(p.where);
        expect(fault.pid).toBe(pids[1]);
        const detectMs = closeCalledAt! - fault.t;
        const stopMs = rejectedAt - fault.t;
        const message = (err as Error).message;
        console.log(`fault-matrix: ${signal} | ${layoutOf(p)} | ${p.phase} | ${fault.where} | detected ${detectMs} ms | stopped ${stopMs} ms | ${message}`);
        expect(err).toBeInstanceOf(ClusterError);
        expect(message).toMatch(namesWorker1(signal, p));
        expect(detectMs).toBeLessThan(signal === 'SIGKILL' ? KILL_DETECT_MS : HEARTBEAT.timeoutMs + STOP_MARGIN_MS);
        expect(stopMs - detectMs).toBeLessThan(CLOSE_MS);
        expect(pids).toHaveLength(workersOf(p));
        expect(pids.filter(alive), 'workers still running after the run failed').toEqual([]);
        // Every port of the run binds again (see bindWithin for the 1 s a closing socket may take).
        for (const port of [cluster.coordinator.port, ...cluster.workers.map((w) => w.port)]) await bindWithin(`tcp://127.0.0.1:${port}`, 1_000);
      });
    }
  }

  // The coordinator SIGSTOPped is in test/cluster-process.test.ts: the coordinator must be a process of its own there.

  it('workers that refuse their setup stop everything within seconds, with the reason; the coordinator closes cleanly', async () => {
    const cluster = await localCluster(2, { heartbeat: HEARTBEAT, timeouts: TIMEOUTS });
    const stderr: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array, ...rest: unknown[]) => {
      stderr.push(String(chunk));
      return (write as (c: string | Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
    });
    let pids: number[] = [];
    const started = Date.now();
    try {
      // A model-parallel run on WebGPU, but each worker's device is 'cpu': every worker refuses it at set-up.
      const err = await train({
        config: { ...CONFIGS.model, backend: 'webgpu' }, outDir: tempDir(), mode: 'model', cluster, workers: cluster.workers,
        log: () => {}, progress: false, onEvent: spawned.watch((e) => { if (e.type === 'started') pids = e.pids; }),
      }).then(() => new Error('the run finished'), (e: unknown) => e);
      const stopMs = Date.now() - started;
      const detectMs = closeCalledAt! - started;
      const message = (err as Error).message;
      console.log(`fault-matrix: setup refused | model | setup | detected ${detectMs} ms after start | stopped ${stopMs} ms after start | ${message}`);
      expect(err).toBeInstanceOf(ClusterError);
      expect(message).toMatch(new RegExp(`^(${W(0)}|${W(1)}) failed: backend 'webgpu': this process was given no GPU \\(device 'cpu'\\)`));
      expect(stopMs).toBeLessThan(20_000);
      expect(pids).toHaveLength(2);
      expect(pids.filter(alive)).toEqual([]);
      // The coordinator's socket is closed: its port binds again. libzmq releases a closed socket's port on its
      // reaper thread, a moment after close() (as for the ZAP endpoint, curve.ts): a socket left open would
      // hold it for good, so up to 1 s of EADDRINUSE is a closing socket, not an open one.
      await bindWithin(`tcp://127.0.0.1:${cluster.coordinator.port}`, 1_000);
      // Sends are serialized per socket: the abort never races another send (zeromq.js: 'Socket is busy writing').
      expect(stderr.join('')).not.toMatch(/busy writing/i);
      expect(message).not.toMatch(/busy writing/i);
    } finally {
      spy.mockRestore();
    }
  });
});
