import { readFileSync } from 'node:fs';
import { freePorts } from '../../src/wire/free-ports.js';
import { parseClusterConfig, type ClusterConfig } from '../../src/config/cluster.js';
import type { RunEvent } from '../../src/run/loop.js';

/** A local cluster of `workers` CPU workers on fresh loopback ports. */
export async function localCluster(workers: number, overrides: Record<string, unknown> = {}): Promise<ClusterConfig> {
  const [coord, ...peers] = await freePorts(workers + 1);
  return parseClusterConfig({
    coordinator: { host: '127.0.0.1', port: coord },
    transport: 'tcp',
    workers: peers.map((port) => ({ host: '127.0.0.1', device: 'cpu', port })),
    timeouts: { registerMs: 30_000, stepMs: 60_000, shutdownGraceMs: 2_000 },
    heartbeat: { intervalMs: 500, timeoutMs: 5_000 },
    ...overrides,
  });
}

/** Whether a process exists (and has not been reaped). */
export const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** A process's command line, or undefined when it is gone (a zombie's is empty too). */
function commandLine(pid: number): string | undefined {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmd === '' ? undefined : cmd;
  } catch {
    return undefined;
  }
}

/**
 * Every process a test started (worker pids from a run's 'started' events,
 * a spawned coordinator), so `afterEach` can make sure none outlives the
 * test: `reap()` SIGKILLs whatever is still running.
 */
export class Spawned {
  /** pid -> its command line when tracked (a reused pid has another one: it is not ours) */
  private readonly procs = new Map<number, string | undefined>();

  add(...pids: number[]): void {
    for (const pid of pids) if (pid > 0 && !this.procs.has(pid)) this.procs.set(pid, commandLine(pid));
  }

  /** A run's onEvent that records the worker pids, then calls `next`. */
  watch(next?: (e: RunEvent) => void): (e: RunEvent) => void {
    return (e) => {
      if (e.type === 'started') this.add(...e.pids);
      next?.(e);
    };
  }

  get pids(): number[] {
    return [...this.procs.keys()];
  }

  /** SIGKILLs every tracked process still running, forgets them all; returns the pids it had to kill. */
  reap(): number[] {
    const killed: number[] = [];
    for (const [pid, cmd] of this.procs) {
      if (!alive(pid)) continue;
      const now = commandLine(pid);
      // exited (a zombie), or the pid was reused by a process that is neither the one tracked nor a worker
      if (now === undefined || (cmd !== undefined && now !== cmd && !now.includes('\0--coordinator\0'))) continue;
      try {
        process.kill(pid, 'SIGKILL');
        killed.push(pid);
      } catch { /* exited meanwhile */ }
    }
    this.procs.clear();
    return killed;
  }
}
