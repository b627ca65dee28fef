/**
 * Starting and stopping worker processes: local children for loopback hosts,
 * the config's ssh template for the others (run/ssh.ts), or nothing at all
 * for a worker that Slurm started (run/slurm.ts). Each worker is pinned to
 * its device (CUDA_VISIBLE_DEVICES for a GPU) and gets one line of secrets on
 * its stdin, which stays open for the whole run: a worker whose stdin closes
 * knows its launcher is gone. Stopping is SIGTERM, then SIGKILL after a
 * grace period, to the worker's process group (here, or on its host over
 * ssh): nothing is left running.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { visibleGpus } from '../backend.js';
import { isLocal, type ClusterConfig, type WorkerSpec } from '../config/cluster.js';
import { checkSshTemplate, parseRemoteMarker, remoteKillCommand, remoteWorkerCommand, sshArgv } from './ssh.js';

type Exit = { code: number | null; signal: NodeJS.Signals | null };
/** How long an exited worker's stderr may take to deliver its last lines, ms. */
const STDERR_DRAIN_MS = 500;
type StopSignal = 'SIGTERM' | 'SIGKILL';

export interface LaunchedWorker {
  rank: number;
  spec: WorkerSpec;
  /**
   * The local process: the worker, or the ssh that runs it. For a worker
   * started by someone else (Slurm) a ChildProcess with no process behind it
   * (pid undefined).
   */
  child: ChildProcess;
  /** resolves when the process has exited (for an external worker: when it was told to stop) */
  exited: Promise<Exit>;
  /** the last lines it wrote to stderr, for error messages */
  stderrTail: string[];
  describe(): string;
  /** whether it has not exited yet */
  running(): boolean;
  /** signals its process group (over ssh: the group on its host); resolves once the signal has gone out */
  signal(sig: StopSignal): Promise<void>;
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
 * The ssh template is checked here when a worker is remote: a bad one is
 * an error before anything starts.
 */
export function planDevices(cluster: ClusterConfig, gpus: number[] = discoverGpus()): DevicePlan {
  if (cluster.workers.some((w) => !isLocal(w.host))) checkSshTemplate(cluster.ssh);
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

/** The environment that pins a worker to its device: CUDA_VISIBLE_DEVICES for tfjs-node-gpu (WebGPU takes the adapter from --device itself). */
export function deviceEnv(device: WorkerSpec['device']): Record<string, string> {
  return device === 'cpu' ? { CUDA_VISIBLE_DEVICES: '' }
    : typeof device === 'number' ? { CUDA_VISIBLE_DEVICES: String(device), TF_FORCE_GPU_ALLOW_GROWTH: 'true' }
    : {};
}

/**
 * How rank r's worker is started instead of the usual way: a command to run
 * in its place (tests start hung or hostile stand-ins this way), or
 * `external` when it runs already (srun started it; the text says where).
 */
export type WorkerCommandOverride = (rank: number) => { command: string; args: string[] } | { external: string } | undefined;

/** The flags every worker gets. `--stdin-secrets`: its secrets come as the first line on stdin, never on the command line or in the environment. */
function workerArgs(rank: number, spec: WorkerSpec, cluster: ClusterConfig, coordinator: string): string[] {
  return ['worker', '--coordinator', coordinator, '--rank', String(rank), '--device', String(spec.device),
    '--register-ms', String(cluster.timeouts.registerMs), '--heartbeat', `${cluster.heartbeat.intervalMs}/${cluster.heartbeat.timeoutMs}`, '--stdin-secrets'];
}

/**
 * Starts rank `rank`'s worker. `stdinLine` (one line, JSON: the secrets)
 * goes to its stdin, which then stays open until it exits. Local workers
 * (and the ssh of a remote one) run in a process group of their own, so a
 * Ctrl-C or SIGTERM sent to the launcher's group reaches the coordinator
 * only, which then stops the workers in order (after its checkpoint).
 */
export function startWorker(
  rank: number, spec: WorkerSpec, cluster: ClusterConfig, coordinator: string, extraEnv: NodeJS.ProcessEnv = {},
  override?: WorkerCommandOverride, stdinLine = '{}',
): LaunchedWorker {
  if (stdinLine.includes('\n')) throw new Error(`startWorker: stdinLine must be one line, got ${stdinLine.split('\n').length}`);
  const args = workerArgs(rank, spec, cluster, coordinator);
  const pin = deviceEnv(spec.device);
  const replaced = override?.(rank);
  if (replaced !== undefined && 'external' in replaced) return externalWorker(rank, spec, replaced.external);
  const remote = replaced === undefined && !isLocal(spec.host);
  let argv: string[];
  let env: NodeJS.ProcessEnv;
  if (replaced !== undefined) {
    argv = [replaced.command, ...replaced.args, ...args];
    env = { ...process.env, ...extraEnv, ...pin };
  } else if (!remote) {
    const { command, args: pre } = workerCommand();
    argv = [command, ...pre, ...args];
    env = { ...process.env, ...extraEnv, ...pin };
  } else {
    // The device pin travels in the remote command; this side's environment is ssh's.
    argv = sshArgv(cluster.ssh, spec.host, remoteWorkerCommand(spec.host, pin, args));
    env = { ...process.env, ...extraEnv };
  }
  // detached: its own process group (see above); not unref'd: the launcher waits for it.
  const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['pipe', 'inherit', 'pipe'], detached: true });
  // A worker that is gone (or never started) cannot take its line: its exit says why, not an EPIPE.
  child.stdin!.on('error', () => {});
  child.stdin!.write(`${stdinLine}\n`);

