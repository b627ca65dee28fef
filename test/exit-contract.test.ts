/**
 * The exit-code contract (src/errors.ts, README "Exit codes"), one row per
 * case: the input, the exit code, the one line it must print, and that the
 * command started no process but itself and left none. Bad input is refused
 * before the run directory exists. The table is printed at the end.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { freePorts } from '../src/wire/free-ports.js';
import { alive, Spawned } from './helpers/cluster.js';
import { idxBytes, tempDir, writeTinyDataset } from './helpers/idx-files.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const RECORDER = fileURLToPath(new URL('./fixtures/record-start.mjs', import.meta.url));
const TINY = ['--backend', 'wasm', '--width', '0.125', '--resolution', '67', '--batch', '8', '--no-progress'];
const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

/** A run directory with a checkpoint after 1 step (trained here, in-process). */
async function checkpointed(dir: string): Promise<string> {
  const config: TrainConfig = { ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, trainSamples: 32, testSamples: 8, checkpointEvery: 0 };
  const out = join(dir, 'run');
  await train({ config, outDir: out, maxSteps: 1, log: () => {}, progress: false });
  return out;
}

/** A cluster config file: workers on `hosts`, the coordinator on `coordinator`. */
function clusterFile(dir: string, hosts: string[], coordinator = '127.0.0.1'): string {
  const path = join(dir, 'cluster.json');
  writeFileSync(path, JSON.stringify({
    coordinator: { host: coordinator, port: 47_100 }, transport: 'tcp',
    workers: hosts.map((host, i) => ({ host, device: 'cpu', port: 47_101 + i })),
    // a remote worker would be "ssh'd" by the recorder: it would show up as a started process
    ssh: `${process.execPath} ${RECORDER} {host} {command}`,
  }));
  return path;
}

interface Row {
  name: string;
  /** the command line (after `splitnet`), given a fresh directory */
  args: (dir: string) => string[] | Promise<string[]>;
  code: number;
  line: RegExp;
  /** sent once the run has trained a step */
  signal?: NodeJS.Signals;
  /** bad input leaves no run directory behind (default: exit 2) */
  noRunDir?: boolean;
  /** Node processes it starts besides itself (workers); none may be left */
  workers?: number;
}

