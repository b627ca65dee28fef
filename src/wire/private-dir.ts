/**
 * The directory a run's ipc sockets live in. A socket file in a shared
 * directory (/tmp) can be reached by every local user, and its path taken
 * first by any of them (bind, and the run's workers connect to a stranger).
 * Inside a directory only this user may enter (mode 0700, owned by this
 * uid, not a symlink) no other user can connect, listen or even look up the
 * path: the kernel checks the directory's search permission on connect().
 *
 * The coordinator creates it (mkdtemp: fresh name, 0700 from the start, no
 * window where it is open) and removes it when the run ends; every process
 * that binds or connects an ipc endpoint checks it first.
 */
import { lstatSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/**
 * The longest path an AF_UNIX socket may have on Linux: sun_path is 108
 * bytes with the terminating NUL. libzmq refuses longer ones with a bare
 * "Invalid argument"; we say so first.
 */
export const MAX_IPC_PATH = 107;

/** A fresh private directory for a run's sockets, under `parent` (default: the temp directory). */
export function createPrivateDir(parent = tmpdir()): string {
  const dir = mkdtempSync(join(parent, 'splitnet-'));
  checkPrivateDir(dir);
  return dir;
}

/** Removes the directory and the sockets in it; a directory already gone is fine. */
export function removePrivateDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Throws unless `dir` is a directory (not a symlink to one) owned by this
 * process's user and closed to group and others. The error says what was
 * found and what a private directory is.
 */
export function checkPrivateDir(dir: string): void {
  let st;
  try {
    st = lstatSync(dir);
  } catch (err) {
    throw new Error(`ipc directory ${dir}: cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)}); expected a directory of this run`);
  }
  const expected = `expected a directory only this user can enter (mode 0700, owner uid ${process.getuid?.()})`;
  if (st.isSymbolicLink()) throw new Error(`ipc directory ${dir} is a symlink: ${expected}`);
  if (!st.isDirectory()) throw new Error(`ipc directory ${dir} is not a directory: ${expected}`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) throw new Error(`ipc directory ${dir} is owned by uid ${st.uid}, not this user: ${expected}`);
  const mode = st.mode & 0o7777; // with the sticky and set-id bits, as ls shows them
  if ((mode & 0o077) !== 0) {
    throw new Error(`ipc directory ${dir} has mode 0${mode.toString(8)}, which lets ${mode & 0o007 ? 'every local user' : 'its group'} in: ${expected}`);
  }
}

/** For an ipc:// endpoint, checks its directory is private and its path fits a socket address; tcp passes unchanged. */
export function checkEndpoint(ep: string): string {
  if (!ep.startsWith('ipc://')) return ep;
  const path = ep.slice('ipc://'.length);
  if (Buffer.byteLength(path) > MAX_IPC_PATH) {
    throw new Error(`ipc endpoint ${ep}: the path has ${Buffer.byteLength(path)} bytes, a socket path at most ${MAX_IPC_PATH}: set TMPDIR to a shorter directory`);
  }
  checkPrivateDir(dirname(path));
  return ep;
}
