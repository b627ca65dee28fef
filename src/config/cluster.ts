/**
 * cluster.config.json: where the coordinator listens, the workers (one per
 * device), transport, timeouts and the all-reduce bucket size. Validated on
 * load; every problem is one line that names the key.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { UsageError } from '../errors.js';
import { describeIssue } from './describe-issue.js';

const Port = z.number().int().min(1).max(65_535);

/** The most workers a run may have: the protocol's largest world (wire/protocol.ts). */
export const MAX_WORLD = 1024;
/**
 * Default for maxWorkersPerHost: one worker per device, and 16 GPUs is the
 * largest common box (DGX-2, HGX-2). A config of 1000 local workers is a typo,
 * not a cluster: it would fork 1000 Node processes.
 */
export const DEFAULT_WORKERS_PER_HOST = 16;

export const WorkerSchema = z.strictObject({
  /** where the worker runs; anything but a loopback name is started over ssh */
  host: z.string().min(1),
  /**
   * 'cpu', the index of a GPU on that host (nvidia-smi's numbering; WebGPU
   * counts adapters in the same order, and on a box of identical cards the
   * worker opens the card by its PCI address: gpu-pci.ts), a PCI address
   * ('0000:3b:00.0'), or a fragment of the GPU's name as WebGPU reports it
   * (e.g. 'H200', or 'llvmpipe' for the software adapter)
   */
  device: z.union([
    z.literal('cpu'), z.number().int().min(0),
    z.string().trim().min(1).refine((d) => !/^\d+$/.test(d), { message: 'a GPU index is a number, not a string: write it without quotes' }),
  ]),
  /** this worker may share its GPU with the other workers that say so (how a one-GPU box runs both modes) */
  shared: z.boolean().default(false),
  /** the worker's peer port (tcp) for worker-to-worker links */
  port: Port,
});

export const ClusterConfigSchema = z.strictObject({
  coordinator: z.strictObject({ host: z.string().min(1), port: Port }),
  transport: z.enum(['tcp', 'ipc']),
  workers: z.array(WorkerSchema).min(1).max(MAX_WORLD),
  /** the most workers one host may run (loopback names are one host); raise it for a box with more devices */
  maxWorkersPerHost: z.number().int().min(1).max(MAX_WORLD).default(DEFAULT_WORKERS_PER_HOST),
  /** milliseconds */
  timeouts: z.strictObject({
    /** a started worker must say hello within this */
    registerMs: z.number().int().positive(),
    /** floor of a step's deadline; the deadline grows with the measured step time */
    stepMs: z.number().int().positive(),
    /** SIGTERM, then SIGKILL after this */
    shutdownGraceMs: z.number().int().positive(),
  }).default({ registerMs: 60_000, stepMs: 120_000, shutdownGraceMs: 3_000 }),
  /** ZMTP heartbeats (run by libzmq's I/O thread, so a busy step does not starve them), milliseconds */
  heartbeat: z.strictObject({ intervalMs: z.number().int().positive(), timeoutMs: z.number().int().positive() })
    .default({ intervalMs: 1_000, timeoutMs: 15_000 }),
  /** gradient bytes per all-reduce bucket (PyTorch DDP's default: 25 MiB) */
  bucketBytes: z.number().int().min(1024).default(25 * 2 ** 20),
  /** replicas compare weight checksums every this many steps (0: only at the start) */
  checksumEvery: z.number().int().min(0).default(50),
  /** remote workers: the command that runs `splitnet worker ...` on a host; {host} and {command} are filled in */
  ssh: z.string().default('ssh -o BatchMode=yes {host} {command}'),
  /** the largest message a process accepts from the network, bytes */
  maxMessageBytes: z.number().int().positive().default(2 ** 30),
  /**
   * 'curve': every socket authenticated and encrypted (CurveZMQ), fresh keys
   * per run unless `keys` names a file from `splitnet keys`; 'none': plain
   * TCP, which a run with a non-loopback host refuses unless --insecure.
   * Default: 'curve' over tcp; 'none' over ipc, whose sockets sit in a
   * directory only the run's user can enter (wire/private-dir.ts; the README
   * says why, and what CURVE would add)
   */
  security: z.enum(['curve', 'none']).optional(),
  /** a key file from `splitnet keys` (for workers not started by the launcher, e.g. under srun); default: fresh keys per run */
  keys: z.string().min(1).optional(),
});

