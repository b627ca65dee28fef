/**
 * `splitnet launch` under srun: the layout as a pure function of Slurm's
 * variables (node lists, tasks per node, distributions, GPUs), then a real
 * data-parallel run on a one-node Slurm cluster this test starts itself
 * (munged, slurmctld and slurmd on private sockets and ports, as root). Where
 * the machine cannot run one (not root, no Slurm, a daemon that will not
 * start), that part says why, loudly, and is skipped.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseClusterConfig } from '../src/config/cluster.js';
import { expandNodeList, parseTasksPerNode, readSlurmStep, slurmRole, taskDevice, taskHosts } from '../src/run/slurm.js';
import { freePorts } from '../src/wire/free-ports.js';
import { tempDir } from './helpers/idx-files.js';

const root = fileURLToPath(new URL('..', import.meta.url));

/** What srun sets for task `task` of a step (a subset; the values of a real one-node step are in the run below). */
function srunEnv(task: number, over: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    SLURM_JOB_ID: '4242', SLURM_PROCID: String(task), SLURM_STEP_NUM_TASKS: '3', SLURM_STEP_NODELIST: 'gpu[01-02]',
    SLURM_STEP_TASKS_PER_NODE: '2,1', SLURM_LOCALID: String(task < 2 ? task : task - 2), ...over,
  };
}

describe('node lists and task layout', () => {
  it('expands compressed host lists', () => {
    expect(expandNodeList('node[01-03,07],gpu5')).toEqual(['node01', 'node02', 'node03', 'node07', 'gpu5']);
    expect(expandNodeList('r[1-2]n[8-10]')).toEqual(['r1n8', 'r1n9', 'r1n10', 'r2n8', 'r2n9', 'r2n10']);
    expect(expandNodeList('vm')).toEqual(['vm']);
    expect(() => expandNodeList('node[01-03', 'SLURM_STEP_NODELIST')).toThrow("SLURM_STEP_NODELIST=node[01-03: a '[' is not closed");
    expect(() => expandNodeList('node[3-1]')).toThrow('runs backwards');
    expect(() => expandNodeList('node[a-b]')).toThrow('expected numbers and ranges');
    expect(() => expandNodeList('a,,b')).toThrow('an empty host name');
  });

  it('reads tasks per node and places tasks as block, cyclic or plane distributions do', () => {
    expect(parseTasksPerNode('2(x3),1')).toEqual([2, 2, 2, 1]);
    expect(() => parseTasksPerNode('2(x)')).toThrow("expected counts like 2(x3),1, got '2(x)'");
    const nodes = ['a', 'b', 'c'];
    expect(taskHosts(nodes, [3, 2, 1])).toEqual(['a', 'a', 'a', 'b', 'b', 'c']);
    expect(taskHosts(nodes, [3, 2, 1], 'cyclic:block')).toEqual(['a', 'b', 'c', 'a', 'b', 'a']);
    expect(taskHosts(nodes, [3, 2, 1], 'plane', '2')).toEqual(['a', 'a', 'b', 'b', 'c', 'a']);
    expect(() => taskHosts(nodes, [3, 2, 1], 'arbitrary')).toThrow('run srun with -m block');
  });
});

