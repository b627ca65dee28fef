/**
 * Placement under Slurm: `srun … splitnet launch …` starts every process of
 * the run as a Slurm task, and each task learns its part from Slurm's
 * environment alone. Task 0 is the coordinator; task t ≥ 1 is the worker of
 * rank t−1 and connects to it. Every task computes the same layout from the
 * same variables (the step's node list, tasks per node, distribution), so
 * all agree on who is where without talking first.
 *
 * Why the coordinator has a task of its own (rather than task 0 also
 * forking worker 0): then every process is one srun started, so Slurm's
 * signals reach them the way this code expects. `scancel` or the time limit
 * sends SIGTERM to every process of the step at once; worker tasks leave it
 * to the coordinator (which checkpoints, then stops them), which a worker
 * forked by task 0 could not do. It is also the local launcher's shape (a
 * coordinator process and one process per device). The cost is one task
 * slot: ask for one task more than there are GPUs (scripts/sbatch-example.sh).
 *
 * Everything here is a pure function of the environment (tests feed it
 * variables; `scontrol show hostnames` is not needed for the node list).
 */
import { parseClusterConfig, type ClusterConfig } from '../config/cluster.js';
import { UsageError } from '../errors.js';

type Env = Record<string, string | undefined>;

/** What one task knows of its step. */
export interface SlurmStep {
  jobId: string;
  /** this task's id in the step (SLURM_PROCID) */
  task: number;
  tasks: number;
  /** this task's index among the step's tasks on its node (SLURM_LOCALID) */
  localId: number;
  /** the node each task runs on, by task id */
  hosts: string[];
  /** the GPUs this task may use: CUDA_VISIBLE_DEVICES as Slurm set it (else SLURM_STEP_GPUS); empty for none */
  gpus: number[];
}

export type SlurmRole =
  | {
    kind: 'coordinator';
    /** the cluster to run: the coordinator on task 0's node, worker r on task r+1's */
    cluster: ClusterConfig;
    /** how the log names each worker */
    where: (rank: number) => string;
  }
  | {
    kind: 'worker';
    rank: number;
    /** the coordinator's endpoint */
    coordinator: string;
    device: 'cpu' | number;
    registerMs: number;
    /** the cluster's ZMTP heartbeats, for the link to the coordinator */
    heartbeat: { intervalMs: number; timeoutMs: number };
    /** the config's key file (`splitnet keys`): this worker's CURVE keys; undefined with "security": "none" */
    keysFile?: string;
  };

/**
 * This task's step, or undefined when not under srun with two or more tasks
 * (a batch script's own shell has SLURM_PROCID but no step; one task runs
 * the usual launch, its config's workers on its node), or when
 * SPLITNET_SLURM=0 says to ignore Slurm.
 */
export function readSlurmStep(env: Env): SlurmStep | undefined {
  if (env.SPLITNET_SLURM === '0' || env.SLURM_STEP_NUM_TASKS === undefined) return undefined;
  const tasks = count(env, 'SLURM_STEP_NUM_TASKS', 1);
  if (tasks < 2) return undefined;
  const task = count(env, 'SLURM_PROCID', 0);
  if (task >= tasks) throw new UsageError(`SLURM_PROCID=${task}: expected a task id below SLURM_STEP_NUM_TASKS=${tasks}`);
  const [listVar, list] = first(env, 'SLURM_STEP_NODELIST', 'SLURM_JOB_NODELIST');
  const nodes = expandNodeList(list, listVar);
  const [perVar, per] = first(env, 'SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE');
  const perNode = parseTasksPerNode(per, perVar);
  if (perNode.length !== nodes.length) {
    throw new UsageError(`${perVar}=${per} counts tasks on ${perNode.length} nodes, ${listVar}=${list} names ${nodes.length}`);
  }
  const total = perNode.reduce((a, b) => a + b, 0);
  if (total !== tasks) throw new UsageError(`${perVar}=${per} adds up to ${total} tasks, SLURM_STEP_NUM_TASKS is ${tasks}`);
  const hosts = taskHosts(nodes, perNode, env.SLURM_DISTRIBUTION, env.SLURM_DIST_PLANESIZE);
  // The layout is computed, not reported: check it where Slurm says where this task is.
  const here = env.SLURMD_NODENAME;
  if (here !== undefined && here !== hosts[task]) {
    throw new UsageError(`Slurm task ${task} runs on ${here}, but ${listVar}=${list}, ${perVar}=${per} and ` +
      `SLURM_DISTRIBUTION=${env.SLURM_DISTRIBUTION ?? '(unset: block)'} put it on ${hosts[task]}: run srun with -m block or -m cyclic`);
  }
  const jobId = env.SLURM_JOB_ID ?? env.SLURM_JOBID;
  if (jobId === undefined || !/^\d+$/.test(jobId)) throw new UsageError(`SLURM_JOB_ID: expected a job number, got ${jobId === undefined ? 'nothing' : `'${jobId}'`}`);
  return { jobId, task, tasks, localId: count(env, 'SLURM_LOCALID', 0), hosts, gpus: taskGpus(env) };
}

