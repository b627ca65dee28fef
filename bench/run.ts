/**
 * Benchmarks: `npm run bench -- <name> [flags]`. Each prints its figures and
 * writes bench/results/<name>.json. Speed is measured here, never in tests.
 */
import { Command, Option } from 'commander';
import { computeBench } from './compute.js';
import { loopBench } from './loop.js';
import { clusterBench } from './cluster.js';
import { splitBench } from './split.js';
import { transportBench } from './transport.js';
import { webGpuKernelBench } from './webgpu-kernels.js';
import { linksBench } from './links.js';
import { layoutsBench } from './layouts.js';

const program = new Command('bench').description('splitnet benchmarks').showHelpAfterError();

const num = (flags: string, description: string, value: number) => new Option(flags, description).default(value).argParser(Number);
const dataOption = () => new Option('--data <source>', 'where batches come from').choices(['fashion-mnist', 'synthetic']).default('fashion-mnist');

/** The flags every benchmark shares, with its own defaults. */
function sized(name: string, description: string, d: { resolution: number; batch: number; steps: number }): Command {
  return program
    .command(name)
    .description(description)
    .addOption(num('--resolution <px>', 'input side', d.resolution))
    .addOption(num('--width <w>', 'channel multiplier', 1))
    .addOption(num('--batch <n>', 'global batch size', d.batch))
    .addOption(num('--steps <n>', 'timed steps per variant', d.steps));
}

type Data = 'synthetic' | 'fashion-mnist';
interface Sized { resolution: number; width: number; batch: number; steps: number }

sized('compute', 'images/s of one SGD training step: splitnet wasm vs the starting point vs PyTorch CPU', { resolution: 96, batch: 32, steps: 8 })
  .addOption(num('--warmup <n>', 'untimed steps first', 2))
  .option('--no-torch', 'skip the PyTorch reference')
  .option('--python <path>', 'python with torch', '/usr/bin/python3')
  .action(async (o: Sized & { warmup: number; torch: boolean; python: string }) => computeBench(o));

sized('loop', 'the single-device training loop vs the bare training step, in one process', { resolution: 96, batch: 32, steps: 10 })
  .addOption(dataOption())
  .action(async (o: Sized & { data: Data }) => loopBench(o));

sized('cluster', 'data-parallel scaling, the 1-worker cluster vs the in-process loop, bytes on the wire, overlap', { resolution: 96, batch: 64, steps: 8 })
  .addOption(num('--warmup <n>', 'untimed steps first', 2))
  .addOption(num('--passes <n>', 'times each variant runs, in turn', 2))
  .addOption(dataOption())
  .action(async (o: Sized & { warmup: number; passes: number; data: Data }) => clusterBench(o));

sized('split', 'the 2012 two-tower split over 2 workers vs the two towers in one process; bytes vs the cross-link volume', { resolution: 99, batch: 64, steps: 6 })
  .addOption(num('--warmup <n>', 'untimed steps first', 2))
  .addOption(num('--passes <n>', 'times each variant runs, in turn', 2))
  .addOption(num('--micro <m>', 'micro-batches for the second split variant', 4))
  .addOption(dataOption())
  .action(async (o: Sized & { warmup: number; passes: number; micro: number; data: Data }) => splitBench(o));

sized('layouts', 'every layout of the original net (data, the split, hybrid; with --four N-way towers, hybrid ×4 and 2 × 2) vs one process: img/s, bytes vs the shapes, equivalence', { resolution: 99, batch: 64, steps: 4 })
  .addOption(num('--warmup <n>', 'untimed steps first', 2))
  .option('--four', 'also the 4-worker layouts (oversubscribed on 2 cores)')
  .addOption(dataOption())
  .action(async (o: Sized & { warmup: number; four?: boolean; data: Data }) => layoutsBench({ ...o, four: o.four === true }));

sized('links', 'each mode over a shaped link vs loopback: overlap, micro-batches (and the wire type) where the network costs (root: namespaces and tc)', { resolution: 96, batch: 64, steps: 4 })
  .option('--link <rate>', 'the rate each worker\'s link is shaped to', '1gbit')
  .addOption(num('--warmup <n>', 'untimed steps first', 2))
  .addOption(num('--passes <n>', 'times each variant runs, in turn', 1))
  .addOption(num('--micro <m>', 'micro-batches for the second split variant', 4))
  .addOption(dataOption())
  .action(async (o: Sized & { link: string; warmup: number; passes: number; micro: number; data: Data }) => linksBench(o));

sized('transport', 'local workers: tcp vs ipc in a private directory, each with and without CURVE: raw throughput and a 2-worker data-parallel step', { resolution: 67, batch: 16, steps: 4 })
  .addOption(num('--warmup <n>', 'untimed steps first', 2))
  .addOption(num('--passes <n>', 'times each variant runs, in turn', 2))
  .addOption(num('--mib <n>', 'MiB per message of the throughput test', 4))
  .addOption(num('--messages <n>', 'messages per throughput test', 32))
  .action(async (o: Sized & { warmup: number; passes: number; mib: number; messages: number }) => transportBench(o));

sized('webgpu-kernels', "WebGPU's convolution gradients per layer: tfjs's naive filter gradient vs ours as matmuls; direct vs matmul input gradient", { resolution: 224, batch: 32, steps: 2 })
  .option('--adapter <which>', "'software' (llvmpipe: the proxy) or 'hardware'", 'software')
  .option('--layers <list>', 'comma list of conv layers (default: all)')
  .option('--no-input-gradients', 'time the filter gradients only')
  .action(async (o: Sized & { adapter: string; layers?: string; inputGradients: boolean }) => webGpuKernelBench({ ...o, runs: o.steps }));

await program.parseAsync(process.argv);