describe('the roles', () => {
  const base = parseClusterConfig({
    coordinator: { host: 'ignored', port: 7000 }, transport: 'tcp', workers: [{ host: 'ignored', device: 'cpu', port: 7001 }],
    timeouts: { registerMs: 5000, stepMs: 60_000, shutdownGraceMs: 1000 }, keys: 'run.keys',
  });

  it('is not Slurm outside srun, in a batch script, with one task, or when told', () => {
    expect(readSlurmStep({})).toBeUndefined();
    expect(readSlurmStep({ SLURM_JOB_ID: '1', SLURM_PROCID: '0', SLURM_NTASKS: '3' })).toBeUndefined(); // sbatch's own shell
    expect(readSlurmStep(srunEnv(0, { SLURM_STEP_NUM_TASKS: '1', SLURM_STEP_TASKS_PER_NODE: '1,0' }))).toBeUndefined();
    expect(readSlurmStep(srunEnv(0, { SPLITNET_SLURM: '0' }))).toBeUndefined();
  });

  it('task 0 coordinates from the first node; task t is worker t-1, on its node, ports from the config', () => {
    const coord = slurmRole(readSlurmStep(srunEnv(0))!, base);
    if (coord.kind !== 'coordinator') throw new Error('task 0 is the coordinator');
    expect(coord.cluster.coordinator).toEqual({ host: 'gpu01', port: 7000 });
    expect(coord.cluster.workers.map((w) => [w.host, w.port])).toEqual([['gpu01', 7001], ['gpu02', 7002]]);
    expect(coord.cluster.timeouts.registerMs).toBe(5000);
    expect(coord.where(1)).toBe('Slurm task 2 on gpu02');
    expect(slurmRole(readSlurmStep(srunEnv(2, { SLURMD_NODENAME: 'gpu02' }))!, base))
      .toEqual({ kind: 'worker', rank: 1, coordinator: 'tcp://gpu01:7000', device: 'cpu', registerMs: 5000, heartbeat: base.heartbeat, keysFile: 'run.keys' });
  });

  it('without a config: ports from the job id, and CURVE needs a key file', () => {
    expect(() => slurmRole(readSlurmStep(srunEnv(1))!)).toThrow('make a key file (splitnet keys --out run.keys --workers 2)');
    const open = slurmRole(readSlurmStep(srunEnv(1))!, parseClusterConfig({ ...base, security: 'none', keys: undefined, coordinator: { host: 'x', port: 7000 } }));
    expect(open).toMatchObject({ kind: 'worker', coordinator: 'tcp://gpu01:7000' });
    expect(open).not.toHaveProperty('keysFile');
    expect(() => slurmRole(readSlurmStep(srunEnv(1))!, { ...base, transport: 'ipc' })).toThrow('under Slurm tasks talk over tcp');
  });

  it('a task the computed layout misplaces is an error, not a hang', () => {
    expect(() => readSlurmStep(srunEnv(2, { SLURMD_NODENAME: 'gpu01' }))).toThrow('Slurm task 2 runs on gpu01, but');
    expect(() => readSlurmStep(srunEnv(0, { SLURM_STEP_TASKS_PER_NODE: '2' }))).toThrow('counts tasks on 1 nodes');
    expect(() => readSlurmStep(srunEnv(0, { SLURM_STEP_NODELIST: undefined }))).toThrow('SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: expected from srun');
  });

  it('a worker task takes its own GPU, or the one at its local id when tasks share a node\'s GPUs', () => {
    expect(taskDevice(readSlurmStep(srunEnv(1, { CUDA_VISIBLE_DEVICES: '3' }))!)).toBe(3);
    expect(taskDevice(readSlurmStep(srunEnv(1, { CUDA_VISIBLE_DEVICES: '0,1' }))!)).toBe(1);
    expect(taskDevice(readSlurmStep(srunEnv(2, { CUDA_VISIBLE_DEVICES: '' }))!)).toBe('cpu');
    expect(taskDevice(readSlurmStep(srunEnv(2, { SLURM_STEP_GPUS: '5' }))!)).toBe(5);
    const crowded = srunEnv(1, { SLURM_STEP_NUM_TASKS: '4', SLURM_STEP_NODELIST: 'n1', SLURM_STEP_TASKS_PER_NODE: '4', CUDA_VISIBLE_DEVICES: '0,1' });
    expect(() => taskDevice(readSlurmStep(crowded)!)).toThrow('3 worker tasks on n1 share its 2 GPUs');
    expect(() => readSlurmStep(srunEnv(1, { CUDA_VISIBLE_DEVICES: 'GPU-1f2e' }))).toThrow("expected GPU indices (as Slurm sets them), got 'GPU-1f2e'");
  });
});

// ---- a real one-node Slurm ----------------------------------------------------

const DAEMONS = ['munged', 'slurmctld', 'slurmd', 'srun', 'sinfo', 'squeue', 'scancel'];

interface LocalSlurm { dir: string; env: NodeJS.ProcessEnv; node: string; daemons: ChildProcess[] }
let slurm: LocalSlurm | undefined;
let skipWhy: string | undefined;

/** The Slurm the suite started, or a loud skip that says why there is none. */
function slurmOrSkip(ctx: { skip: (note?: string) => never }): LocalSlurm {
  if (slurm !== undefined) return slurm;
  console.warn(`\n*** SKIPPED the real Slurm run: ${skipWhy} ***\n`);
  return ctx.skip(skipWhy);
}

