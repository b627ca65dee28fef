/**
 * Which checkpoint in a run directory is the current one. A checkpoint is a
 * pair of files under names of their own, checkpoint-<globalStep>-<random>
 * .safetensors and .json; the manifest, written last, names the pair with
 * each file's size and SHA-256. Renaming the manifest into place is the one
 * commit: before it the previous pair is current, after it the new one, so no
 * crash can pair new weights with an old position, and files that no
 * manifest names (a crash before the commit) are never read.
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { DataFileError, INPUT_ERRNOS } from '../errors.js';
import { hashFile, sha256, TMP_MARK, writeFileDurably, type WriteFs, type Written } from './durable-write.js';

export const MANIFEST_FILE = 'checkpoint.manifest.json';
/** The format before manifests: fixed names, renamed one after the other. Still read, never written. */
export const LEGACY_TENSORS_FILE = 'checkpoint.safetensors';
export const LEGACY_STATE_FILE = 'checkpoint.json';
const FORMAT = 'splitnet-checkpoint-manifest';
const VERSION = 1;

/** One file of the pair: its name in the run directory, size and SHA-256 (lowercase hex). */
export interface FileEntry { file: string; bytes: number; sha256: string }

export interface Manifest {
  format: typeof FORMAT;
  version: number;
  globalStep: number;
  tensors: FileEntry;
  state: FileEntry;
  savedAt: string;
}

/** The committed pair's paths; `manifest` is absent for an old-format checkpoint. */
export interface CheckpointFiles { tensors: string; state: string; manifest?: Manifest }

/** A pair's file names: unique per checkpoint, so a new pair never overwrites the current one. */
export function pairNames(globalStep: number, random: string): { tensors: string; state: string } {
  const base = `checkpoint-${globalStep}-${random}`;
  return { tensors: `${base}.safetensors`, state: `${base}.json` };
}
const PAIR_FILE = /^checkpoint-\d+-[0-9a-f]+\.(safetensors|json)$/;

/** The committed checkpoint's files in `dir` (readers outside this module go through this), or undefined when there is none. */
export function checkpointFiles(dir: string): CheckpointFiles | undefined {
  const path = join(dir, MANIFEST_FILE);
  if (existsSync(path)) {
    const m = readManifest(path);
    return { tensors: join(dir, m.tensors.file), state: join(dir, m.state.file), manifest: m };
  }
  if (existsSync(join(dir, LEGACY_STATE_FILE))) return { tensors: join(dir, LEGACY_TENSORS_FILE), state: join(dir, LEGACY_STATE_FILE) };
  return undefined;
}

function readManifest(path: string): Manifest {
  let raw: Partial<Manifest>;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8')) as Partial<Manifest>;
  } catch (err) {
    throw new DataFileError(path, `not JSON (${(err as Error).message})`);
  }
  if (raw.format !== FORMAT || raw.version !== VERSION) {
    throw new DataFileError(path, `format ${String(raw.format)} v${String(raw.version)}: expected ${FORMAT} v${VERSION}`);
  }
  if (!Number.isInteger(raw.globalStep) || raw.globalStep! < 0) throw new DataFileError(path, `globalStep ${JSON.stringify(raw.globalStep)}: expected a count`);
  for (const key of ['tensors', 'state'] as const) {
    const e = raw[key];
    // A plain name in this directory: a manifest must not send a reader elsewhere.
    const ok = e !== undefined && typeof e.file === 'string' && basename(e.file) === e.file && PAIR_FILE.test(e.file) &&
      Number.isInteger(e.bytes) && e.bytes >= 0 && typeof e.sha256 === 'string' && /^[0-9a-f]{64}$/.test(e.sha256);
    if (!ok) throw new DataFileError(path, `${key} is ${JSON.stringify(e)}: expected {file: "checkpoint-<step>-<hex>.<ext>", bytes, sha256}`);
  }
  return raw as Manifest;
}

const short = (hash: string) => `${hash.slice(0, 16)}…`;

/**
 * Checks a file against its manifest entry: `found` is what was read (else
 * the file is hashed here). Throws naming the file, what the manifest
 * expects and what is there.
 */
export function checkFile(path: string, entry: FileEntry, found?: Written): void {
  if (found === undefined) {
    if (!existsSync(path)) throw new DataFileError(path, `missing: ${MANIFEST_FILE} names it with ${entry.bytes} bytes`);
    found = hashFile(path);
  }
  if (found.bytes !== entry.bytes) {
    throw new DataFileError(path, `${found.bytes} bytes: ${MANIFEST_FILE} names it with ${entry.bytes} bytes (the file changed after the checkpoint was committed)`);
  }
  if (found.sha256 !== entry.sha256) {
    throw new DataFileError(path, `SHA-256 ${short(found.sha256)}: ${MANIFEST_FILE} names it with SHA-256 ${short(entry.sha256)} (the file changed after the checkpoint was committed)`);
  }
}

/** A committed file's bytes, checked against the manifest when there is one. */
export function readCommitted(path: string, entry: FileEntry | undefined): Buffer {
  if (entry !== undefined && !existsSync(path)) throw new DataFileError(path, `missing: ${MANIFEST_FILE} names it with ${entry.bytes} bytes`);
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== undefined && !INPUT_ERRNOS.has(code)) throw new Error(`${path}: reading failed (${code})`); // the disk, not the input
    throw new DataFileError(path, `cannot be read (${code ?? String(err)})`);
  }
  if (entry !== undefined) checkFile(path, entry, { bytes: buf.length, sha256: sha256(buf) });
  return buf;
}

/** The commit: the manifest, written durably; the caller fsyncs the directory. */
export function writeManifest(dir: string, m: Omit<Manifest, 'format' | 'version'>, fs?: WriteFs): Manifest {
  const manifest: Manifest = { format: FORMAT, version: VERSION, ...m };
  writeFileDurably(join(dir, MANIFEST_FILE), [Buffer.from(JSON.stringify(manifest, null, 2) + '\n')], fs);
  return manifest;
}

/**
 * Removes what the committed manifest does not name: older pairs, pairs a
 * crash left uncommitted, temporary files, an old-format checkpoint. Only
 * our own names: the run directory holds other files. The run lock makes
 * this process the only writer, so no temporary file here is in use.
 * Best effort: a file that cannot be removed takes space, not correctness.
 */
export function removeUncommitted(dir: string, keep: Manifest): void {
  const ours = (name: string) => PAIR_FILE.test(name) || name === LEGACY_TENSORS_FILE || name === LEGACY_STATE_FILE || name === MANIFEST_FILE;
  for (const name of readdirSync(dir)) {
    const tmp = name.indexOf(TMP_MARK);
    const stale = tmp > 0 ? ours(name.slice(0, tmp)) : ours(name) && name !== MANIFEST_FILE && name !== keep.tensors.file && name !== keep.state.file;
    if (stale) try { rmSync(join(dir, name), { force: true }); } catch { /* see above */ }
  }
}
