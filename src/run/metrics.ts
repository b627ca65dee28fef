/**
 * metrics.jsonl: one JSON object per line, appended (a resumed run continues
 * the same file). A line is whole or absent: a write that fails part-way
 * (a full disk, a file-size limit) is cut back off and the error names the
 * file; a line torn by a crash mid-write is removed when the run resumes,
 * and said so.
 */
import * as nodeFs from 'node:fs';
import { describeErrno, WriteError } from '../checkpoint/durable-write.js';

export type MetricsRecord =
  | {
    type: 'step'; epoch: number; step: number; globalStep: number; loss: number; lr: number; imagesPerSec: number;
    /** the training step itself (forward, backward, update) */
    stepMs: number;
    /** the whole iteration: batch, step, bookkeeping (the previous iteration's checkpoint and yield excluded) */
    loopMs: number;
    time: string;
  }
  | { type: 'epoch'; epoch: number; trainLoss: number; testAccuracy: number; testLoss: number; testSamples: number; seconds: number; time: string }
  | { type: 'resume'; globalStep: number; time: string };

/** The fs calls an append makes: node:fs, or (tests) one that fails. */
export type AppendFs = Pick<typeof nodeFs, 'openSync' | 'fstatSync' | 'writeSync' | 'ftruncateSync' | 'closeSync'>;

export class MetricsLog {
  constructor(readonly path: string, private readonly fs: AppendFs = nodeFs) {}

  /**
   * Removes a last line without its newline (a write a crash cut short);
   * returns the line that says so, or undefined when the file is whole.
   */
  repairTornLine(): string | undefined {
    if (!nodeFs.existsSync(this.path)) return undefined;
    const bytes = nodeFs.readFileSync(this.path);
    if (bytes.length === 0 || bytes[bytes.length - 1] === 0x0a) return undefined;
    const keep = bytes.lastIndexOf(0x0a) + 1;
    nodeFs.truncateSync(this.path, keep);
    return `${this.path}: removed a torn last line (${bytes.length - keep} bytes) that an interrupted write left`;
  }

  write(record: MetricsRecord): void {
    const line = Buffer.from(JSON.stringify(record) + '\n');
    const { fs } = this;
    let fd: number | undefined;
    let before = -1;
    let written = 0;
    try {
      fd = fs.openSync(this.path, 'a');
      before = fs.fstatSync(fd).size;
      while (written < line.length) {
        const n = fs.writeSync(fd, line, written, line.length - written);
        // A write that makes no progress would loop forever: the disk takes no more.
        if (!(n > 0)) throw Object.assign(new Error(`EIO: write made no progress (returned ${n})`), { code: 'EIO' });
        written += n;
      }
    } catch (err) {
      // Cut the part of the line that got out back off: the file ends in a whole line, as before.
      if (fd !== undefined && written > 0 && before >= 0) try { fs.ftruncateSync(fd, before); } catch { /* repaired on resume */ }
      const { code, text } = describeErrno(err);
      throw new WriteError(this.path, line.length, written, code, `${this.path}: wrote ${written} of ${line.length} bytes of a metrics line: ${text}`);
    } finally {
      if (fd !== undefined) try { fs.closeSync(fd); } catch { /* the write's error, if any, is the one to report */ }
    }
  }
}