/** munged, slurmctld and slurmd in the foreground, each on a private socket or port, state in a temp dir. */
async function startSlurm(): Promise<LocalSlurm> {
  if (process.getuid?.() !== 0) throw new Error('not root (slurmd runs jobs as their users)');
  const missing = DAEMONS.filter((d) => spawnSync('sh', ['-c', `command -v ${d}`], { env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } }).status !== 0);
  if (missing.length > 0) throw new Error(`no ${missing.join(', ')} (Debian: apt-get install slurm-wlm munge)`);
  const dir = tempDir('splitnet-slurm-');
  chmodSync(dir, 0o755); // munged wants its socket's directory searchable by all
  for (const d of ['state', 'spool', 'munge']) mkdirSync(join(dir, d));
  chmodSync(join(dir, 'munge'), 0o755);
  writeFileSync(join(dir, 'munge', 'munge.key'), Buffer.from(Array.from({ length: 1024 }, () => Math.floor(Math.random() * 256))), { mode: 0o400 });
  // The node's name is what workers connect to: this host's name where it resolves, else localhost.
  const short = hostname().split('.')[0]!;
  const node = await lookup(short).then(() => short, () => 'localhost');
  const [ctldPort, slurmdPort] = await freePorts(2);
  const sock = join(dir, 'munge', 'munge.sock');
  const conf = join(dir, 'slurm.conf');
  writeFileSync(conf, [
    'ClusterName=splitnettest', `SlurmctldHost=${node}(127.0.0.1)`, `SlurmctldPort=${ctldPort}`, `SlurmdPort=${slurmdPort}`,
    'SlurmUser=root', 'SlurmdUser=root', 'AuthType=auth/munge', `AuthInfo=socket=${sock}`,
    `StateSaveLocation=${dir}/state`, `SlurmdSpoolDir=${dir}/spool`,
    `SlurmctldPidFile=${dir}/slurmctld.pid`, `SlurmdPidFile=${dir}/slurmd.pid`,
    `SlurmctldLogFile=${dir}/slurmctld.log`, `SlurmdLogFile=${dir}/slurmd.log`,
    // no cgroups: processes tracked by parent pid, tasks not confined
    'ProctrackType=proctrack/linuxproc', 'TaskPlugin=task/none', 'JobAcctGatherType=jobacct_gather/none',
    'AccountingStorageType=accounting_storage/none', 'MpiDefault=none',
    'SelectType=select/cons_tres', 'SelectTypeParameters=CR_CPU',
    // trust the configured CPUs (more tasks than this machine's cores)
    'SlurmdParameters=config_overrides', 'ReturnToService=2',
    `NodeName=${node} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN`,
    `PartitionName=test Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES`,
  ].join('\n') + '\n');
  const env = { ...process.env, SLURM_CONF: conf, PATH: `${process.env.PATH}:/usr/sbin:/sbin` };
  const daemons: ChildProcess[] = [];
  const run = (argv: string[]) => {
    const p = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    p.once('exit', (code) => { if (code !== 0 && code !== null) skipWhy ??= `${argv[0]} exited with ${code}: ${err.trim().split('\n').at(-1)}`; });
    daemons.push(p);
  };
  const local = { dir, env, node, daemons };
  try {
    run(['munged', '-F', '--force', `--socket=${sock}`, `--key-file=${dir}/munge/munge.key`, `--pid-file=${dir}/munge/munged.pid`,
      `--log-file=${dir}/munge/munged.log`, `--seed-file=${dir}/munge/munged.seed`]);
    await waitFor('munged', 10_000, () => existsSync(sock));
    run(['slurmctld', '-D', '-i', '-f', conf]);
    run(['slurmd', '-D', '-f', conf, '-N', node]);
    await waitFor(`node ${node} idle (slurmctld.log, slurmd.log in ${dir})`, 30_000,
      () => spawnSync('sinfo', ['-h', '-n', node, '-o', '%T'], { env, encoding: 'utf8' }).stdout.trim() === 'idle');
  } catch (err) {
    await stopSlurm(local);
    throw err;
  }
  return local;
}

async function waitFor(what: string, ms: number, ok: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (skipWhy !== undefined) throw new Error(skipWhy);
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Cancels every job, then stops the daemons (SIGTERM, then SIGKILL). */
async function stopSlurm(s: LocalSlurm): Promise<void> {
  spawnSync('scancel', ['--user=root', '--full'], { env: s.env, timeout: 10_000 });
  for (let i = 0; i < 50 && spawnSync('squeue', ['-h'], { env: s.env, encoding: 'utf8', timeout: 5000 }).stdout?.trim(); i++) {
    await new Promise((r) => setTimeout(r, 200));
  }
  for (const p of [...s.daemons].reverse()) {
    if (p.exitCode !== null || p.signalCode !== null) continue;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    const killer = setTimeout(() => p.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(killer);
  }
}

/** A cluster config for srun (only its ports, timeouts and key file count) with a fresh key file for `workers` workers. */
async function slurmConfig(dir: string, name: string, workers: number): Promise<string> {
  const keys = join(dir, `${name}.keys`);
  const made = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'src/cli.ts'), 'keys', '--out', keys, '--workers', String(workers)],
    { cwd: root, encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`splitnet keys: ${made.stderr}`);
  // The coordinator's port and one per worker after it: a free block.
  const [port] = await freePorts(workers + 1, true);
  const config = join(dir, `${name}.json`);
  writeFileSync(config, JSON.stringify({
    coordinator: { host: 'ignored', port }, transport: 'tcp', workers: [{ host: 'ignored', device: 'cpu', port: port! + 1 }],
    timeouts: { registerMs: 60_000, stepMs: 60_000, shutdownGraceMs: 1000 }, keys,
  }));
  return config;
}

