/**
 * Local workers over ipc sockets in a directory only the run's user may
 * enter: such a directory is made fresh per run and removed on every exit
 * path, a directory anyone else could enter is refused with the reason, and
 * another local user cannot reach the sockets at all (checked as root, by a
 * child running as nobody).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { Communicator } from '../src/wire/communicator.js';
import { checkEndpoint, checkPrivateDir, createPrivateDir, MAX_IPC_PATH, removePrivateDir } from '../src/wire/private-dir.js';
import { endpoint } from '../src/wire/transport.js';
import { alive, localCluster, Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const CONFIG: TrainConfig = {
  ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
  trainSamples: 16, testSamples: 8, checkpointEvery: 0,
};
const WIRE = { heartbeat: { intervalMs: 500, timeoutMs: 5_000 }, maxMessageBytes: 2 ** 24, waitMs: 5_000 };
const quiet = { log: () => {}, progress: false } as const;
const spawned = new Spawned();
const isRoot = process.getuid?.() === 0;

/**
 * Runs go with TMPDIR pointed at a fresh directory, so the private directory
 * they make can be seen there (their output goes elsewhere; the workers'
 * tsx keeps a cache there too, which is not the run's).
 */
let tmp: string;
let outDir: string;
let savedTmp: string | undefined;
beforeEach(() => {
  savedTmp = process.env.TMPDIR;
  tmp = tempDir();
  outDir = tempDir();
  process.env.TMPDIR = tmp;
});
const runDirs = () => readdirSync(tmp).filter((n) => n.startsWith('splitnet-'));
afterEach(() => {
  if (savedTmp === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmp;
  spawned.reap();
});

/** Connects to a unix socket as user nobody (65534); its error code, or 'connected'. */
function connectAsNobody(path: string): string {
  const script = `const s = require('node:net').connect({ path: ${JSON.stringify(path)} });
    s.on('connect', () => { console.log('connected'); s.destroy(); }); s.on('error', (e) => console.log(e.code));`;
  const r = spawnSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, encoding: 'utf8', timeout: 10_000 });
  return r.stdout.trim() || `no answer (${r.stderr.trim()})`;
}

describe('the private ipc directory', () => {
  it('is made 0700 by this user, fresh each time, and accepted', () => {
    const a = createPrivateDir();
    const b = createPrivateDir();
    expect(a).not.toBe(b);
    expect(a.startsWith(tmp)).toBe(true);
    expect(() => checkPrivateDir(a)).not.toThrow();
    removePrivateDir(a);
    removePrivateDir(b);
    expect(existsSync(a)).toBe(false);
  });

  it('a directory others can enter is refused, naming its mode and what was expected', () => {
    const open = join(tmp, 'open');
    mkdirSync(open);
    chmodSync(open, 0o755);
    expect(() => checkPrivateDir(open)).toThrow(`ipc directory ${open} has mode 0755, which lets every local user in: expected a directory only this user can enter (mode 0700`);
    chmodSync(open, 0o750);
    expect(() => checkPrivateDir(open)).toThrow('has mode 0750, which lets its group in');
    expect(() => endpoint('ipc', '127.0.0.1', 5560, open)).toThrow('which lets its group in');
    expect(() => checkEndpoint(`ipc://${join(open, 'w.ipc')}`)).toThrow('which lets its group in');
  });

  it('a symlink to a private directory, a file, or a missing directory is refused', () => {
    const real = createPrivateDir();
    const link = join(tmp, 'link');
    symlinkSync(real, link);
    expect(() => checkPrivateDir(link)).toThrow(`ipc directory ${link} is a symlink`);
    expect(() => checkPrivateDir(join(tmp, 'none'))).toThrow('cannot be read (ENOENT)');
  });

  it('a socket path longer than a unix socket address is refused before libzmq sees it', () => {
    const dir = createPrivateDir();
    expect(() => checkEndpoint(`ipc://${dir}/${'x'.repeat(MAX_IPC_PATH)}.ipc`)).toThrow(`a socket path at most ${MAX_IPC_PATH}: set TMPDIR to a shorter directory`);
  });

  it('a communicator will not bind or connect in a directory others can enter, and opens nothing', async () => {
    const open = join(tmp, 'shared');
    mkdirSync(open, { mode: 0o777 });
    chmodSync(open, 0o1777); // /tmp's own mode
    await expect(Communicator.open({ rank: 0, world: 2, peers: [`ipc://${open}/a.ipc`, `ipc://${open}/b.ipc`], talksTo: [1], ...WIRE }))
      .rejects.toThrow('has mode 01777, which lets every local user in');
    expect(readdirSync(open)).toEqual([]);
  });

  it.skipIf(!isRoot)('another local user cannot reach a socket in it (as root: a child running as nobody), but can one in a shared directory', async () => {
    const priv = createPrivateDir();
    const shared = join(tmp, 'shared');
    mkdirSync(shared);
    chmodSync(tmp, 0o755); // the test's own temp dir must let nobody through to reach either
    chmodSync(shared, 0o1777);
    const [a, b] = [endpoint('ipc', '127.0.0.1', 1, priv), endpoint('ipc', '127.0.0.1', 2, priv)];
    const x = await Communicator.open({ rank: 0, world: 2, peers: [a, b], talksTo: [1], ...WIRE });
    const y = await Communicator.open({ rank: 1, world: 2, peers: [a, b], talksTo: [0], ...WIRE });
    try {
      // the shared directory's socket: a stranger gets through (what ipc in /tmp was)
      const { createServer } = await import('node:net');
      const server = createServer((s) => s.destroy());
      const sharedPath = join(shared, 'open.ipc');
      await new Promise<void>((resolve) => server.listen(sharedPath, resolve));
      chmodSync(sharedPath, 0o777);
      try {
        expect(connectAsNobody(sharedPath)).toBe('connected');
      } finally {
        server.close();
      }
      expect(connectAsNobody(a.slice('ipc://'.length))).toBe('EACCES');
    } finally {
      x.close();
      y.close();
    }
  });
});

describe('a local cluster over private ipc', () => {
  it('trains data-parallel over 2 workers and leaves no directory or socket behind', async () => {
    const cluster = await localCluster(2, { transport: 'ipc', security: 'none' });
    const r = await train({ config: CONFIG, outDir, mode: 'data', cluster, workers: cluster.workers, onEvent: spawned.watch(), ...quiet });
    expect(r.finished).toBe(true);
    expect(r.losses).toHaveLength(2);
    for (const pid of spawned.pids) expect(alive(pid), `worker pid ${pid}`).toBe(false);
    expect(runDirs()).toEqual([]);
  });

  it('a run that fails at start-up (a worker that exits) removes its directory too', async () => {
    const cluster = await localCluster(2, { transport: 'ipc', security: 'none', timeouts: { registerMs: 5_000, stepMs: 10_000, shutdownGraceMs: 1_000 } });
    const r = await train({
      config: CONFIG, outDir, mode: 'data', cluster, workers: cluster.workers, ...quiet,
      workerCommand: (rank) => (rank === 1 ? { command: process.execPath, args: ['-e', 'process.exit(3)'] } : undefined),
      onEvent: spawned.watch(),
    }).catch((err: Error) => err);
    expect(r).toBeInstanceOf(Error);
    expect((r as Error).message).toMatch(/worker 1.*exited with code 3/);
    for (const pid of spawned.pids) expect(alive(pid), `worker pid ${pid}`).toBe(false);
    expect(runDirs()).toEqual([]);
  });
});
