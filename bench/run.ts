/**
 * Benchmarks: `npm run bench -- <name> [flags]`. Each prints its figures and
 * writes bench/results/<name>.json. Speed is measured here, never in tests.
 */
import { Command, Option } from 'commander';
import { computeBench } from './compute.js';
import { loopBench } from './loop.js';
import { clusterBench } from './cluster.js';
import { splitBench } from './split.js';

const program = new Command('bench').description('splitnet benchmarks').showHelpAfterError();

program
  .command('compute')
  .description('images/s of one SGD training step: splitnet wasm vs the starting point vs PyTorch CPU')
  .addOption(new Option('--resolution <px>', 'input side').default(96).argParser(Number))
  .addOption(new Option('--width <w>', 'channel multiplier').default(1).argParser(Number))
  .addOption(new Option('--batch <n>', 'batch size').default(32).argParser(Number))
  .addOption(new Option('--steps <n>', 'timed steps').default(8).argParser(Number))
  .addOption(new Option('--warmup <n>', 'untimed steps first').default(2).argParser(Number))
  .option('--no-torch', 'skip the PyTorch reference')
  .option('--python <path>', 'python with torch', '/usr/bin/python3')
  .action(async (o: { resolution: number; width: number; batch: number; steps: number; warmup: number; torch: boolean; python: string }) => {
    await computeBench(o);
  });

program
  .command('loop')
  .description('the single-device training loop vs the bare training step, in one process')
  .addOption(new Option('--resolution <px>', 'input side').default(96).argParser(Number))
  .addOption(new Option('--width <w>', 'channel multiplier').default(1).argParser(Number))
  .addOption(new Option('--batch <n>', 'batch size').default(32).argParser(Number))
  .addOption(new Option('--steps <n>', 'timed steps per variant').default(10).argParser(Number))
  .addOption(new Option('--data <source>', 'where batches come from').choices(['fashion-mnist', 'synthetic']).default('fashion-mnist'))
  .action(async (o: { resolution: number; width: number; batch: number; steps: number; data: 'synthetic' | 'fashion-mnist' }) => {
    await loopBench(o);
  });

program
  .command('cluster')
  .description('data-parallel scaling, the 1-worker cluster vs the in-process loop, bytes on the wire, overlap')
  .addOption(new Option('--resolution <px>', 'input side').default(96).argParser(Number))
  .addOption(new Option('--width <w>', 'channel multiplier').default(1).argParser(Number))
  .addOption(new Option('--batch <n>', 'global batch size').default(64).argParser(Number))
  .addOption(new Option('--steps <n>', 'timed steps per variant').default(8).argParser(Number))
  .addOption(new Option('--warmup <n>', 'untimed steps first').default(2).argParser(Number))
  .addOption(new Option('--passes <n>', 'times each variant runs, in turn').default(2).argParser(Number))
  .addOption(new Option('--data <source>', 'where batches come from').choices(['fashion-mnist', 'synthetic']).default('fashion-mnist'))
  .action(async (o: { resolution: number; width: number; batch: number; steps: number; warmup: number; passes: number; data: 'synthetic' | 'fashion-mnist' }) => {
    await clusterBench(o);
  });

program
  .command('split')
  .description('the 2012 two-tower split over 2 workers vs the two towers in one process; bytes vs the cross-link volume')
  .addOption(new Option('--resolution <px>', 'input side').default(99).argParser(Number))
  .addOption(new Option('--width <w>', 'channel multiplier').default(1).argParser(Number))
  .addOption(new Option('--batch <n>', 'batch size').default(64).argParser(Number))
  .addOption(new Option('--steps <n>', 'timed steps per variant').default(6).argParser(Number))
  .addOption(new Option('--warmup <n>', 'untimed steps first').default(2).argParser(Number))
  .addOption(new Option('--passes <n>', 'times each variant runs, in turn').default(2).argParser(Number))
  .addOption(new Option('--micro <m>', 'micro-batches for the second split variant').default(4).argParser(Number))
  .addOption(new Option('--data <source>', 'where batches come from').choices(['fashion-mnist', 'synthetic']).default('fashion-mnist'))
  .action(async (o: { resolution: number; width: number; batch: number; steps: number; warmup: number; passes: number; micro: number; data: 'synthetic' | 'fashion-mnist' }) => {
    await splitBench(o);
  });

await program.parseAsync(process.argv);
