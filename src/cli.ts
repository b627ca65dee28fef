/**
 * The `splitnet` command: verbs only, no logic. Every failure ends as one line
 * on stderr: exit code 2 for a usage problem (flags, files), 1 otherwise.
 */
import { Command, CommanderError, Option } from 'commander';
import { BACKEND_CHOICES, initBackend, type BackendChoice } from './backend.js';
import { UsageError, oneLine } from './errors.js';
import { alexnet } from './model/alexnet.js';
import { ARCHS, type Arch } from './model/spec.js';
import { formatSummary, summarize } from './model/summary.js';

function intArg(flag: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new UsageError(`${flag}: expected a positive integer, got '${v}'`);
    return Number(v);
  };
}

function numberArg(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`${flag}: expected a number, got '${v}'`);
    return n;
  };
}

export function buildProgram(): Command {
  const program = new Command('splitnet')
    .description('AlexNet across processes: the 2012 two-GPU split and data-parallel replicas')
    .addOption(new Option('--backend <name>', 'compute backend').choices(BACKEND_CHOICES).default('auto'))
    .exitOverride()
    .configureOutput({ outputError: () => {} }); // errors are printed once, by main()

  program
    .command('backend')
    .description('activate the compute backend and say which one and why')
    .action(async () => {
      const info = await initBackend(program.opts<{ backend: BackendChoice }>().backend);
      console.log(`backend: ${info.name} (${info.pkg}): ${info.reason}`);
    });

  const model = program.command('model').description('inspect the networks');
  model
    .command('summary')
    .description("every layer's output shape and parameter count (per tower for the two-tower net)")
    .addOption(new Option('--arch <name>', 'architecture').choices(ARCHS).default('d2l'))
    .option('--width <w>', 'channel multiplier', numberArg('--width'), 1)
    .option('--resolution <px>', 'input side in pixels (default 224 for d2l, 227 for original)', intArg('--resolution'))
    .option('--channels <c>', 'input channels, 1 or 3 (default 1 for d2l, 3 for original)', intArg('--channels'))
    .option('--classes <k>', 'output classes (default 10 for d2l, 1000 for original)', intArg('--classes'))
    .option('--json', 'print one JSON object instead of the table')
    .action((o: { arch: Arch; width: number; resolution?: number; channels?: number; classes?: number; json?: boolean }) => {
      const spec = alexnet(o);
      if (o.json) {
        const s = summarize(spec);
        console.log(JSON.stringify({ arch: s.arch, input: s.input, towers: s.towers, layers: s.layers, towerParams: s.towerParams, totalParams: s.totalParams }));
      } else {
        console.log(formatSummary(spec));
      }
    });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0.
      if (err.exitCode === 0) return 0;
      process.stderr.write(`splitnet: ${err.message.replace(/^error: /, '')}\n`);
      return 2;
    }
    const usage = err instanceof UsageError;
    process.stderr.write(`splitnet: ${usage ? '' : 'error: '}${oneLine(err)}\n`);
    if (!usage && process.env.SPLITNET_DEBUG) console.error(err);
    return usage ? 2 : 1;
  }
}

const isEntry = process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (isEntry) {
  process.exitCode = await main(process.argv.slice(2));
}
