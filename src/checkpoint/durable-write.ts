/**
 * Writing a file so that neither a full disk nor a crash can leave a partial
 * file under its name. writeSync may write fewer bytes than asked (a full
 * disk, a file-size limit: the rest then fails with ENOSPC or EFBIG), so
 * every byte count is checked; the bytes go to a temporary file that is
 * fsynced and closed before it is renamed over the name. On any error the
 * temporary file is removed and the error says how far the write got.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as nodeFs from 'node:fs';
import { basename } from 'node:path';

/** The fs calls a durable write makes: node:fs, or (tests) one that fails. */
export type WriteFs = Pick<typeof nodeFs, 'openSync' | 'writeSync' | 'fsyncSync' | 'closeSync' | 'renameSync' | 'rmSync'>;

/** What was written: its size and SHA-256 (lowercase hex). */
export interface Written { bytes: number; sha256: string }

/** A write that failed; the name it was going to is as it was before. */
export class WriteError extends Error {
  override readonly name = 'WriteError';
  constructor(readonly file: string, readonly expected: number, readonly written: number, readonly code: string, message: string) {
    super(message);
  }
}

/** The temporary-file suffix: `<name>.tmp-<pid>-<random>` (a reader never takes one for the real file). */
export const TMP_MARK = '.tmp-';

/** "ENOSPC (no space left on device)" from Node's "ENOSPC: no space left on device, write". */
export function describeErrno(err: unknown): { code: string; text: string } {
  const e = err as NodeJS.ErrnoException;
  const code = typeof e?.code === 'string' ? e.code : 'error';
  const what = /^[A-Z0-9_]+: ([^,]+)/.exec(e?.message ?? '')?.[1];
  return { code, text: what !== undefined ? `${code} (${what})` : `${code} (${e?.message ?? String(err)})` };
}

/**
 * Writes `chunks` to `path` durably and atomically (see above). Throws a
 * WriteError naming the file, the bytes expected and written, and the errno code.
 */
export function writeFileDurably(path: string, chunks: Uint8Array[], fs: WriteFs = nodeFs): Written {
  const expected = chunks.reduce((n, c) => n + c.byteLength, 0);
  const tmp = `${path}${TMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`;
  const hash = createHash('sha256');
  let written = 0;
  let stage = 'open';
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'wx', 0o644);
    stage = 'write';
    for (const chunk of chunks) {
      for (let done = 0; done < chunk.byteLength;) {
        const n = fs.writeSync(fd, chunk, done, chunk.byteLength - done);
        // A write that makes no progress would loop forever: the disk takes no more.
        if (!(n > 0)) throw Object.assign(new Error(`EIO: write made no progress (returned ${n})`), { code: 'EIO' });
        done += n;
        written += n;
      }
      hash.update(chunk);
    }
    stage = 'fsync';
    fs.fsyncSync(fd);
    stage = 'close';
    const open = fd;
    fd = undefined;
    fs.closeSync(open);
    stage = 'rename';
    fs.renameSync(tmp, path);
  } catch (err) {
    if (fd !== undefined) try { fs.closeSync(fd); } catch { /* the write's error is the one to report */ }
    try { fs.rmSync(tmp, { force: true }); } catch { /* likewise: a leftover temporary file is removed by the next checkpoint */ }
    const { code, text } = describeErrno(err);
    const then = stage === 'write' || stage === 'open' ? '' : `, then ${stage} failed`;
    throw new WriteError(basename(path), expected, written, code, `${basename(path)}: wrote ${written} of ${expected} bytes${then}: ${text}`);
  }
  return { bytes: expected, sha256: hash.digest('hex') };
}

/**
 * Makes the directory entries made so far (creates, renames) durable: without
 * it a power cut can lose a rename that the file's own fsync did not cover.
 */
export function fsyncDir(dir: string, fs: Pick<WriteFs, 'openSync' | 'fsyncSync' | 'closeSync'> = nodeFs): void {
  let fd: number;
  try {
    fd = fs.openSync(dir, 'r');
  } catch (err) {
    if (process.platform === 'win32') return; // directories cannot be opened for fsync there
    throw err;
  }
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** SHA-256 (hex) and size of a file, read in pieces (a tensor file can be gigabytes). */
export function hashFile(path: string): Written {
  const hash = createHash('sha256');
  const buf = Buffer.alloc(8 * 2 ** 20);
  const fd = nodeFs.openSync(path, 'r');
  let bytes = 0;
  try {
    for (let n; (n = nodeFs.readSync(fd, buf, 0, buf.length, null)) > 0;) {
      hash.update(buf.subarray(0, n));
      bytes += n;
    }
  } finally {
    nodeFs.closeSync(fd);
  }
  return { bytes, sha256: hash.digest('hex') };
}

export const sha256 = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');
