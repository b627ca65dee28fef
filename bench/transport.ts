/**
 * `npm run bench -- transport`: which transport local workers should use.
 * Four variants, each measured two ways:
 *   tcp + CURVE, tcp plain, ipc (private 0700 dir) plain, ipc + CURVE
 *   - raw throughput: two workers' communicators (as the towers use them) in this
 *     process, `--messages` messages of `--mib` MiB sent and received
 *   - a 2-worker data-parallel step: a real cluster (two worker processes),
 *     d2l AlexNet on wasm, median step time over the timed steps
 * On a small, shared machine the speed drifts: the variants run in turn,
 * `--passes` times, and each figure is a median over all its passes; the
 * ratios compare variants of the same run. Writes bench/results/transport.json.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseClusterConfig } from '../src/config/cluster.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { generateRunKeys, ZapGate } from '../src/wire/curve.js';
import { freePorts } from '../src/wire/free-ports.js';
import { Communicator } from '../src/wire/communicator.js';
import { createPrivateDir, removePrivateDir } from '../src/wire/private-dir.js';
import { endpoint } from '../src/wire/transport.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface TransportBenchOptions { mib: number; messages: number; resolution: number; width: number; batch: number; steps: number; warmup: number; passes: number }

interface Variant { name: string; transport: 'tcp' | 'ipc'; security: 'curve' | 'none' }
const VARIANTS: Variant[] = [
  { name: 'tcp + CURVE', transport: 'tcp', security: 'curve' },
  { name: 'tcp plain', transport: 'tcp', security: 'none' },
  { name: 'ipc (private dir) plain', transport: 'ipc', security: 'none' },
  { name: 'ipc (private dir) + CURVE', transport: 'ipc', security: 'curve' },
];

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Bytes per second from one communicator to another: `messages` of `mib` MiB, sent back to back and all received. */
async function throughput(v: Variant, o: TransportBenchOptions): Promise<number> {
  const dir = v.transport === 'ipc' ? createPrivateDir() : undefined;
  const [pa, pb] = await freePorts(2);
  const ep = (p: number) => endpoint(v.transport, '127.0.0.1', p, dir);
  const keys = v.security === 'curve' ? generateRunKeys(2) : undefined;
  const common = { maxMessageBytes: 2 ** 30, heartbeat: { intervalMs: 1_000, timeoutMs: 15_000 }, waitMs: 60_000 };
  const links: Communicator[] = [];
  const peers = [ep(pa!), ep(pb!)];
  try {
    for (const rank of [0, 1]) {
      links.push(await Communicator.open({
        rank, world: 2, peers, talksTo: [1 - rank], ...common,
        ...(keys ? { keys: { own: keys.workers[rank]!, workers: keys.workers.map((k) => k.publicKey) } } : {}),
      }));
    }
    const [a, b] = links as [Communicator, Communicator];
    const floats = (o.mib * 2 ** 20) / 4;
    const payload = new Float32Array(floats).fill(0.5);
    // one message first: the connection and its handshake are not the transport's throughput
    a.send(1, '0/0/warm/fwd', payload.slice());
    await b.receive(0, '0/0/warm/fwd', floats);
    const t0 = performance.now();
    for (let i = 0; i < o.messages; i++) a.send(1, `1/${i}/fc6/fwd`, payload.slice(0)); // a copy each: sends are zero-copy
    for (let i = 0; i < o.messages; i++) await b.receive(0, `1/${i}/fc6/fwd`, floats);
    const s = (performance.now() - t0) / 1000;
    return (o.messages * o.mib * 2 ** 20) / s;
  } finally {
    for (const l of links) l.close();
    ZapGate.running()?.close();
    if (dir) removePrivateDir(dir);
  }
}

/** Median wall time of a 2-worker data-parallel step over `v`. */
async function dataParallelStep(v: Variant, o: TransportBenchOptions): Promise<number> {
  const total = o.steps + o.warmup;
  const cfg: TrainConfig = {
    ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', resolution: o.resolution, width: o.width, batch: o.batch,
    epochs: 1, trainSamples: total * o.batch, testSamples: o.batch, checkpointEvery: 0, evalBatch: o.batch,
  };
  const [coord, ...ports] = await freePorts(3);
  const cluster = parseClusterConfig({
    coordinator: { host: '127.0.0.1', port: coord }, transport: v.transport, security: v.security,
    workers: ports.map((port) => ({ host: '127.0.0.1', device: 'cpu', port })),
  });
  const outDir = mkdtempSync(join(tmpdir(), 'splitnet-bench-'));
  try {
    const r = await train({ cluster, workers: cluster.workers, config: cfg, outDir, mode: 'data', log: () => {}, progress: false });
    if (!r.finished) throw new Error(`${v.name}: the run did not finish`);
    return median(r.stats.slice(o.warmup).map((s) => s.wallMs));
  } finally {
    rmSync(outDir, { recursive: true, force: true });
  }
}

export async function transportBench(o: TransportBenchOptions): Promise<void> {
  console.log(`transport: raw throughput of one peer link (${o.messages} × ${o.mib} MiB) and a 2-worker data-parallel step ` +
    `(d2l AlexNet ${o.resolution}×${o.resolution}, width ${o.width}, global batch ${o.batch}, ${o.steps} timed steps after ${o.warmup}, wasm); ` +
    `${o.passes} passes, variants interleaved`);
  const raw = new Map<string, { bytesPerSec: number[]; stepMs: number[] }>(VARIANTS.map((v) => [v.name, { bytesPerSec: [], stepMs: [] }]));
  for (let pass = 0; pass < o.passes; pass++) {
    for (const v of VARIANTS) raw.get(v.name)!.bytesPerSec.push(await throughput(v, o));
    for (const v of VARIANTS) raw.get(v.name)!.stepMs.push(await dataParallelStep(v, o));
    console.log(`  pass ${pass + 1}/${o.passes} done`);
  }
  const base = VARIANTS[0]!.name;
  const figures = VARIANTS.map((v) => {
    const r = raw.get(v.name)!;
    return { variant: v.name, transport: v.transport, security: v.security, mibPerSec: median(r.bytesPerSec) / 2 ** 20, stepMs: median(r.stepMs) };
  });
  const ref = figures.find((f) => f.variant === base)!;
  console.log(`  ${'variant'.padEnd(26)} ${'MiB/s'.padStart(8)} ${'× tcp+CURVE'.padStart(12)} ${'DP step ms'.padStart(11)} ${'× tcp+CURVE'.padStart(12)}`);
  for (const f of figures) {
    console.log(`  ${f.variant.padEnd(26)} ${f.mibPerSec.toFixed(0).padStart(8)} ${(f.mibPerSec / ref.mibPerSec).toFixed(2).padStart(12)} ` +
      `${f.stepMs.toFixed(1).padStart(11)} ${(f.stepMs / ref.stepMs).toFixed(3).padStart(12)}`);
  }
  const out = join(here, 'results', 'transport.json');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({
    bench: 'transport', date: new Date().toISOString(), options: o, figures,
    ratiosToTcpCurve: Object.fromEntries(figures.map((f) => [f.variant, { throughput: f.mibPerSec / ref.mibPerSec, stepMs: f.stepMs / ref.stepMs }])),
    raw: Object.fromEntries(raw),
  }, null, 2) + '\n');
  console.log(`  wrote ${out}`);
}
