/**
 * `splitnet compare`'s flags into a run: one train config for every mode,
 * the cluster, the output directory; then the table and the files.
 */
import { join } from 'node:path';
import { loadClusterConfig } from '../config/cluster.js';
import { CPU_DEFAULTS, parseTrainConfig, type TrainConfig } from '../config/train.js';
import type { BackendChoice, WireType } from '../config/choices.js';
import type { Arch } from '../config/choices.js';
import { UsageError } from '../errors.js';
import { specOf } from '../model/alexnet.js';
import { COMPARE_MODES, type CompareMode } from './types.js';
import { formatCompareTable, writeCompareOutputs } from './output.js';
import { LOOPBACK, runCompare } from './run-compare.js';
import { parseLinkRate, whyNoShaping } from '../run/shaped-network.js';
import { isLocal } from '../config/cluster.js';
import { profileLayers } from './profile-layers.js';
import { initBackend } from '../backend.js';
import { adapterFor } from '../webgpu.js';
import { createInterface } from 'node:readline';

export interface CompareFlags {
  arch: Arch; width: number; resolution?: number; towers?: number; batch: number; steps?: number; epochs?: number;
  modes: string; link: string; config: string; testSamples: number; seed: number; wire: WireType; out?: string; forecastCheck: boolean; progress: boolean;
}

const MODES: readonly string[] = COMPARE_MODES;

/** '--modes single,data,model,hybrid,grid' → the modes, in the order given, each once. */
export function parseModes(text: string): CompareMode[] {
  const modes = text.split(',').map((m) => m.trim()).filter((m) => m !== '');
  if (modes.length === 0) throw new UsageError(`--modes: expected a comma list of ${MODES.join(', ')}, got '${text}'`);
  for (const m of modes) if (!MODES.includes(m)) throw new UsageError(`--modes: '${m}' is not a mode: expected ${MODES.join(', ')}`);
  const dup = modes.find((m, i) => modes.indexOf(m) !== i);
  if (dup !== undefined) throw new UsageError(`--modes: '${dup}' is given twice`);
  return modes as CompareMode[];
}

/** '--link loopback,1gbit,200mbit' → the links, each once; each rate checked (shaped-network.ts). */
export function parseLinks(text: string): string[] {
  const links = text.split(',').map((l) => l.trim().toLowerCase()).filter((l) => l !== '');
  if (links.length === 0) throw new UsageError(`--link: expected a comma list of ${LOOPBACK} and rates like 1gbit, got '${text}'`);
  const names = links.map((l) => (l === LOOPBACK ? l : parseLinkRate(l).text));
  const dup = names.find((l, i) => names.indexOf(l) !== i);
  if (dup !== undefined) throw new UsageError(`--link: '${dup}' is given twice`);
  return names;
}

export async function compareCommand(o: CompareFlags, backend: BackendChoice, adapter: string | undefined): Promise<void> {
  if (o.steps !== undefined && o.epochs !== undefined) throw new UsageError('--steps and --epochs: give one budget, not both');
  const modes = parseModes(o.modes);
  const links = parseLinks(o.link);
  const cluster = loadClusterConfig(o.config);
  if (links.some((l) => l !== LOOPBACK)) {
    // Refused before anything runs: shaping needs root, ip and tc, and workers on this host.
    const why = whyNoShaping();
    if (why !== undefined) throw new UsageError(`--link ${o.link}: ${why}`);
    const remote = cluster.workers.filter((w) => !isLocal(w.host)).map((w) => w.host);
    if (remote.length > 0) throw new UsageError(`--link ${o.link}: shapes the links of workers on this host; ${[...new Set(remote)].join(', ')} in ${o.config} ${remote.length === 1 ? 'is' : 'are'} remote`);
  }
  const steps = o.steps ?? (o.epochs === undefined ? 12 : undefined);
  const raw: TrainConfig = {
    ...CPU_DEFAULTS, arch: o.arch, width: o.width, batch: o.batch, seed: o.seed, wire: o.wire, backend, checkpointEvery: 0,
    testSamples: o.testSamples, epochs: o.epochs ?? 1, trainSamples: steps === undefined ? 0 : steps * o.batch,
    ...(o.resolution !== undefined ? { resolution: o.resolution } : {}),
    ...(o.towers !== undefined ? { towers: o.towers } : {}),
    // The 2012 net takes RGB (the grey images repeated) and, at CPU width, Xavier weights (see `train --mode model`).
    ...(o.arch === 'original' ? { channels: 3 as const, init: 'xavier-uniform' as const } : {}),
    ...(adapter !== undefined ? { adapter } : {}),
  };
  const config = parseTrainConfig(raw, 'flags');
  specOf(config); // the size is checked before anything runs
  const outDir = o.out ?? join('compare', new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19));
  const result = await runCompare({ config, modes, links, cluster, outDir, checkForecast: o.forecastCheck, progress: o.progress, log: (l) => console.log(l) });
  console.log('');
  console.log(formatCompareTable(result));
  const files = writeCompareOutputs(result, outDir);
  console.log(`\nwrote ${files.join(', ')}`);
  console.log(`open ${join(outDir, 'report.html')} in a browser; load a trace-*.json in https://ui.perfetto.dev or chrome://tracing`);
}

/** Rounds of layer timing each contention process runs after 'go' (the first is not counted). */
const CONTENTION_ROUNDS = 3;

/**
 * `splitnet profile` (hidden; compare starts it): warms up, says 'ready',
 * waits for 'go' on stdin so that every such process starts computing at
 * once, times one step's layers in rounds (CONTENTION_ROUNDS), prints
 * {"computeMs": …} and exits.
 */
export async function profileOnSignal(configJson: string, batch: number, device: string): Promise<void> {
  let raw: unknown;
  try {
    raw = JSON.parse(configJson);
  } catch (err) {
    throw new UsageError(`--config-json: not JSON (${(err as Error).message})`);
  }
  const cfg = parseTrainConfig(raw, '--config-json');
  await initBackend(cfg.backend, adapterFor(device, cfg.adapter));
  await profileLayers(cfg, batch); // compiles and allocates: not timed
  console.log('ready');
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() !== 'go') continue;
    // Three rounds, the first not counted: processes told to go at once still
    // start their first round apart (each builds its net first), so only later
    // rounds surely compute side by side, as workers do for a whole run.
    const rounds: number[] = [];
    for (let r = 0; r < CONTENTION_ROUNDS; r++) {
      const { layers, optimizerMs } = await profileLayers(cfg, batch);
      rounds.push(layers.reduce((n, l) => n + l.forwardMs + l.backwardMs, 0) + optimizerMs);
    }
    const counted = rounds.slice(1);
    console.log(JSON.stringify({ computeMs: counted.reduce((a, b) => a + b, 0) / counted.length }));
    break;
  }
  lines.close();
}
