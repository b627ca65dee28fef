/**
 * The exit-code contract, in one place (the README's "Exit codes" says the
 * same). Every `splitnet` command ends with one of:
 *   0    finished
 *   1    the run failed: a worker, the network, the disk
 *   2    bad input: flags, config, data files, a checkpoint to resume; found
 *        before any process starts wherever it can be
 *   130  stopped by SIGINT (Ctrl-C), after its checkpoint: 128 + 2
 *   143  stopped by SIGTERM (scancel, a scheduler), after its checkpoint: 128 + 15
 * The codes of a stopped run are the shell's own for a process killed by the
 * signal, so `&&`, Slurm and CI read a stopped run as not finished.
 */
import { constants } from 'node:os';

export const EXIT = { finished: 0, failed: 1, badInput: 2 } as const;

/** A problem with what the user asked for (flags, config, files): printed as one line, exit code 2. */
export class UsageError extends Error {
  override readonly name: string = 'UsageError';
}

/**
 * A data file that is missing, truncated, corrupt or does not match its
 * partner (a data set's file, or a checkpoint to resume): bad input, exit 2.
 */
export class DataFileError extends UsageError {
  override readonly name = 'DataFileError';
  constructor(readonly file: string, problem: string) {
    super(`${file}: ${problem}`);
  }
}

/** errno codes that say the file given is not there or not readable by us (bad input), as against the disk failing. */
export const INPUT_ERRNOS = new Set(['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'ELOOP', 'ENAMETOOLONG']);

/** A run that stopped on a signal after writing its checkpoint: exit 128 + the signal's number. */
export class RunStopped extends Error {
  override readonly name = 'RunStopped';
  constructor(readonly signal: NodeJS.Signals, message: string) {
    super(message);
  }
}

/** 130 for SIGINT, 143 for SIGTERM: what a shell reports for a process the signal ended. */
export function stoppedExitCode(signal: NodeJS.Signals): number {
  return 128 + (constants.signals[signal] ?? 0);
}

/** The exit code for an error that ends a command (the contract above). */
export function exitCodeFor(err: unknown): number {
  if (err instanceof RunStopped) return stoppedExitCode(err.signal);
  if (err instanceof UsageError) return EXIT.badInput;
  return EXIT.failed;
}

/** Formats any thrown value as the one line a CLI prints. */
export function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0] ?? text;
}