const ROWS: Row[] = [
  { name: 'a finished run', code: 0, line: /final test accuracy/, args: (d) => ['train', ...TINY, '--synthetic', '--train-samples', '16', '--test-samples', '8', '--out', join(d, 'run')] },
  { name: 'a flag that is not a number', code: 2, line: /^splitnet: --width: expected a number, got 'wide'$/, args: (d) => ['train', '--width', 'wide', '--out', join(d, 'run')] },
  { name: 'a cluster config that is not JSON', code: 2, line: /^splitnet: .*cluster\.json: not JSON/, args: (d) => { writeFileSync(join(d, 'cluster.json'), '{'); return ['launch', '--config', join(d, 'cluster.json'), '--out', join(d, 'run')]; } },
  {
    name: '1000 local workers', code: 2, line: /^splitnet: .*cluster\.json: workers: 1000 workers on this host, more than maxWorkersPerHost 16/,
    args: (d) => ['launch', '--config', clusterFile(d, Array.from({ length: 1000 }, () => '127.0.0.1')), '--batch', '1000', '--synthetic', '--out', join(d, 'run')],
  },
  {
    name: 'a coordinator host that does not resolve', code: 2, line: /^splitnet: coordinator\.host: host 'coordinator\.invalid' does not resolve \(ENOTFOUND\)/,
    args: (d) => ['launch', ...TINY, '--synthetic', '--config', clusterFile(d, ['127.0.0.1', '127.0.0.1'], 'coordinator.invalid'), '--out', join(d, 'run')],
  },
  {
    name: 'a worker host that does not resolve', code: 2, line: /^splitnet: workers\.1\.host: host 'worker\.invalid' does not resolve \(ENOTFOUND\)/,
    args: (d) => ['launch', ...TINY, '--synthetic', '--config', clusterFile(d, ['127.0.0.1', 'worker.invalid']), '--out', join(d, 'run')],
  },
  { name: 'a data directory that does not exist', code: 2, line: /^splitnet: \/nonexistent: missing train-images-idx3-ubyte/, args: (d) => ['train', ...TINY, '--data', '/nonexistent', '--out', join(d, 'run')] },
  {
    name: 'a labels file with a wrong magic number', code: 2, line: /^splitnet: .*train-labels-idx1-ubyte\.gz: not an IDX file: magic starts 0x0801, expected 0x0000$/,
    args: (d) => {
      writeTinyDataset(d);
      const bad = idxBytes([20], Array.from({ length: 20 }, (_, i) => i % 10));
      bad[0] = 8; bad[1] = 1;
      writeFileSync(join(d, 'train-labels-idx1-ubyte.gz'), gzipSync(bad));
      return ['train', ...TINY, '--data', d, '--out', join(d, 'run')];
    },
  },
  {
    name: 'a truncated images file', code: 2, line: /^splitnet: .*train-images-idx3-ubyte: truncated: header says 20×28×28 = 15680 bytes of data, file has 1000$/,
    args: (d) => {
      writeTinyDataset(d, 20, 10, false);
      const images = join(d, 'train-images-idx3-ubyte');
      writeFileSync(images, readFileSync(images).subarray(0, 16 + 1000));
      return ['launch', ...TINY, '--data', d, '--config', clusterFile(d, ['127.0.0.1', '127.0.0.1']), '--out', join(d, 'run')];
    },
  },
  {
    name: 'a key file that does not exist', code: 2, line: /^splitnet: \/nonexistent\/keys: cannot read the key file \(ENOENT\)$/,
    args: (d) => {
      const config = clusterFile(d, ['127.0.0.1', '127.0.0.1']);
      writeFileSync(config, JSON.stringify({ ...JSON.parse(readFileSync(config, 'utf8')) as object, keys: '/nonexistent/keys' }));
      return ['launch', ...TINY, '--synthetic', '--config', config, '--out', join(d, 'run')];
    },
  },
  { name: '--resume of a directory with no checkpoint', code: 2, noRunDir: false, line: /^splitnet: .*checkpoint\.manifest\.json: not found .*nothing to resume/, args: (d) => { mkdirSync(join(d, 'run')); return ['train', '--resume', join(d, 'run')]; } },
  {
    name: '--resume of a truncated checkpoint', code: 2, line: /^splitnet: .*\.safetensors: \d+ bytes: checkpoint\.manifest\.json names it with \d+ bytes/, noRunDir: false,
    args: async (d) => {
      const run = await checkpointed(d);
      const tensors = join(run, readdirSync(run).find((f) => f.endsWith('.safetensors'))!);
      writeFileSync(tensors, readFileSync(tensors).subarray(0, 1000));
      return ['train', '--resume', run];
    },
  },
  {
    name: '--resume of a tampered checkpoint', code: 2, line: /^splitnet: .*\.safetensors: SHA-256 [0-9a-f]+…: checkpoint\.manifest\.json names it with SHA-256/, noRunDir: false,
    args: async (d) => {
      const run = await checkpointed(d);
      const tensors = join(run, readdirSync(run).find((f) => f.endsWith('.safetensors'))!);
      const bytes = readFileSync(tensors);
      bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 1;
      writeFileSync(tensors, bytes);
      return ['train', '--resume', run];
    },
  },
  {
    name: '--resume with a flag that changes the saved net', code: 2, noRunDir: false,
    line: /^splitnet: --resume .*: --width 0\.5 differs from the run's saved width 0\.125: a resumed run keeps the config it was started with/,
    args: async (d) => ['train', '--resume', await checkpointed(d), '--width', '0.5'],
  },
  { name: '--micro-batches in single mode', code: 2, line: /^splitnet: --micro-batches 3: micro-batches pipeline the towers \(--mode model\); this run is --mode single$/, args: (d) => ['train', '--micro-batches', '3', '--out', join(d, 'run')] },
  { name: '--towers for the one-tower d2l net', code: 2, line: /^splitnet: --towers 2: d2l's AlexNet is one tower; the towers divide --arch original$/, args: (d) => ['train', '--arch', 'd2l', '--towers', '2', '--out', join(d, 'run')] },
  { name: 'a grid of replicas × towers that is not the cluster', code: 2, line: /^splitnet: --mode model runs 2 replicas × 2 towers = 4 workers; the cluster has 2 \(set --towers and --replicas so that replicas × towers = workers\)$/, args: (d) => ['launch', '--mode', 'model', '--replicas', '2', '--out', join(d, 'run')] },
  { name: 'a resolution whose net outgrows the wasm heap', code: 2, line: /^splitnet: d2l AlexNet at 3000×3000, width 0\.25, 64 samples per process would need about [\d.]+ GiB per process, more than the wasm backend's heap/, args: (d) => ['--backend', 'wasm', 'train', '--resolution', '3000', '--out', join(d, 'run')] },
  { name: 'a resolution past what one array holds', code: 2, line: /^splitnet: d2l AlexNet at 20000×20000, width 0\.25: conv1's output would have [\d.e+]+ elements, more than one array can hold/, args: (d) => ['train', '--resolution', '20000', '--out', join(d, 'run')] },
  {
    name: '--train-samples beyond the data set', code: 0, line: /^splitnet: --train-samples 99 is more than the data set's 20 training images: training on all of them$/,
    args: (d) => { writeTinyDataset(d); return ['train', ...TINY, '--data', d, '--train-samples', '99', '--out', join(d, 'run')]; },
  },
  {
    name: 'the disk full while metrics.jsonl is written', code: 1, noRunDir: false, line: /^splitnet: error: .*metrics\.jsonl: wrote 0 of \d+ bytes of a metrics line: ENOSPC \(no space left on device\)$/,
    args: (d) => { mkdirSync(join(d, 'run')); symlinkSync('/dev/full', join(d, 'run', 'metrics.jsonl')); return ['train', ...TINY, '--synthetic', '--train-samples', '16', '--out', join(d, 'run')]; },
  },
  { name: 'a run that diverges', code: 1, line: /^splitnet: error: loss is (NaN|Infinity) at epoch 0 step \d+: the run diverged; lower --lr$/, args: (d) => ['train', ...TINY, '--synthetic', '--train-samples', '64', '--lr', '1e30', '--out', join(d, 'run')] },
  { name: 'a run stopped by SIGINT (Ctrl-C)', code: 130, signal: 'SIGINT', line: /^splitnet: stopped by SIGINT: continue with --resume /, args: (d) => ['train', ...TINY, '--synthetic', '--train-samples', '8000', '--out', join(d, 'run')] },
  {
    name: 'a data-parallel run stopped by SIGTERM', code: 143, signal: 'SIGTERM', workers: 2, line: /^splitnet: stopped by SIGTERM: continue with --resume /,
    args: async (d) => {
      const config = clusterFile(d, ['127.0.0.1', '127.0.0.1']);
      const [coord, ...peers] = await freePorts(3);
      const c = JSON.parse(readFileSync(config, 'utf8')) as { coordinator: { port: number }; workers: Array<{ port: number }> };
      c.coordinator.port = coord!;
      c.workers.forEach((w, i) => { w.port = peers[i]!; });
      writeFileSync(config, JSON.stringify(c));
      return ['launch', ...TINY, '--synthetic', '--train-samples', '8000', '--config', config, '--out', join(d, 'run')];
    },
  },
  { name: 'a run stopped by SIGTERM', code: 143, signal: 'SIGTERM', line: /^splitnet: stopped by SIGTERM: continue with --resume /, args: (d) => ['train', ...TINY, '--synthetic', '--train-samples', '8000', '--out', join(d, 'run')] },
];

/** Runs splitnet with every Node process it starts recorded; sends `signal` once a step is in metrics.jsonl. */
async function run(args: string[], dir: string, signal?: NodeJS.Signals): Promise<{ code: number | null; out: string; started: Array<{ pid: number; argv: string }> }> {
  const record = join(dir, 'started.txt');
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
    cwd: root,
    env: { ...process.env, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${RECORDER}`.trim(), SPLITNET_RECORD_STARTS: record },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  spawned.add(child.pid!);
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  if (signal !== undefined) {
    const metrics = join(dir, 'run', 'metrics.jsonl');
    for (const t0 = Date.now(); !(existsSync(metrics) && readFileSync(metrics, 'utf8').includes('"step"'));) {
      if (Date.now() - t0 > 60_000) throw new Error(`no step within 60 s: ${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill(signal);
  }
  const code = await exited;
  const started = existsSync(record) ? readFileSync(record, 'utf8').trim().split('\n').map((l) => ({ pid: Number(l.split(' ')[0]), argv: l })) : [];
  return { code, out, started };
}

const table: string[] = [];
afterAll(() => {
  const w = Math.max(...table.map((r) => r.split('\t')[0]!.length));
  console.log(['exit-code contract:', ...table.map((r) => { const [c, e, m] = r.split('\t'); return `  ${c!.padEnd(w)}  ${e!.padStart(3)}  ${m}`; })].join('\n'));
});

describe('the exit-code contract', () => {
  for (const row of ROWS) {
    it(`${row.name}: exit ${row.code}, one line, ${row.workers ? `its ${row.workers} workers and nothing else started, none left` : 'no process started or left'}`, async () => {
      const dir = tempDir();
      const args = await row.args(dir);
      const r = await run(args, dir, row.signal);
      const line = r.out.split('\n').find((l) => row.line.test(l));
      table.push(`${row.name}\t${r.code}\t${line ?? '(no such line)'}`);
      expect(r.code, r.out).toBe(row.code);
      expect(line, r.out).toBeDefined();
      if (row.code === 2) expect(r.out.split('\n').filter((l) => l.startsWith('splitnet: ')), r.out).toHaveLength(1);
      if (row.noRunDir ?? row.code === 2) expect(existsSync(join(dir, 'run')), 'a run directory for refused input').toBe(false);
      // Only the command itself ran (no worker, no ssh, unless the row starts workers), and nothing it started is left.
      expect(r.started.map((s) => s.argv), r.out).toHaveLength(1 + (row.workers ?? 0));
      expect(r.started[0]!.argv).toContain('src/cli.ts');
      for (const s of r.started) expect(alive(s.pid), s.argv).toBe(false);
    });
  }
});