describe('a real one-node Slurm', () => {
  beforeAll(async () => {
    const t0 = Date.now();
    try {
      slurm = await startSlurm();
      console.log(`slurm: munged, slurmctld and slurmd up on ${slurm.node} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } catch (err) {
      skipWhy = (err as Error).message;
    }
  }, 60_000);
  afterAll(async () => {
    if (slurm === undefined) return;
    await stopSlurm(slurm);
    rmSync(slurm.dir, { recursive: true, force: true });
  }, 60_000);

  it('srun -N1 -n3 splitnet launch: the coordinator on task 0, two data-parallel workers on tasks 1 and 2', async (ctx) => {
    const { dir, env, node } = slurmOrSkip(ctx);
    const cli = [process.execPath, '--import', 'tsx', join(root, 'src/cli.ts')];
    const config = await slurmConfig(dir, 'run', 2);
    const t0 = Date.now();
    const srun = spawn('srun', ['-N1', '-n3', '--kill-on-bad-exit=1', '--label', '--time=5', ...cli, '--backend', 'wasm', 'launch', '--config', config,
      '--synthetic', '--width', '0.125', '--resolution', '67', '--batch', '8', '--train-samples', '16', '--test-samples', '8', '--epochs', '1',
      '--out', join(dir, 'run'), '--no-progress'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    srun.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    srun.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
    const killer = setTimeout(() => srun.kill('SIGKILL'), 150_000);
    const code = await new Promise<number | null>((r) => srun.once('exit', r));
    clearTimeout(killer);
    console.log(`slurm: srun -n3 launch took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    expect(code, out).toBe(0);
    expect(out).toContain(`0: splitnet: data-parallel over 2 workers (worker 0 (Slurm task 1 on ${node}), worker 1 (Slurm task 2 on ${node}))`);
    expect(out).toMatch(/0: +final test accuracy [\d.]+% on 8 images/);
    expect(readFileSync(join(dir, 'run', 'metrics.jsonl'), 'utf8')).toContain('"epoch"');
    // the step is over: no task left behind
    expect(spawnSync('squeue', ['-h'], { env, encoding: 'utf8' }).stdout.trim()).toBe('');
  }, 180_000);

  it('scancel: every task gets SIGTERM at once; the workers outlive it, so the coordinator stops with a checkpoint and exit code 143', async (ctx) => {
    const { dir, env } = slurmOrSkip(ctx);
    const config = await slurmConfig(dir, 'cancelled', 2);
    const out = join(dir, 'cancelled');
    const srun = spawn('srun', ['-N1', '-n3', '--kill-on-bad-exit=1', '--label', '--time=5', process.execPath, '--import', 'tsx', join(root, 'src/cli.ts'), '--backend', 'wasm',
      'launch', '--config', config, '--synthetic', '--width', '0.125', '--resolution', '67', '--batch', '8', '--train-samples', '8000',
      '--test-samples', '8', '--checkpoint-every', '0', '--out', out, '--no-progress'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    srun.stdout!.on('data', (d: Buffer) => { text += d.toString(); });
    srun.stderr!.on('data', (d: Buffer) => { text += d.toString(); });
    const exited = new Promise<number | null>((r) => srun.once('exit', r));
    const killer = setTimeout(() => srun.kill('SIGKILL'), 150_000);
    await waitFor('a training step', 90_000, () => existsSync(join(out, 'metrics.jsonl')) && readFileSync(join(out, 'metrics.jsonl'), 'utf8').includes('"step"'))
      .catch((err: Error) => { throw new Error(`${err.message}; srun said: ${text}; squeue: ${spawnSync('squeue', { env, encoding: 'utf8' }).stdout}`); });
    const job = spawnSync('squeue', ['-h', '-o', '%i'], { env, encoding: 'utf8' }).stdout.trim();
    expect(spawnSync('scancel', [job], { env }).status).toBe(0);
    await exited;
    clearTimeout(killer);
    expect(text).toMatch(/0: stopped by SIGTERM at epoch 0 step \d+: checkpoint in/);
    // The exit-code contract, as Slurm records it: the coordinator's task stopped unfinished (143), not finished (0).
    expect(text).toMatch(/task 0: Exited with exit code 143/);
    expect(existsSync(join(out, 'checkpoint.manifest.json')), text).toBe(true);
  }, 180_000);
});
