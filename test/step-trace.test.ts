/**
 * The Chrome trace of one training step, from real strategies: two
 * data-parallel replicas on a ring and the two towers of the 2012 split, each
 * pair in this process over loopback sockets (a scaled-down net, one step).
 * Every layer's forward and backward is its own span, nested inside the
 * step's compute span, on the clock of the sockets' sends and waits: so the
 * trace shows which transfer ran behind which layer.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { chromeTrace, type TraceEvent } from '../src/compare/chrome-trace.js';
import type { ModeMeasure, WorkerMeasure } from '../src/compare/types.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { loadRunData } from '../src/data/run-data.js';
import { specOf } from '../src/model/alexnet.js';
import { DataParallelReplica } from '../src/parallel/data-parallel.js';
import { ModelParallelTower } from '../src/parallel/model-parallel.js';
import type { StepInput, StepResult, Strategy } from '../src/parallel/strategy.js';
import { freePorts } from '../src/wire/free-ports.js';
import { Communicator } from '../src/wire/communicator.js';
import { setupBackends } from './helpers/backends.js';

beforeAll(setupBackends);

const BASE: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
  trainSamples: 16, testSamples: 8, lr: 0.01, momentum: 0.9, checkpointEvery: 0,
};
const WIRE = { heartbeat: { intervalMs: 500, timeoutMs: 5_000 }, maxMessageBytes: 2 ** 26, waitMs: 20_000 };
const STEP: StepInput = { globalStep: 0, epoch: 0, step: 0, lr: 0.01 };
/** Small buckets: fc8's gradients fill the first long before conv1's backward. */
const BUCKET_BYTES = 256 * 1024;

const open: Strategy[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
});

const endpoints = async (n: number) => (await freePorts(n)).map((p) => `tcp://127.0.0.1:${p}`);

/** Both workers' step results drawn as compare draws them. */
function traceOf(results: StepResult[]): TraceEvent[] {
  const workers = results.map((r, rank) => ({ rank, spans: r.detail!.spans.map((s) => ({ ...s, step: 0 })) }) as unknown as WorkerMeasure);
  return chromeTrace({ workers } as unknown as ModeMeasure).traceEvents;
}

type Complete = Extract<TraceEvent, { ph: 'X' }>;
const end = (e: Complete) => e.ts + e.dur;

/** One worker's complete events, and its checks: one forward and one backward span per layer, inside the step's compute span. */
function layerSpans(events: TraceEvent[], pid: number, layers: string[]) {
  const mine = events.filter((e): e is Complete => e.ph === 'X' && e.pid === pid);
  const step = mine.filter((e) => e.name.startsWith('forward + backward'));
  expect(step, `worker pid ${pid}: the step's compute span`).toHaveLength(1);
  const outer = step[0]!;
  const byName = (name: string) => {
    const found = mine.filter((e) => e.name === name);
    expect(found, `worker pid ${pid}: spans named '${name}'`).toHaveLength(1);
    const e = found[0]!;
    expect(e.cat).toBe('compute');
    expect(e.tid, `${name} on the step's thread`).toBe(outer.tid);
    expect(e.ts, `${name} starts inside the step`).toBeGreaterThanOrEqual(outer.ts);
    expect(end(e), `${name} ends inside the step`).toBeLessThanOrEqual(end(outer));
    return e;
  };
  const forward = layers.map((l) => byName(`${l} forward`));
  const backward = layers.map((l) => byName(`${l} backward`));
  // forward in layer order, backward in reverse, never overlapping
  forward.slice(1).forEach((e, i) => expect(e.ts, `${layers[i + 1]} forward after ${layers[i]}'s`).toBeGreaterThanOrEqual(end(forward[i]!)));
  backward.slice(0, -1).forEach((e, i) => expect(e.ts, `${layers[i]} backward after ${layers[i + 1]}'s`).toBeGreaterThanOrEqual(end(backward[i + 1]!)));
  expect(backward.at(-1)!.ts).toBeGreaterThanOrEqual(end(forward.at(-1)!));
  return { mine, forward: new Map(layers.map((l, i) => [l, forward[i]!])), backward: new Map(layers.map((l, i) => [l, backward[i]!])) };
}