  let remotePgid: number | undefined;
  const stderrTail: string[] = [];
  onLines(child, (line) => {
    if (remote && remotePgid === undefined) {
      remotePgid = parseRemoteMarker(line);
      if (remotePgid !== undefined) return;
    }
    process.stderr.write(`[worker ${rank}] ${line}\n`);
    if (line.trim() === '') return;
    stderrTail.push(line);
    if (stderrTail.length > 5) stderrTail.splice(0, stderrTail.length - 5);
  });
  let ended = false;
  const stderrEnded = new Promise<void>((resolve) => { child.stderr!.once('close', resolve); });
  const exited = new Promise<Exit>((resolve) => {
    // Its last words (why it failed) may still be in the pipe when it exits: wait for them, but not for a
    // descendant that keeps the pipe open.
    child.once('exit', (code, signal) => {
      void Promise.race([stderrEnded, new Promise((r) => setTimeout(r, STDERR_DRAIN_MS))]).then(() => resolve({ code, signal }));
    });
    child.once('error', (err) => {
      stderrTail.push(`cannot start ${argv[0]}: ${err.message}`);
      resolve({ code: -1, signal: null });
    });
  }).finally(() => { ended = true; });
  const grace = cluster.timeouts.shutdownGraceMs;
  return {
    rank, spec, child, exited, stderrTail,
    running: () => !ended,
    describe: () => `worker ${rank} (${spec.host}, ${spec.device === 'cpu' ? 'cpu' : `GPU ${spec.device}${spec.shared ? ', shared' : ''}`}, ` +
      `${remote ? `ssh pid ${child.pid ?? '?'}${remotePgid !== undefined ? `, remote pid ${remotePgid}` : ''}` : `pid ${child.pid ?? '?'}`})`,
    signal: async (sig) => {
      if (ended) return;
      // Over ssh: the worker's group on its host, once it has said which; before that, only the connection can be cut.
      if (remote && remotePgid !== undefined) {
        await runFor(sshArgv(cluster.ssh, spec.host, remoteKillCommand(remotePgid, sig === 'SIGTERM' ? 'TERM' : 'KILL')), grace);
        if (sig === 'SIGTERM') return; // ssh ends by itself when the worker has
      }
      killGroup(child, sig);
    },
  };
}

/** A worker this launcher did not start (srun did): nothing to watch or signal here; it is "exited" once told to stop. */
function externalWorker(rank: number, spec: WorkerSpec, where: string): LaunchedWorker {
  let stop!: (e: Exit) => void;
  let ended = false;
  const exited = new Promise<Exit>((resolve) => { stop = resolve; }).finally(() => { ended = true; });
  return {
    rank, spec, child: new ChildProcess(), exited, stderrTail: [],
    running: () => !ended,
    describe: () => `worker ${rank} (${where})`,
    signal: async (sig) => stop({ code: null, signal: sig }),
  };
}

/** Calls `each` with every complete line the child writes on stderr (and the unterminated last one at the end). */
function onLines(child: ChildProcess, each: (line: string) => void): void {
  let partial = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    for (const line of lines) each(line);
  });
  child.stderr!.on('end', () => {
    if (partial !== '') each(partial);
    partial = '';
  });
}

/** Signals the child's process group; the child alone if it has none (then it was not started detached). */
function killGroup(child: ChildProcess, sig: StopSignal): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    child.kill(sig);
  }
}

/** Runs argv to its end, or kills it after `ms`; never fails (a stop is best effort, then SIGKILL follows). */
function runFor(argv: string[], ms: number): Promise<void> {
  return new Promise((resolve) => {
    const p = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' });
    const timer = setTimeout(() => p.kill('SIGKILL'), ms);
    const done = () => { clearTimeout(timer); resolve(); };
    p.once('exit', done);
    p.once('error', done);
  });
}

/** SIGTERM every worker still running, SIGKILL after `graceMs`; resolves when all have exited. */
export async function stopWorkers(workers: LaunchedWorker[], graceMs: number): Promise<void> {
  const running = workers.filter((w) => w.running());
  await Promise.all(running.map(async (w) => {
    void w.signal('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => { timer = setTimeout(resolve, graceMs, 'late'); });
    const outcome = await Promise.race([w.exited, late]);
    clearTimeout(timer);
    if (outcome === 'late') {
      await w.signal('SIGKILL');
      await w.exited;
    }
  }));
}