export type ClusterConfig = Omit<z.infer<typeof ClusterConfigSchema>, 'security'> & { security: 'curve' | 'none' };
export type WorkerSpec = z.infer<typeof WorkerSchema>;

/** Validates a parsed config: schema, then duplicate ports, and devices claimed twice without "shared". */
export function parseClusterConfig(raw: unknown, where = 'cluster config'): ClusterConfig {
  const r = ClusterConfigSchema.safeParse(raw);
  if (!r.success) throw new UsageError(describeIssue(where, r.error.issues[0]!));
  // Measured (bench/transport.ts): CURVE halves a link's throughput; the private ipc directory keeps other users out without it.
  const cfg: ClusterConfig = { ...r.data, security: r.data.security ?? (r.data.transport === 'ipc' ? 'none' : 'curve') };
  if (cfg.transport === 'ipc') {
    const remote = [cfg.coordinator.host, ...cfg.workers.map((w) => w.host)].filter((h) => !isLocal(h));
    if (remote.length > 0) throw new UsageError(`${where}: transport: "ipc" needs every process on this host, and ${[...new Set(remote)].join(', ')} is not local: use "tcp"`);
  }
  const seenPorts = new Map<string, string>();
  const claim = (host: string, port: number, key: string) => {
    const k = `${host}:${port}`;
    const prev = seenPorts.get(k);
    if (prev !== undefined) throw new UsageError(`${where}: ${key}: port ${port} on ${host} is already used by ${prev}`);
    seenPorts.set(k, key);
  };
  const perHost = new Map<string, number>();
  for (const w of cfg.workers) {
    const host = isLocal(w.host) ? 'this host' : w.host;
    perHost.set(host, (perHost.get(host) ?? 0) + 1);
  }
  for (const [host, n] of perHost) {
    if (n > cfg.maxWorkersPerHost) {
      throw new UsageError(`${where}: workers: ${n} workers on ${host}, more than maxWorkersPerHost ${cfg.maxWorkersPerHost} ` +
        `(one worker per device; set "maxWorkersPerHost" if ${host} really has ${n} devices)`);
    }
  }
  claim(cfg.coordinator.host, cfg.coordinator.port, 'coordinator.port');
  const seenDevices = new Map<string, number>();
  cfg.workers.forEach((w, i) => {
    claim(w.host, w.port, `workers.${i}.port`);
    if (w.device !== 'cpu') {
      const k = `${w.host}/${typeof w.device === 'number' ? `gpu${w.device}` : `name:${w.device}`}`;
      const prev = seenDevices.get(k);
      if (prev !== undefined && !(w.shared && cfg.workers[prev]!.shared)) {
        throw new UsageError(`${where}: workers.${i}.device: GPU ${JSON.stringify(w.device)} on ${w.host} is already workers.${prev}'s (set "shared": true on both to let them share it)`);
      }
      seenDevices.set(k, i);
    }
  });
  if (cfg.heartbeat.timeoutMs <= cfg.heartbeat.intervalMs) {
    throw new UsageError(`${where}: heartbeat.timeoutMs: ${cfg.heartbeat.timeoutMs} must exceed heartbeat.intervalMs ${cfg.heartbeat.intervalMs}`);
  }
  return cfg;
}

export function loadClusterConfig(path: string): ClusterConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`${path}: cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${path}: not JSON (${(err as Error).message})`);
  }
  return parseClusterConfig(raw, path);
}

/**
 * Plain TCP only where no one else can listen in: every host loopback (or
 * ipc). Anything else needs CURVE, or the user's explicit --insecure.
 */
export function checkSecurity(cfg: ClusterConfig, insecure: boolean, where = 'cluster config'): void {
  if (cfg.security === 'curve' || insecure || cfg.transport === 'ipc') return;
  const open = [cfg.coordinator.host, ...cfg.workers.map((w) => w.host)].filter((h) => !isLocal(h));
  if (open.length > 0) {
    throw new UsageError(`${where}: security: "none" with non-loopback hosts (${[...new Set(open)].join(', ')}): anyone on the network could join or poison the run; use "curve", or pass --insecure on a network you trust`);
  }
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);
export const isLocal = (host: string): boolean => LOOPBACK.has(host) || host.startsWith('127.');
