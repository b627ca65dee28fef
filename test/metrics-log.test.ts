/**
 * metrics.jsonl ends in a whole line whatever happens to a write: a write
 * that fails part-way is cut back off and names the file; a line a crash
 * tore is removed on resume, with a line saying so.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MetricsLog, type AppendFs } from '../src/run/metrics.js';
import { tempDir } from './helpers/idx-files.js';

const step = (globalStep: number) => ({ type: 'resume' as const, globalStep, time: '2026-01-01T00:00:00.000Z' });

/** node:fs, except that writes take at most `room` more bytes, then fail with ENOSPC. */
function fillingDisk(room: number): AppendFs {
  return {
    ...fs,
    writeSync: ((fd: number, buf: Uint8Array, offset: number, length: number) => {
      if (room <= 0) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      const n = fs.writeSync(fd, buf, offset, Math.min(length, room));
      room -= n;
      return n;
    }) as AppendFs['writeSync'],
  };
}

describe('metrics.jsonl', () => {
  it('a write the disk cuts short fails naming the file, and the part written is cut back off', () => {
    const path = join(tempDir(), 'metrics.jsonl');
    new MetricsLog(path).write(step(1));
    const whole = fs.readFileSync(path, 'utf8');
    const log = new MetricsLog(path, fillingDisk(10));
    expect(() => log.write(step(2))).toThrow(new RegExp(`^${path}: wrote 10 of \\d+ bytes of a metrics line: ENOSPC \\(no space left on device\\)$`));
    expect(fs.readFileSync(path, 'utf8')).toBe(whole);
  });

  it('a torn last line is removed on resume, and the removal is said', () => {
    const path = join(tempDir(), 'metrics.jsonl');
    new MetricsLog(path).write(step(1));
    fs.appendFileSync(path, '{"type":"step","glob');
    const log = new MetricsLog(path);
    expect(log.repairTornLine()).toBe(`${path}: removed a torn last line (20 bytes) that an interrupted write left`);
    expect(fs.readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as unknown)).toEqual([step(1)]);
    expect(log.repairTornLine()).toBeUndefined();
  });
});
