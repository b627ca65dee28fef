/**
 * The `splitnet` command: verbs only, no logic. Every failure ends as one line
 * on stderr, with the exit code of the contract in errors.ts: 0 finished,
 * 1 failed, 2 bad input, 130/143 stopped by SIGINT/SIGTERM.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { BACKEND_CHOICES, initBackend, type BackendChoice } from './backend.js';
import { closeWebGpu, parseAdapterWant } from './webgpu.js';
import { compareCommand, profileOnSignal, type CompareFlags } from './compare/command.js';
import { exitCodeFor, RunStopped, UsageError, oneLine } from './errors.js';
import { alexnet, specOf } from './model/alexnet.js';
import { ARCHS, type Arch } from './model/spec.js';
import { formatSummary, summarize } from './model/summary.js';
import { fetchFashionMnist } from './data/fetch.js';
import { findDataDir, loadSplit } from './data/fashion-mnist.js';
import { CPU_DEFAULTS, type TrainConfig } from './config/train.js';
import { WIRE_TYPES, type WireType } from './config/choices.js';
import { LAYOUTS } from './parallel/layouts.js';
import { commandLineConfig, newRunConfig, type RecipeName } from './config/train-flags.js';
import { train, type Mode } from './run/loop.js';
import { loadClusterConfig, type ClusterConfig } from './config/cluster.js';
import type { WorkerCommandOverride } from './run/launcher.js';
import { placeRun } from './run/placement-plan.js';
import { readSlurmStep, slurmRole } from './run/slurm.js';
import { runSlurmWorker } from './run/slurm-worker.js';
import { runWorker } from './run/worker.js';
import { readWorkerStdin } from './run/worker-secrets.js';
import type { Heartbeat } from './wire/transport.js';
import { readWorkerKeys, writeRunKeys } from './wire/key-file.js';
import { formatRunSummary } from './run/summary.js';
import { parseEchoPlan, runEcho } from './wire/link-probe.js';
import { createInterface } from 'node:readline';

function intArg(flag: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v) || Number(v) < 1) throw new UsageError(`${flag}: expected a positive integer, got '${v}'`);
    return Number(v);
  };
}

function intOrZeroArg(flag: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new UsageError(`${flag}: expected a whole number, got '${v}'`);
    return Number(v);
  };
}

function listArg(flag: string) {
  return (v: string): number[] => {
    if (v.trim() === '') return [];
    return v.split(',').map((p) => {
      if (!/^\d+$/.test(p.trim())) throw new UsageError(`${flag}: expected comma-separated epochs, got '${v}'`);
      return Number(p);
    });
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
    .option('--adapter <which>', "WebGPU adapter: 'hardware' (default), 'software' (llvmpipe: slow, for tests), an index or a name fragment")
    .exitOverride()
    .configureOutput({ outputError: () => {} }); // errors are printed once, by main()

  program
    .command('backend')
    .description('activate the compute backend and say which one and why')
    .action(async () => {
      const g = program.opts<GlobalFlags>();
      const info = await initBackend(g.backend, parseAdapterWant(g.adapter ?? 'hardware'));
      console.log(`backend: ${info.name} (${info.pkg}): ${info.reason}`);
    });

  const model = program.command('model').description('inspect the networks');
  model
    .command('summary')
    .description("every layer's output shape and parameter count (per tower for the towered net)")
    .addOption(new Option('--arch <name>', 'architecture').choices(ARCHS).default('d2l'))
    .option('--width <w>', 'channel multiplier', numberArg('--width'), 1)
    .option('--resolution <px>', 'input side in pixels (default 224 for d2l, 227 for original)', intArg('--resolution'))
    .option('--channels <c>', 'input channels, 1 or 3 (default 1 for d2l, 3 for original)', intArg('--channels'))
    .option('--classes <k>', 'output classes (default 10 for d2l, 1000 for original)', intArg('--classes'))
    .option('--towers <n>', "towers the original net's kernels are divided between (default 2, the paper's)", intArg('--towers'))
    .option('--json', 'print one JSON object instead of the table')
    .action((o: { arch: Arch; width: number; resolution?: number; channels?: number; classes?: number; towers?: number; json?: boolean }) => {
      const spec = alexnet(o);
      if (o.json) {
        const s = summarize(spec);
        console.log(JSON.stringify({ arch: s.arch, input: s.input, towers: s.towers, layers: s.layers, towerParams: s.towerParams, totalParams: s.totalParams }));
      } else {
        console.log(formatSummary(spec));
      }
    });

  const data = program.command('data').description('the Fashion-MNIST data set');
  data
    .command('fetch')
    .description("download the four IDX files from Fashion-MNIST's own mirror and verify them")
    .option('--data <dir>', 'where to put them', 'data/fashion-mnist')
    .action(async (o: { data: string }) => {
      const r = await fetchFashionMnist(o.data);
      console.log(`Fashion-MNIST in ${r.dir}: ${r.fetched.length} downloaded, ${r.present.length} already present, all verified`);
    });

  data
    .command('check')
    .description('find the data set (--data, $SPLITNET_DATA, ./data/fashion-mnist, Debian\'s directory) and verify every file')
    .option('--data <dir>', 'look only here')
    .action((o: { data?: string }) => {
      const dir = findDataDir(o.data);
      const train = loadSplit(dir, 'train', { verify: true });
      const test = loadSplit(dir, 't10k', { verify: true });
      console.log(`Fashion-MNIST in ${dir}: ${train.count} train, ${test.count} test images, checksums verified`);
    });

  addTrainFlags(program.command('train')
    .description('train AlexNet on Fashion-MNIST (the default run is CPU-sized: a few minutes on 2 cores)')
    .addOption(new Option('--mode <mode>', 'single: this process; data, model, hybrid: the cluster in --config').choices([...LAYOUTS]).default('single'))
    .option('--config <file>', 'cluster config for --mode data|model|hybrid', 'cluster.config.json')
    .option('--replicas <r>', REPLICAS_HELP, intArg('--replicas'))
    .option('--micro-batches <m>', '--mode model: split each batch into m micro-batches', intArg('--micro-batches'))
    .option('--insecure', 'allow "security": "none" with hosts beyond loopback (plain, unauthenticated TCP: only on a network you trust)'))
    .action(async (o: TrainFlags, cmd: Command) => runTrain(withSources(o, cmd), globalFlags(program)));

  addTrainFlags(program.command('launch')
    .description('train across the cluster in --config: one worker process per device, a coordinator here')
    .addOption(new Option('--mode <mode>', "data: replicas with ring all-reduce; model: the 2012 split (--towers N towers, --replicas R of each); hybrid: conv layers data-parallel, fc layers split by unit (Krizhevsky 2014); single: one process").choices([...LAYOUTS]).default('data'))
    .option('--config <file>', 'cluster config', 'cluster.config.json')
    .option('--replicas <r>', REPLICAS_HELP, intArg('--replicas'))
    .option('--no-overlap', 'all-reduce only after backward (for comparison)')
    .option('--micro-batches <m>', '--mode model: split each batch into m micro-batches', intArg('--micro-batches'))
    .option('--link <rate>', 'run each local worker in a network namespace of its own behind a link shaped to <rate> (e.g. 1gbit, 200mbit; needs root, ip and tc)')
    .option('--insecure', 'allow "security": "none" with hosts beyond loopback (plain, unauthenticated TCP: only on a network you trust)'))
    .action(async (o: TrainFlags, cmd: Command) => {
      // Under srun every process of the run is a Slurm task: this one is the coordinator or one worker (run/slurm.ts).
      const step = readSlurmStep(process.env);
      if (step === undefined) return runTrain(withSources(o, cmd), globalFlags(program));
      if (o.mode === 'single') throw new UsageError(`--mode single under srun with ${step.tasks} tasks: run it with srun -n1, or use --mode data|model`);
      if (o.link !== undefined) throw new UsageError('--link under srun: Slurm placed the workers; shape links with --link on a local launch');
      const role = slurmRole(step, cmd.getOptionValueSource('config') === 'cli' ? loadClusterConfig(o.config!) : undefined);
      if (role.kind === 'coordinator') {
        return runTrain(withSources(o, cmd), globalFlags(program), { cluster: role.cluster, workerCommand: (rank) => ({ external: role.where(rank) }) });
      }
      const code = await runSlurmWorker(role, program.opts<GlobalFlags>().backend);
      if (code !== 0) throw new QuietExit(code);
    });

  program
    .command('compare')
    .description('every mode side by side on the same net, data, seed and steps: measured, predicted, forecast (compare.json, report.html, traces)')
    .addOption(new Option('--arch <name>', "architecture ('original' is the two-tower net the split needs)").choices(ARCHS).default('original'))
    .option('--width <w>', 'channel multiplier', numberArg('--width'), 0.25)
    .option('--resolution <px>', 'input side (default: the CPU recipe\'s)', intArg('--resolution'))
    .option('--towers <n>', "towers the original net's kernels are divided between (default 2): model runs on that many workers, grid on 2 × that many", intArg('--towers'))
    .option('--batch <n>', 'global batch size', intArg('--batch'), 64)
    .option('--steps <n>', 'steps per mode (default 12)', intArg('--steps'))
    .option('--epochs <n>', 'epochs per mode, instead of --steps', intArg('--epochs'))
    .option('--modes <list>', 'comma list of single, data (the cluster\'s workers), model (one worker per tower), hybrid (the cluster\'s workers), grid (2 replicas × the towers)', 'single,data,model,hybrid')
    .option('--link <list>', "comma list of links the cluster modes run over: 'loopback', or rates each worker's link is shaped to (e.g. 1gbit,200mbit: network namespaces and tc; needs root)", 'loopback')
    .option('--config <file>', 'cluster config', 'cluster.config.json')
    .option('--test-samples <n>', 'test images each mode is evaluated on', intArg('--test-samples'), 1000)
    .option('--seed <n>', 'the seed every mode shares', intOrZeroArg('--seed'), 1)
    .addOption(new Option('--wire <type>', WIRE_HELP).choices(WIRE_TYPES).default('fp32'))
    .option('--out <dir>', 'where compare.json, report.html and the traces go (default: compare/<time>)')
    .option('--no-forecast-check', 'skip the extra data-parallel runs at 3 and 4 workers that check the step-time model')
    .option('--no-progress', 'no progress bars')
    .action(async (o: CompareFlags) => {
      const g = program.opts<GlobalFlags>();
      await compareCommand(o, g.backend, g.adapter);
    });

  program
    .command('profile', { hidden: true })
    .description('times one training step\'s layers when told to (started by compare, to measure contention)')
    .requiredOption('--config-json <json>', 'the train config')
    .requiredOption('--batch <n>', 'samples', intArg('--batch'))
    .option('--device <d>', "the workers' device: 'cpu', a GPU index or name", 'cpu')
    .action(async (o: { configJson: string; batch: number; device: string }) => {
      await profileOnSignal(o.configJson, o.batch, o.device);
    });

  program
    .command('link-echo', { hidden: true })
    .description('bounces link-probe messages until stdin closes (started by compare inside a shaped link\'s namespace)')
    .action(async () => {
      // One JSON line (the plan, keys included), then the pipe stays open: its end is the signal to stop.
      const lines = createInterface({ input: process.stdin });
      const closed = new Promise<void>((resolve) => lines.once('close', resolve));
      const first = await Promise.race([new Promise<string>((resolve) => lines.once('line', resolve)), closed.then(() => undefined),
        new Promise<'late'>((resolve) => setTimeout(resolve, 10_000, 'late').unref())]);
      if (first === undefined || first === 'late') throw new UsageError(`link-echo: no plan on stdin ${first === 'late' ? 'within 10 s' : 'before it closed'} (compare starts this)`);
      const echo = await runEcho(parseEchoPlan(first));
      console.log('ready');
      await closed;
      await echo.stop();
    });

  program
    .command('keys')
    .description('make CURVE key pairs for a coordinator and its workers, in a file only you can read (for workers started by srun; `launch` makes fresh keys itself)')
    .requiredOption('--out <file>', 'the key file to create (it must not exist)')
    .requiredOption('--workers <n>', 'how many workers', intArg('--workers'))
    .action((o: { out: string; workers: number }) => {
      const keys = writeRunKeys(o.out, o.workers);
      process.stdout.write(`${o.out}: keys for a coordinator and ${o.workers} workers (mode 600); name it as "keys" in the cluster config\n` +
        `coordinator public key ${keys.coordinator.publicKey}\n`);
    });

  program
    .command('worker')
    .description('a worker process (started by the launcher, not by people)')
    .requiredOption('--coordinator <endpoint>', 'the coordinator, e.g. tcp://127.0.0.1:5550')
    .requiredOption('--rank <r>', 'this worker\'s rank', intOrZeroArg('--rank'))
    .option('--device <d>', "'cpu', a GPU index or a fragment of the GPU's name", 'cpu')
    .option('--register-ms <ms>', 'how long to wait for the coordinator', intArg('--register-ms'), 60_000)
    .option('--heartbeat <ms>', "ZMTP heartbeats on the link to the coordinator, 'interval/timeout' in ms (the cluster's)", heartbeatArg, { intervalMs: 1000, timeoutMs: 15_000 })
    .option('--stdin-secrets', 'read the CURVE keys as one JSON line on stdin, and stop when stdin closes (how the launcher starts workers)')
    .option('--keys <file>', 'read the CURVE keys from a `splitnet keys` file (workers started by srun)')
    .action(async (o: { coordinator: string; rank: number; device: string; registerMs: number; heartbeat: Heartbeat; stdinSecrets?: boolean; keys?: string }) => {
      // Ctrl-C in the terminal reaches the whole process group: the coordinator decides.
      process.on('SIGINT', () => {});
      const { backend } = program.opts<GlobalFlags>();
      if (o.stdinSecrets && o.keys !== undefined) throw new UsageError('--stdin-secrets and --keys: give one');
      const given = o.stdinSecrets ? await readWorkerStdin(process.stdin, o.registerMs)
        : o.keys !== undefined ? { keys: readWorkerKeys(o.keys, o.rank) } : {};
      const code = await runWorker({ coordinator: o.coordinator, rank: o.rank, device: o.device, backend, registerMs: o.registerMs, heartbeat: o.heartbeat, ...given });
      // The launcher's pipe was only watched for its end: it must not keep a finished worker alive.
      process.stdin.destroy();
      if (code !== 0) throw new QuietExit(code);
    });

  return program;
}

/** The global flags, and whether --backend was given (it has a default). */
function globalFlags(program: Command): GlobalFlags {
  return { ...program.opts<{ backend: BackendChoice; adapter?: string }>(), backendGiven: program.getOptionValueSource('backend') === 'cli' };
}

