/**
 * Starting and stopping worker processes: local children for loopback hosts,
 * the config's ssh command template for the others. Each worker is pinned to
 * its device (CUDA_VISIBLE_DEVICES for a GPU). Stopping is SIGTERM, then
 * SIGKILL after a grace period: nothing is left running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { visibleGpus } from '../backend.js';
import { isLocal, type ClusterConfig, type WorkerSpec } from '../config/cluster.js';

export interface LaunchedWorker {
  rank: number;
  spec: WorkerSpec;
  child: ChildProcess;
  /** resolves when the process has exited */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** the last lines it wrote to stderr, for error messages */
  stderrTail: string[];
  describe(): string;
}

/** How to run `splitnet worker` from this installation: the compiled CLI, or the source under tsx. */
export function workerCommand(): { command: string; args: string[] } {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) {
    return { command: process.execPath, args: ['--import', 'tsx', fileURLToPath(new URL('../cli.ts', import.meta.url))] };
  }
  return { command: process.execPath, args: [fileURLToPath(new URL('../cli.js', import.meta.url))] };
}

/** GPU indices this machine has: $SPLITNET_GPUS (a comma list: a fake device list for tests), else `nvidia-smi -L`. */
export function discoverGpus(): number[] {
  const fake = process.env.SPLITNET_GPUS;
  if (fake !== undefined) return fake.trim() === '' ? [] : fake.split(',').map((s) => Number(s.trim()));
  return visibleGpus().map((line) => Number(/^GPU (\d+)/.exec(line)?.[1] ?? NaN)).filter((n) => Number.isInteger(n));
}

export interface DevicePlan {
  workers: WorkerSpec[];
  /** set when the run must fall back to one process, with the reason */
  single?: string;
  /** set when some configured workers were left out, with the reason */
  note?: string;
}

/**
 * Which configured workers can run: CPU workers always; GPU workers on this
 * host only if the GPU index exists (remote GPUs are the remote host's
 * business, and a GPU named rather than numbered is checked by its worker
 * when it opens the adapter).
 * Fewer than two usable workers means single-process training.
 */
export function planDevices(cluster: ClusterConfig, gpus: number[] = discoverGpus()): DevicePlan {
  const usable = cluster.workers.filter((w) => typeof w.device !== 'number' || !isLocal(w.host) || gpus.includes(w.device));
  const missing = cluster.workers.filter((w) => !usable.includes(w));
  if (usable.length < 2) {
    const why = cluster.workers.length === 1
      ? 'the cluster config has one worker'
      : `${usable.length} of ${cluster.workers.length} configured devices are available` +
        (missing.length > 0 ? ` (no GPU ${missing.map((w) => w.device).join(', ')} here; nvidia-smi lists ${gpus.length === 0 ? 'none' : gpus.join(', ')})` : '');
    return { workers: usable, single: `${why}: training in one process (single mode)` };
  }
  if (missing.length > 0) {
    return { workers: usable, note: `GPU ${missing.map((w) => w.device).join(', ')} not found (nvidia-smi lists ${gpus.join(', ')}): running ${usable.length} workers` };
  }
  return { workers: usable };
}

const shellQuote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** Replaces the worker command for one rank (tests start hung or hostile stand-ins this way). */
export type WorkerCommandOverride = (rank: number) => { command: string; args: string[] } | undefined;

export function startWorker(
  rank: number, spec: WorkerSpec, cluster: ClusterConfig, coordinator: string, extraEnv: NodeJS.ProcessEnv = {}, override?: WorkerCommandOverride,
  stdinLine = '{}',
): LaunchedWorker {
  const { command, args } = workerCommand();
  const workerArgs = ['worker', '--coordinator', coordinator, '--rank', String(rank), '--device', String(spec.device),
    '--register-ms', String(cluster.timeouts.registerMs), '--stdin-secrets'];
  // CUDA_VISIBLE_DEVICES pins tfjs-node-gpu; WebGPU takes the adapter from --device itself.
  const deviceEnv: NodeJS.ProcessEnv = spec.device === 'cpu' ? { CUDA_VISIBLE_DEVICES: '' }
    : typeof spec.device === 'number' ? { CUDA_VISIBLE_DEVICES: String(spec.device), TF_FORCE_GPU_ALLOW_GROWTH: 'true' }
    : {};
  let child: ChildProcess;
  const replaced = override?.(rank);
  if (replaced !== undefined) {
    child = spawn(replaced.command, [...replaced.args, ...workerArgs], { env: { ...process.env, ...extraEnv, ...deviceEnv }, stdio: ['pipe', 'inherit', 'pipe'] });
  } else if (isLocal(spec.host)) {
    child = spawn(command, [...args, ...workerArgs], { env: { ...process.env, ...extraEnv, ...deviceEnv }, stdio: ['pipe', 'inherit', 'pipe'] });
  } else {
    // Remote: `splitnet` must be installed there; the template decides how to get a shell on the host.
    const envPrefix = Object.entries(deviceEnv).map(([k, v]) => `${k}=${shellQuote(v ?? '')}`).join(' ');
    const remote = `${envPrefix} npx splitnet ${workerArgs.map(shellQuote).join(' ')}`;
    const line = cluster.ssh.replace('{host}', shellQuote(spec.host)).replace('{command}', shellQuote(remote));
    child = spawn('sh', ['-c', line], { env: { ...process.env, ...extraEnv }, stdio: ['pipe', 'inherit', 'pipe'] });
  }
  // The secrets line, then the pipe stays open: the worker stops when it closes (this process died).
  child.stdin?.on('error', () => {}); // a worker that already exited: its exit is reported, not this
  child.stdin?.write(`${stdinLine}\n`);
  const stderrTail: string[] = [];
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    process.stderr.write(chunk.split('\n').map((l) => (l ? `[worker ${rank}] ${l}` : l)).join('\n'));
    stderrTail.push(...chunk.split('\n').filter((l) => l.trim() !== ''));
    if (stderrTail.length > 5) stderrTail.splice(0, stderrTail.length - 5);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', () => resolve({ code: -1, signal: null }));
  });
  return {
    rank, spec, child, exited, stderrTail,
    describe: () => `worker ${rank} (${spec.host}, ${spec.device === 'cpu' ? 'cpu' : `GPU ${spec.device}${spec.shared ? ', shared' : ''}`}, pid ${child.pid ?? '?'})`,
  };
}

/** SIGTERM every worker still running, SIGKILL after `graceMs`; resolves when all have exited. */
export async function stopWorkers(workers: LaunchedWorker[], graceMs: number): Promise<void> {
  const running = workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
  for (const w of running) w.child.kill('SIGTERM');
  await Promise.all(running.map(async (w) => {
    const timer = setTimeout(() => w.child.kill('SIGKILL'), graceMs);
    await w.exited;
    clearTimeout(timer);
  }));
}
