/**
 * A run directory has one writer at a time (the lock), and a run told to
 * stop by SIGTERM (a scheduler, `kill`, the launcher) stops as Ctrl-C does:
 * after the current step, with a checkpoint that --resume continues from.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { readCheckpointState } from '../src/checkpoint/checkpoint.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { LOCK_FILE } from '../src/run/run-lock.js';
import { Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

const TINY: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
  trainSamples: 32, testSamples: 8, checkpointEvery: 0,
};
const quiet = { log: () => {}, progress: false } as const;

interface Run { child: ChildProcess; stdout: () => string; exit: Promise<number | null> }

/** `splitnet train` into `dir` as a real process: 500 steps, far more than any test waits for. */
function startTrain(dir: string): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', '--backend', 'wasm', 'train', '--synthetic', '--width', '0.125',
    '--resolution', '67', '--batch', '8', '--train-samples', '4000', '--out', dir, '--no-progress'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  spawned.add(child.pid!);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stdout: () => out, exit };
}

/** The steps metrics.jsonl holds so far: whole lines only (the run may be writing the next one as this reads). */
function stepsIn(dir: string): Array<{ type: string; globalStep?: number }> {
  const path = join(dir, 'metrics.jsonl');
  const text = existsSync(path) ? readFileSync(path, 'utf8') : '';
  const whole = text.slice(0, text.lastIndexOf('\n') + 1);
  return whole.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { type: string; globalStep?: number }).filter((r) => r.type === 'step');
}

/** Resolves once the run has logged `n` steps to metrics.jsonl. */
async function trainedSteps(run: Run, dir: string, n: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (stepsIn(dir).length < n) {
    if (run.child.exitCode !== null) throw new Error(`the run exited (${run.child.exitCode}) before ${n} steps: ${run.stdout()}`);
    if (Date.now() > deadline) throw new Error(`no ${n} steps in 60 s: ${run.stdout()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('the run lock', () => {
  it("a second train into a directory another process is training is refused, naming the directory and the holder's pid", async () => {
    const dir = tempDir();
    const first = startTrain(dir);
    await trainedSteps(first, dir, 1);
    const lock = readFileSync(join(dir, LOCK_FILE), 'utf8');
    await expect(train({ config: TINY, outDir: dir, ...quiet }))
      .rejects.toThrow(`${dir} is locked by another run: pid ${first.child.pid} on ${hostname()}`);
    expect(readFileSync(join(dir, LOCK_FILE), 'utf8')).toBe(lock); // the holder's lock is untouched
    expect(first.child.exitCode).toBe(null);
  });

  it('a lock held from another host is refused: its pid cannot be checked from here', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ pid: 4242, host: 'elsewhere', startedAt: '2026-01-01T00:00:00.000Z', token: 'x' }));
    await expect(train({ config: TINY, outDir: dir, ...quiet }))
      .rejects.toThrow(`${dir} is locked by another run: pid 4242 on elsewhere (since 2026-01-01T00:00:00.000Z) holds ${join(dir, LOCK_FILE)} (another host`);
  });

  it('a stale lock, whose pid no longer runs on this host, is taken over with a log line', async () => {
    const dir = tempDir();
    const gone = spawnSync('true').pid!; // a process that has exited
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ pid: gone, host: hostname(), startedAt: '2026-01-01T00:00:00.000Z', token: 'x' }));
    const lines: string[] = [];
    const r = await train({ config: TINY, outDir: dir, maxSteps: 1, log: (l) => lines.push(l), progress: false });
    expect(r.position.globalStep).toBe(1);
    expect(lines).toContain(`splitnet: ${dir}: took over the run lock of pid ${gone} on ${hostname()}, which is no longer running`);
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  it('is released when the run ends and when it fails', async () => {
    const dir = tempDir();
    await train({ config: TINY, outDir: dir, maxSteps: 1, ...quiet });
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    const empty = tempDir();
    await expect(train({ config: TINY, outDir: empty, resume: true, ...quiet })).rejects.toThrow(/nothing to resume/);
    expect(existsSync(join(empty, LOCK_FILE))).toBe(false);
  });
});

describe('SIGTERM', () => {
  it('stops `splitnet train` after the current step with a checkpoint and exit code 143, and --resume continues from it', async () => {
    const dir = tempDir();
    const run = startTrain(dir);
    await trainedSteps(run, dir, 3);
    run.child.kill('SIGTERM');
    // 128 + 15, what a shell reports for a process SIGTERM ended: a scheduler or `&&` sees an unfinished run.
    expect(await run.exit, run.stdout()).toBe(143);
    expect(run.stdout()).toContain(`splitnet: stopped by SIGTERM: continue with --resume ${dir}\n`);
    const stopped = readCheckpointState(dir).position;
    expect(stopped.globalStep).toBeGreaterThanOrEqual(3);
    // The checkpoint holds the last step trained: none is lost, none is counted twice.
    expect(stepsIn(dir).at(-1)!.globalStep).toBe(stopped.globalStep);
    expect(run.stdout()).toContain(`stopped by SIGTERM at epoch 0 step ${stopped.step}: checkpoint in ${dir}; continue with --resume ${dir}`);
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    const resumed = await train({ config: TINY, outDir: dir, resume: true, maxSteps: 2, ...quiet });
    expect(resumed.position).toEqual({ epoch: 0, step: stopped.step + 2, globalStep: stopped.globalStep + 2 });
    expect(stepsIn(dir).map((s) => s.globalStep).slice(-3)).toEqual([stopped.globalStep, stopped.globalStep + 1, stopped.globalStep + 2]);
  });
});