/** The train flags, and whether --recipe was given (it has a default). */
function withSources(o: TrainFlags, cmd: Command): TrainFlags {
  return { ...o, recipeGiven: cmd.getOptionValueSource('recipe') === 'cli' };
}

/** 'interval/timeout' in ms, the timeout longer. */
function heartbeatArg(v: string): Heartbeat {
  const m = /^(\d+)\/(\d+)$/.exec(v);
  if (m === null || Number(m[1]) <= 0 || Number(m[2]) <= Number(m[1])) throw new InvalidArgumentError(`expected 'interval/timeout' in ms with the timeout longer, e.g. 1000/15000, got '${v}'`);
  return { intervalMs: Number(m[1]), timeoutMs: Number(m[2]) };
}

const REPLICAS_HELP = '--mode model: replicas of each tower, a grid of replicas × towers workers (default 1)';

const WIRE_HELP = 'how tensors travel between workers: bf16 halves the bytes (gradients, weights, activations; master weights and momentum stay float32)';

function addTrainFlags(cmd: Command): Command {
  return cmd
    .addOption(new Option('--recipe <name>', "preset: 'd2l' is the seed's full recipe (224×224, batch 128, lr 0.01, plain SGD, 10 epochs), for a GPU box").choices(['cpu', 'd2l']).default('cpu'))
    .addOption(new Option('--arch <name>', 'architecture').choices(ARCHS))
    .addOption(new Option('--init <scheme>', "weights (default: the paper's N(0, 0.01) for original, Xavier for d2l)").choices(['paper-normal', 'xavier-uniform']))
    .option('--towers <n>', "towers the original net's kernels are divided between (default 2, the paper's; --mode model runs one per worker)", intArg('--towers'))
    .option('--width <w>', 'channel multiplier', numberArg('--width'))
    .option('--resolution <px>', 'input side (Fashion-MNIST is resized from 28)', intArg('--resolution'))
    .addOption(new Option('--channels <c>', 'input channels').choices(['1', '3']).argParser(Number))
    .option('--batch <n>', 'global batch size', intArg('--batch'))
    .option('--epochs <n>', 'epochs', intArg('--epochs'))
    .option('--lr <rate>', 'learning rate', numberArg('--lr'))
    .option('--momentum <m>', 'SGD momentum (0: plain SGD)', numberArg('--momentum'))
    .option('--weight-decay <wd>', 'L2 weight decay', numberArg('--weight-decay'))
    .option('--lr-decay-epochs <list>', 'epochs (0-based, comma-separated) at which lr is multiplied by --lr-decay', listArg('--lr-decay-epochs'))
    .option('--lr-decay <factor>', 'learning-rate factor at each decay epoch', numberArg('--lr-decay'))
    .option('--seed <n>', 'seed for weights, data order, dropout and augmentation', intOrZeroArg('--seed'))
    .option('--augment', 'random crops and horizontal flips')
    .option('--train-samples <n>', 'train on the first n samples only (0: all)', intOrZeroArg('--train-samples'))
    .option('--test-samples <n>', 'evaluate on the first n test samples only (0: all)', intOrZeroArg('--test-samples'))
    .option('--data <dir>', 'directory with the four Fashion-MNIST files (else $SPLITNET_DATA, ./data/fashion-mnist, /usr/share/datasets/fashion-mnist)')
    .option('--synthetic', 'train on generated images instead (benchmarks)')
    .option('--checkpoint-every <steps>', 'write a checkpoint every n steps (0: only at the end)', intOrZeroArg('--checkpoint-every'))
    .option('--eval-batch <n>', 'batch size for evaluation', intArg('--eval-batch'))
    .addOption(new Option('--wire <type>', `${WIRE_HELP} (default fp32)`).choices(WIRE_TYPES))
    .option('--out <dir>', 'run directory for metrics.jsonl and the checkpoint (default runs/<time>)')
    .option('--resume <dir>', 'continue the run in <dir> from its checkpoint, with its saved config')
    .option('--no-progress', 'no progress bar');
}