/** Ports when no --config names them: a block per job id, so two jobs sharing a node rarely meet. */
const PORT_FIRST = 20_000;
const PORT_BLOCKS = 500;
const PORT_BLOCK = 64;

/** The coordinator's port: the config's coordinator.port if one was given, else one derived from the job id; worker r listens on that + 1 + r. */
export function basePort(step: SlurmStep, base?: ClusterConfig): number {
  const port = base?.coordinator.port ?? PORT_FIRST + (Number(step.jobId) % PORT_BLOCKS) * PORT_BLOCK;
  if (port + step.tasks > 65_535) throw new UsageError(`coordinator.port ${port}: ${step.tasks} tasks need ports ${port}..${port + step.tasks - 1}, past 65535`);
  return port;
}

/**
 * This task's part. `base` is the --config given on the command line, if
 * any: its timeouts, heartbeat, buckets and ports are used; its coordinator
 * and workers are replaced by the Slurm tasks.
 */
export function slurmRole(step: SlurmStep, base?: ClusterConfig): SlurmRole {
  if (base?.transport === 'ipc') throw new UsageError("cluster config: transport: under Slurm tasks talk over tcp (ipc needs every process on one host): set \"transport\": \"tcp\"");
  const port = basePort(step, base);
  const host0 = step.hosts[0]!;
  const cluster = parseClusterConfig({
    ...(base ?? {}),
    coordinator: { host: host0, port },
    transport: 'tcp',
    // The device is each worker task's own business (its GPUs are in its environment): 'cpu' is only a placeholder here.
    workers: step.hosts.slice(1).map((host, r) => ({ host, device: 'cpu', port: port + 1 + r })),
  }, 'Slurm layout');
  // The launcher hands fresh keys to the workers it starts; srun's tasks can only read them from a file they share.
  if (cluster.security === 'curve' && cluster.keys === undefined) {
    throw new UsageError(`under srun the workers are Slurm's tasks, not the launcher's children, so they cannot be handed fresh CURVE keys: ` +
      `make a key file (splitnet keys --out run.keys --workers ${step.tasks - 1}) and name it as "keys" in a --config file ` +
      '(or set "security": "none" there and pass --insecure, on a network you trust)');
  }
  if (step.task === 0) return { kind: 'coordinator', cluster, where: (rank) => `Slurm task ${rank + 1} on ${step.hosts[rank + 1]}` };
  return {
    kind: 'worker', rank: step.task - 1, coordinator: `tcp://${host0}:${port}`, device: taskDevice(step), registerMs: cluster.timeouts.registerMs,
    heartbeat: cluster.heartbeat,
    ...(cluster.security === 'curve' && cluster.keys !== undefined ? { keysFile: cluster.keys } : {}),
  };
}

/**
 * The GPU this worker task uses: its only one when Slurm bound one GPU per
 * task, else the one at its SLURM_LOCALID (several tasks sharing a node's
 * GPUs, e.g. --gpus-per-node, take different ones); 'cpu' without GPUs.
 */
export function taskDevice(step: SlurmStep): 'cpu' | number {
  const { gpus, hosts, task, localId } = step;
  if (gpus.length === 0) return 'cpu';
  const workersHere = hosts.filter((h, t) => t > 0 && h === hosts[task]).length;
  if (gpus.length > 1 && workersHere > gpus.length) {
    throw new UsageError(`${workersHere} worker tasks on ${hosts[task]} share its ${gpus.length} GPUs (${gpus.join(',')}): ` +
      'ask for at most one worker task per GPU (plus one task for the coordinator on the first node)');
  }
  return gpus[localId % gpus.length]!;
}

/** CUDA_VISIBLE_DEVICES as Slurm set it for this task, else SLURM_STEP_GPUS. */
function taskGpus(env: Env): number[] {
  const [name, value] = env.CUDA_VISIBLE_DEVICES !== undefined ? ['CUDA_VISIBLE_DEVICES', env.CUDA_VISIBLE_DEVICES]
    : ['SLURM_STEP_GPUS', env.SLURM_STEP_GPUS ?? ''];
  const items = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const bad = items.find((s) => !/^\d+$/.test(s));
  if (bad !== undefined) throw new UsageError(`${name}=${value}: expected GPU indices (as Slurm sets them), got '${bad}'`);
  return items.map(Number);
}

/**
 * Slurm's compressed host list, expanded in order: `node[01-03,07],gpu5`
 * → node01 node02 node03 node07 gpu5. Several bracket groups in one name
 * multiply (`r[1-2]n[1-2]` → r1n1 r1n2 r2n1 r2n2); a range keeps the
 * zero-padding of its first number.
 */
