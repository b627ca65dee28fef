/**
 * One writer per run directory: two runs writing into one directory would
 * interleave their metrics and remove each other's checkpoints. The lock is
 * a file `lock` in the run directory, created exclusively (open 'wx'),
 * holding the holder's pid and host. A lock whose pid no longer runs on this
 * host is stale (its run was killed) and is taken over; a lock held from
 * another host (a shared file system) cannot be checked, so it is reported,
 * never taken.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, linkSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { UsageError } from '../errors.js';

export const LOCK_FILE = 'lock';

interface Holder { pid: number; host: string; startedAt: string; token: string }

export interface RunLock {
  readonly path: string;
  /** Removes the lock if it is still this one's; safe to call more than once. */
  release(): void;
}

/** Whether `pid` is a running process on this host (EPERM: it runs, as another user). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The lock's holder; 'gone' when the file vanished meanwhile (its holder released it). */
function readHolder(path: string): Holder | 'gone' {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    throw err;
  }
  try {
    const h = JSON.parse(text) as Partial<Holder>;
    if (Number.isInteger(h.pid) && typeof h.host === 'string') return h as Holder;
  } catch { /* reported below */ }
  throw new UsageError(`${path}: a run lock that is not {pid, host} (${JSON.stringify(text.slice(0, 60))}): if no run is writing this directory, remove the file`);
}

/** Creates the lock file with our holder in it; false if one exists. */
function tryCreate(path: string, text: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    const bytes = Buffer.from(text);
    if (writeSync(fd, bytes) !== bytes.length) throw new Error(`${path}: short write of the run lock`);
  } catch (err) {
    closeSync(fd);
    rmSync(path, { force: true }); // an empty lock would lock the directory for good
    const e = err as NodeJS.ErrnoException;
    throw e.code !== undefined ? new Error(`${path}: cannot write the run lock (${e.code})`) : err;
  }
  closeSync(fd);
  return true;
}

function lockedError(dir: string, path: string, h: Holder, why: string): UsageError {
  return new UsageError(`${dir} is locked by another run: pid ${h.pid} on ${h.host} (since ${h.startedAt}) holds ${path}${why}; ` +
    `wait for it to end or train into another --out`);
}

/**
 * Takes the lock on `dir` (which exists) or throws a UsageError naming the
 * directory and the holder's pid. `log` gets one line when a stale lock is
 * taken over.
 */
export function acquireRunLock(dir: string, log: (line: string) => void): RunLock {
  const path = join(dir, LOCK_FILE);
  const host = hostname();
  const me: Holder = { pid: process.pid, host, startedAt: new Date().toISOString(), token: randomBytes(8).toString('hex') };
  const text = JSON.stringify(me) + '\n';
  // A few rounds: each loses only to another run starting or ending at the same instant.
  for (let round = 0; round < 5; round++) {
    if (tryCreate(path, text)) return held(path, me);
    const holder = readHolder(path);
    if (holder === 'gone') continue;
    if (holder.host !== host) throw lockedError(dir, path, holder, ` (another host: its pid cannot be checked from here; if that run is gone, remove the file)`);
    if (pidAlive(holder.pid)) throw lockedError(dir, path, holder, ` (if pid ${holder.pid} is not a splitnet run, remove the file)`);
    // Stale. Move it aside rather than delete it: a second run taking over at
    // the same moment may already have replaced it with its own lock, which
    // must then go back.
    const aside = `${path}.stale-${process.pid}-${me.token}`;
    try {
      renameSync(path, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const moved = readHolder(aside);
    if (moved !== 'gone' && moved.token === holder.token && moved.pid === holder.pid) {
      rmSync(aside, { force: true });
      log(`splitnet: ${dir}: took over the run lock of pid ${holder.pid} on ${host}, which is no longer running`);
      continue;
    }
    try { linkSync(aside, path); } catch { /* a third run holds it now: ours is refused below all the same */ }
    rmSync(aside, { force: true });
    if (moved !== 'gone') throw lockedError(dir, path, moved, '');
  }
  throw new UsageError(`${dir}: could not take the run lock ${path}: other runs keep starting in this directory`);
}

function held(path: string, me: Holder): RunLock {
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    process.removeListener('exit', release);
    try {
      const now = readHolder(path);
      if (now !== 'gone' && now.token === me.token) rmSync(path, { force: true });
    } catch { /* not ours any more, or unreadable: leave it */ }
  };
  // A process.exit() skips the loop's finally; the lock must not outlive the process either way.
  process.on('exit', release);
  return { path, release };
}