/** A non-zero exit already reported (a worker's own): main() exits with its code and prints nothing more. */
class QuietExit extends Error {
  constructor(readonly code: number) { super(`exit ${code}`); }
}

/** `placed`: the cluster and how its workers start, when someone else placed them (Slurm), instead of --config and the device plan. */
async function runTrain(o: TrainFlags, g: GlobalFlags, placed?: { cluster: ClusterConfig; workerCommand: WorkerCommandOverride }): Promise<void> {
  if (o.resume !== undefined && o.out !== undefined && o.resume !== o.out) {
    throw new UsageError('--resume and --out name different directories: a resumed run continues in its own directory');
  }
  const given = commandLineConfig(flagsConfig(o, g), o);
  if (given.adapter !== undefined) parseAdapterWant(given.adapter);
  // A resumed run's config is its checkpoint's: preflight compares the command line with it (train-flags.ts).
  const config: TrainConfig = o.resume !== undefined ? CPU_DEFAULTS : newRunConfig(given, o.recipe);
  if (o.resume === undefined) specOf(config); // checks the size now, not after loading data
  const outDir = o.resume ?? o.out ?? `runs/${new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19)}`;
  const where = placeRun({
    mode: o.mode as Mode, ...(o.config !== undefined ? { config: o.config } : {}), ...(placed ? { placed } : {}),
    ...(o.link !== undefined ? { link: o.link } : {}), insecure: o.insecure === true, log: (l) => console.log(l),
  });
  // Flags for a mode the run does not have are refused (layouts.ts), except after a fallback to one process, which says so above.
  const kept = !where.fellBack;
  const result = await train({
    config, outDir, resume: o.resume !== undefined, mode: where.mode, progress: o.progress, insecure: o.insecure === true,
    ...(o.resume !== undefined ? { resumeGiven: given } : {}),
    ...(where.cluster ? { cluster: where.cluster, workers: where.workers } : {}),
    ...(o.microBatches !== undefined && kept ? { microBatches: o.microBatches } : {}),
    ...(o.replicas !== undefined && kept ? { replicas: o.replicas } : {}),
    ...(o.overlap === false && kept ? { overlap: false } : {}),
    ...(where.workerCommand ? { workerCommand: where.workerCommand } : {}),
  }).finally(() => where.network?.close());
  console.log(formatRunSummary(result, outDir));
  if (result.stoppedBy !== undefined) throw new RunStopped(result.stoppedBy, `stopped by ${result.stoppedBy}: continue with --resume ${outDir}`);
}

