/**
 * How much slower a step's compute runs when several processes compute at
 * once on this machine. Workers on one host share its cores, caches and
 * memory bandwidth (and a 2-vCPU VM may be two hyperthreads of one core), so
 * a worker's layers run slower than the same layers timed alone; the
 * step-time prediction multiplies the measured layer times by this factor.
 *
 * Measured as it happens in a run: `n` worker-like processes (`splitnet
 * profile`) each time one training step's layers, all starting together on
 * a signal, against one process alone doing the same.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { TrainConfig } from '../config/train.js';
import { workerCommand } from '../run/launcher.js';

/** A child that has not said 'ready' (backend up, one warm-up step done) or its figure by then is stuck. */
const CHILD_TIMEOUT_MS = 120_000;

export interface ProfileReport { computeMs: number }

interface Profiler {
  child: ChildProcess;
  /** resolves when the child has warmed up and said 'ready' */
  ready: Promise<void>;
  /** tells it to go; resolves with its figure */
  go(): Promise<ProfileReport>;
}

/** Spawns one `splitnet profile` child (`device`: the workers' device, so it computes where they do). */
function spawnProfiler(cfg: TrainConfig, batch: number, device: string): Profiler {
  const { command, args } = workerCommand();
  const child = spawn(command, [...args, 'profile', '--config-json', JSON.stringify(cfg), '--batch', String(batch), '--device', device], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines = createInterface({ input: child.stdout! });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-2000); });
  let failed: Error | undefined;
  child.once('error', (err) => { failed = new Error(`splitnet profile could not start: ${err.message}`); });
  const next = () => new Promise<string>((resolve, reject) => {
    if (failed) { reject(failed); return; }
    const done = (err?: Error, line?: string) => {
      clearTimeout(timer); lines.off('line', onLine); child.off('exit', onExit); child.off('error', onError);
      if (err) reject(err); else resolve(line!);
    };
    const timer = setTimeout(() => done(new Error(`splitnet profile: no answer in ${CHILD_TIMEOUT_MS / 1000} s`)), CHILD_TIMEOUT_MS);
    const onLine = (line: string) => done(undefined, line);
    const onExit = (code: number | null) => done(new Error(`splitnet profile exited with ${code}: ${stderr.trim().split('\n').pop() ?? ''}`));
    const onError = (err: Error) => done(new Error(`splitnet profile could not start: ${err.message}`));
    lines.on('line', onLine);
    child.once('exit', onExit);
    child.once('error', onError);
  });
  const ready = next().then((line) => {
    if (line !== 'ready') throw new Error(`splitnet profile: expected 'ready', got '${line}'`);
  });
  ready.catch(() => {}); // awaited by the caller; a failure before then must not go unhandled
  return {
    child, ready,
    go: async () => {
      child.stdin!.end('go\n');
      return JSON.parse(await next()) as ProfileReport;
    },
  };
}

/** Mean compute of one step's layers over `n` processes started together, ms. Every child is gone when this returns. */
async function concurrentComputeMs(cfg: TrainConfig, n: number, batch: number, device: string): Promise<number> {
  const profilers = Array.from({ length: n }, () => spawnProfiler(cfg, batch, device));
  try {
    await Promise.all(profilers.map((p) => p.ready));
    const reports = await Promise.all(profilers.map((p) => p.go()));
    return reports.reduce((s, r) => s + r.computeMs, 0) / n;
  } finally {
    for (const p of profilers) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  }
}

/**
 * Slowdown of compute with `n` processes computing at once, against one
 * alone, for each n in `sizes` (1 is 1 by definition). Each process runs
 * its share of the batch, as a data-parallel worker does.
 */
export async function measureContention(cfg: TrainConfig, sizes: number[], device: string): Promise<Map<number, number>> {
  const out = new Map<number, number>([[1, 1]]);
  for (const n of sizes.filter((s) => s > 1)) {
    const batch = Math.max(1, Math.floor(cfg.batch / n));
    const alone = await concurrentComputeMs(cfg, 1, batch, device);
    const together = await concurrentComputeMs(cfg, n, batch, device);
    out.set(n, Math.max(1, together / alone));
  }
  return out;
}