export function expandNodeList(list: string, name = 'node list'): string[] {
  const fail = (why: string): never => { throw new UsageError(`${name}=${list}: ${why}`); };
  const items: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= list.length; i++) {
    const c = list[i];
    if (c === '[') depth++;
    else if (c === ']') depth--;
    if (depth < 0 || depth > 1) fail(`unbalanced '[' and ']' at character ${i + 1}`);
    if (i === list.length || (c === ',' && depth === 0)) {
      items.push(list.slice(start, i));
      start = i + 1;
    }
  }
  if (depth !== 0) fail("a '[' is not closed");
  const hosts: string[] = [];
  for (const item of items) {
    if (item === '') fail('an empty host name');
    let names = [''];
    for (const part of item.split(/(\[[^\]]*\])/)) {
      if (part === '') continue;
      const values = part.startsWith('[') ? expandRanges(part.slice(1, -1), fail) : [part];
      if (!part.startsWith('[') && !/^[A-Za-z0-9._-]+$/.test(part)) fail(`'${part}' is not a host name`);
      names = names.flatMap((n) => values.map((v) => n + v));
      if (names.length > MAX_HOSTS) fail(`more than ${MAX_HOSTS} hosts`);
    }
    hosts.push(...names);
  }
  return hosts;
}

const MAX_HOSTS = 100_000;

/** The inside of one bracket group: `01-03,07` → 01 02 03 07. */
function expandRanges(spec: string, fail: (why: string) => never): string[] {
  const out: string[] = [];
  for (const r of spec.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(r);
    if (m === null) fail(`'[${spec}]': expected numbers and ranges like 01-03, got '${r}'`);
    const lo = Number(m![1]);
    const hi = m![2] === undefined ? lo : Number(m![2]);
    if (hi < lo) fail(`'${r}': the range runs backwards`);
    if (hi - lo + out.length >= MAX_HOSTS) fail(`more than ${MAX_HOSTS} hosts`);
    const width = m![1]!.length;
    for (let n = lo; n <= hi; n++) out.push(String(n).padStart(width, '0'));
  }
  return out;
}

/** SLURM_STEP_TASKS_PER_NODE: `2(x3),1` → 2 2 2 1. */
export function parseTasksPerNode(value: string, name = 'SLURM_STEP_TASKS_PER_NODE'): number[] {
  const out: number[] = [];
  for (const item of value.split(',')) {
    const m = /^(\d+)(?:\(x(\d+)\))?$/.exec(item.trim());
    if (m === null) throw new UsageError(`${name}=${value}: expected counts like 2(x3),1, got '${item}'`);
    const times = m[2] === undefined ? 1 : Number(m[2]);
    if (times > MAX_HOSTS) throw new UsageError(`${name}=${value}: more than ${MAX_HOSTS} nodes`);
    for (let i = 0; i < times; i++) out.push(Number(m[1]));
  }
  return out;
}

/**
 * Which node each task is on, as srun distributes them over the nodes
 * (`-m`, SLURM_DISTRIBUTION's first part; unset is block): block fills a
 * node before the next, cyclic deals one task per node in turn, plane=n
 * deals n at a time. Arbitrary layouts (a host file) are refused.
 */
export function taskHosts(nodes: string[], perNode: number[], distribution = 'block', planeSize?: string): string[] {
  const kind = distribution.split(/[:,]/)[0]!;
  const deal = kind === 'block' ? Infinity : kind === 'cyclic' ? 1 : kind === 'plane' ? Number(planeSize) : NaN;
  if (!(deal >= 1)) {
    throw new UsageError(`SLURM_DISTRIBUTION=${distribution}${kind === 'plane' ? ` with SLURM_DIST_PLANESIZE=${planeSize}` : ''}: ` +
      'splitnet places tasks for block, cyclic or plane=n distributions: run srun with -m block');
  }
  const left = [...perNode];
  const hosts: string[] = [];
  while (left.some((n) => n > 0)) {
    left.forEach((n, i) => {
      const take = Math.min(n, deal);
      for (let k = 0; k < take; k++) hosts.push(nodes[i]!);
      left[i] = n - take;
    });
  }
  return hosts;
}

function count(env: Env, name: string, min: number): number {
  const v = env[name];
  if (v === undefined || !/^\d+$/.test(v.trim()) || Number(v) < min) {
    throw new UsageError(`${name}: expected a whole number${min > 0 ? ` ≥ ${min}` : ''} (srun sets it), got ${v === undefined ? 'nothing' : `'${v}'`}`);
  }
  return Number(v);
}

function first(env: Env, ...names: string[]): [string, string] {
  for (const n of names) {
    const v = env[n];
    if (v !== undefined && v.trim() !== '') return [n, v.trim()];
  }
  throw new UsageError(`${names.join(' or ')}: expected from srun, got nothing`);
}