/** Options given before the command. */
interface GlobalFlags { backend: BackendChoice; adapter?: string; backendGiven: boolean }

interface TrainFlags {
  mode: string; config?: string; overlap?: boolean; microBatches?: number; replicas?: number; recipe: RecipeName; recipeGiven: boolean; arch?: Arch; init?: 'paper-normal' | 'xavier-uniform'; towers?: number; width?: number; resolution?: number; channels?: 1 | 3; batch?: number;
  epochs?: number; lr?: number; momentum?: number; weightDecay?: number; lrDecayEpochs?: number[]; lrDecay?: number;
  seed?: number; augment?: boolean; trainSamples?: number; testSamples?: number; data?: string; synthetic?: boolean;
  checkpointEvery?: number; evalBatch?: number; wire?: WireType; out?: string; resume?: string; progress: boolean; insecure?: boolean; link?: string;
}

/** The config keys the flags name (undefined where a flag was not given). */
function flagsConfig(o: TrainFlags, g: GlobalFlags): Partial<TrainConfig> {
  return {
    arch: o.arch, init: o.init, towers: o.towers, width: o.width, resolution: o.resolution, channels: o.channels, batch: o.batch, epochs: o.epochs,
    lr: o.lr, momentum: o.momentum, weightDecay: o.weightDecay, lrDecayEpochs: o.lrDecayEpochs, lrDecay: o.lrDecay, seed: o.seed,
    augment: o.augment, trainSamples: o.trainSamples, testSamples: o.testSamples, dataDir: o.data,
    checkpointEvery: o.checkpointEvery, evalBatch: o.evalBatch, wire: o.wire,
    ...(o.synthetic ? { data: 'synthetic' as const } : {}),
    // --backend has a default ('auto'): a new run takes it; a resumed one only when it was given.
    ...(g.backendGiven || o.resume === undefined ? { backend: g.backend } : {}),
    ...(g.adapter !== undefined ? { adapter: g.adapter } : {}),
  } as Partial<TrainConfig>;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof QuietExit) return err.code;
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0.
      if (err.exitCode === 0) return 0;
      process.stderr.write(`splitnet: ${err.message.replace(/^error: /, '')}\n`);
      return 2;
    }
    const code = exitCodeFor(err);
    const failed = code === 1;
    process.stderr.write(`splitnet: ${failed ? 'error: ' : ''}${oneLine(err)}\n`);
    if (failed && process.env.SPLITNET_DEBUG) console.error(err);
    return code;
  } finally {
    closeWebGpu(); // Dawn's instance would keep Node running
  }
}

const isEntry = process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (isEntry) {
  process.exitCode = await main(process.argv.slice(2));
}
