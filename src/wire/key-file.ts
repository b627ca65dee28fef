/**
 * A run's CURVE keys in a file (`splitnet keys`): for processes the launcher
 * does not start itself (srun starts every task), which each read the file
 * from a shared path. The file holds secret keys: it is written 0600 and
 * refused when others may read it, as ssh refuses a private key.
 */
import { openSync, readFileSync, statSync, writeSync, closeSync, fsyncSync } from 'node:fs';
import { z } from 'zod';
import { UsageError } from '../errors.js';
import { checkKey, generateRunKeys, workerKeys, type RunKeys, type WorkerKeys } from './curve.js';

const Pair = z.strictObject({ publicKey: z.string(), secretKey: z.string() });
const KeyFile = z.strictObject({ format: z.literal('splitnet-keys'), version: z.literal(1), coordinator: Pair, workers: z.array(Pair).min(1) });

/** Writes fresh keys for a coordinator and `world` workers to `path`, which must not exist yet. */
export function writeRunKeys(path: string, world: number): RunKeys {
  const keys = generateRunKeys(world);
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (err) {
    throw new UsageError(`${path}: cannot create the key file (${(err as NodeJS.ErrnoException).code ?? String(err)}); it must not exist yet`);
  }
  try {
    const text = Buffer.from(`${JSON.stringify({ format: 'splitnet-keys', version: 1, ...keys }, null, 2)}\n`);
    if (writeSync(fd, text) !== text.length) throw new Error(`${path}: short write`);
    fsyncSync(fd);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw e.code !== undefined ? new Error(`${path}: cannot write the key file (${e.code})`) : err;
  } finally {
    closeSync(fd);
  }
  return keys;
}

/** Reads a key file with keys for at least `world` workers (all of them are returned); every problem is one line naming the file. */
export function readRunKeys(path: string, world: number): RunKeys {
  let text: string;
  try {
    // Group or others may read it: the secrets are no longer secret (ssh refuses such a key the same way).
    if ((statSync(path).mode & 0o077) !== 0) throw new UsageError(`${path}: the key file is readable by others (mode ${(statSync(path).mode & 0o777).toString(8)}): chmod 600 it`);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`${path}: cannot read the key file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${path}: the key file is not JSON (${(err as Error).message})`);
  }
  const r = KeyFile.safeParse(raw);
  if (!r.success) throw new UsageError(`${path}: not a splitnet key file (${r.error.issues[0]!.path.join('.')}: ${r.error.issues[0]!.message})`);
  const keys = { coordinator: r.data.coordinator, workers: r.data.workers };
  [keys.coordinator, ...keys.workers].forEach((k, i) => {
    const who = i === 0 ? 'coordinator' : `workers.${i - 1}`;
    checkKey(k.publicKey, `${path}: ${who}.publicKey`);
    checkKey(k.secretKey, `${path}: ${who}.secretKey`);
  });
  if (keys.workers.length < world) throw new UsageError(`${path}: keys for ${keys.workers.length} workers, the cluster has ${world}`);
  return keys;
}

/** Worker `rank`'s keys from a key file: its own pair and everyone's public keys. */
export function readWorkerKeys(path: string, rank: number): WorkerKeys {
  return workerKeys(readRunKeys(path, rank + 1), rank);
}
