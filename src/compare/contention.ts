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

/** Starts one `splitnet profile` child; resolves when it is warmed up, with a function that runs its timed step. */
function startProfiler(cfg: TrainConfig, batch: number): Promise<{ go: () => Promise<ProfileReport>; child: ChildProcess }> {
  const { command, args } = workerCommand();
  const child = spawn(command, [...args, 'profile', '--config-json', JSON.stringify(cfg), '--batch', String(batch)], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines = createInterface({ input: child.stdout! });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-2000); });
  const next = () => new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`splitnet profile: no answer in ${CHILD_TIMEOUT_MS / 1000} s`)), CHILD_TIMEOUT_MS);
    const done = (err?: Error, line?: string) => { clearTimeout(timer); lines.off('line', onLine); child.off('exit', onExit); if (err) reject(err); else resolve(line!); };
    const onLine = (line: string) => done(undefined, line);
    const onExit = (code: number | null) => done(new Error(`splitnet profile exited with ${code}: ${stderr.trim().split('\n').pop() ?? ''}`));
    lines.on('line', onLine);
    child.once('exit', onExit);
  });
  return next().then((ready) => {
    if (ready !== 'ready') throw new Error(`splitnet profile: expected 'ready', got '${ready}'`);
    return {
      child,
      go: async () => {
        child.stdin!.write('go\n');
        return JSON.parse(await next()) as ProfileReport;
      },
    };
  });
}

/** Mean compute of one step's layers over `n` processes started together, ms. */
async function concurrentComputeMs(cfg: TrainConfig, n: number, batch: number): Promise<number> {
  const started: ChildProcess[] = [];
  try {
    const profilers = await Promise.all(Array.from({ length: n }, async () => {
      const p = await startProfiler(cfg, batch);
      started.push(p.child);
      return p;
    }));
    const reports = await Promise.all(profilers.map((p) => p.go()));
    return reports.reduce((s, r) => s + r.computeMs, 0) / n;
  } finally {
    for (const c of started) if (c.exitCode === null) c.kill('SIGKILL');
  }
}

/**
 * Slowdown of compute with `n` processes computing at once, against one
 * alone, for each n in `sizes` (1 is 1 by definition). Each process runs
 * its share of the batch, as a data-parallel worker does.
 */
export async function measureContention(cfg: TrainConfig, sizes: number[]): Promise<Map<number, number>> {
  const out = new Map<number, number>([[1, 1]]);
  for (const n of sizes.filter((s) => s > 1)) {
    const batch = Math.max(1, Math.floor(cfg.batch / n));
    const alone = await concurrentComputeMs(cfg, 1, batch);
    const together = await concurrentComputeMs(cfg, n, batch);
    out.set(n, Math.max(1, together / alone));
  }
  return out;
}