describe('the trace of a step: every layer its own span, on the sockets\' clock', () => {
  it('data-parallel: a forward and a backward span per layer inside the step, and bucket 0 sent while backward still runs', async () => {
    const cfg = BASE;
    const data = loadRunData(cfg);
    const peers = await endpoints(2);
    const replicas = await Promise.all([0, 1].map(async (rank) => {
      const comm = await Communicator.open({ rank, world: 2, peers, talksTo: [1 - rank], ...WIRE });
      const r = await DataParallelReplica.open(cfg, data, comm.ring([0, 1]), BUCKET_BYTES, () => comm.close());
      open.push(r);
      return r;
    }));
    expect(replicas[0]!.buckets.length, 'buckets').toBeGreaterThan(1);
    const events = traceOf(await Promise.all(replicas.map((r) => r.step(STEP))));
    const layers = specOf(cfg).layers.map((l) => l.name);
    for (const pid of [1, 2]) {
      const { mine, backward } = layerSpans(events, pid, layers);
      const lastBackward = backward.get(layers[0]!)!; // conv1: the last layer backward runs
      const sends = mine.filter((e) => e.cat === 'send' && e.name === 'send bucket 0');
      expect(sends.length, `worker pid ${pid}: sends of bucket 0`).toBeGreaterThan(0);
      const first = Math.min(...sends.map((e) => e.ts));
      // the overlap the trace is for: the first bucket travels behind the rest of backward
      expect(first, 'bucket 0 sent after fc8 backward').toBeGreaterThanOrEqual(end(backward.get(layers.at(-1)!)!));
      expect(first, 'bucket 0 sent before conv1 backward ends').toBeLessThan(end(lastBackward));
    }
  });

  it('model-parallel: a forward and a backward span per layer inside the step, and conv3\'s exchanges between pool2 and conv3, both ways', async () => {
    const cfg: TrainConfig = { ...BASE, arch: 'original', channels: 3, momentum: 0 };
    const data = loadRunData(cfg);
    const peers = await endpoints(2);
    const links = await Promise.all([0, 1].map((rank) => Communicator.open({ rank, world: 2, peers, talksTo: [1 - rank], ...WIRE })));
    const towers = await Promise.all(links.map((link, rank) =>
      ModelParallelTower.open(cfg, data, link, { tower: rank, replica: 0, replicas: 1, row: [0, 1] }, 1, undefined, BUCKET_BYTES, () => link.close())));
    open.push(...towers);
    const events = traceOf(await Promise.all(towers.map((t) => t.step(STEP))));
    const layers = specOf(cfg).layers.map((l) => l.name);
    for (const pid of [1, 2]) {
      const { mine, forward, backward } = layerSpans(events, pid, layers);
      // conv3's link, both ways: forward sends the pooled conv2 maps after pool2 has run and awaits the other
      // tower's before conv3 runs on both; backward sends the other tower's slice of dL/d(conv3 input) after conv3's
      // backward and awaits its own before pool2's backward. (Sends are labelled by link only, and a transfer under
      // 0.05 ms is not drawn: each one found is placed by its time.)
      const fwdGap = [end(forward.get('pool2')!), forward.get('conv3')!.ts];
      const bwdGap = [end(backward.get('conv3')!), backward.get('pool2')!.ts];
      const transfers = mine.filter((e) => e.name === 'send conv3' || e.name.startsWith('wait conv3'));
      expect(transfers.length, `worker pid ${pid}: transfers on conv3's link`).toBeGreaterThan(0);
      for (const t of transfers) {
        const inside = ([lo, hi]: number[]) => t.ts >= lo! && end(t) <= hi!;
        expect(inside(fwdGap) || inside(bwdGap), `${t.name} at ${t.ts}–${end(t)} µs: between pool2 and conv3 (forward ${fwdGap}, backward ${bwdGap})`).toBe(true);
      }
    }
  });
});
