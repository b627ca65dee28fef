/**
 * What a worker host gets: the tarball `npm pack` makes (built on the way,
 * by the prepare script), installed with its runtime dependencies and run
 * from outside the checkout. It packs a copy of the sources (the checkout's
 * own dist/ is left alone) and installs offline: `npm install -g TARBALL
 * --offline` cannot work from the cache `npm ci` leaves (that has the
 * packages' tarballs, not the registry's metadata npm resolves versions
 * with), so the test installs with a lock file made from the project's own
 * (the same versions, every tarball taken from the cache by its checksum):
 * `npm ci --offline` in a temp directory.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { localCluster } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

const root = fileURLToPath(new URL('..', import.meta.url));
/** Temp directories to remove at the end (an installed copy is half a gigabyte). */
const made: string[] = [];
const scratch = (prefix: string): string => {
  const dir = tempDir(prefix);
  made.push(dir);
  return dir;
};
afterAll(() => { for (const d of made) rmSync(d, { recursive: true, force: true }); });
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
/** A child's environment without this test runner's loaders and flags. */
const plainEnv = (): NodeJS.ProcessEnv => {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k === 'NODE_OPTIONS' || k.startsWith('VITEST') || k.startsWith('npm_')) delete env[k];
  return env;
};

/** `npm pack` of a copy of the sources; returns the tarball's path. */
function pack(): string {
  const src = scratch('splitnet-pack-');
  for (const f of ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'bin', 'src', 'scripts']) {
    if (existsSync(join(root, f))) cpSync(join(root, f), join(src, f), { recursive: true });
  }
  symlinkSync(join(root, 'node_modules'), join(src, 'node_modules'), 'dir');
  const out = scratch('splitnet-tarball-');
  execFileSync(npm, ['pack', '--pack-destination', out, '--silent'], { cwd: src, env: plainEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  const [tgz] = readdirSync(out).filter((f) => f.endsWith('.tgz'));
  return join(out, tgz!);
}

/** A directory where `splitnet` is installed from `tarball` with the locked runtime dependencies; undefined (and why) when the cache lacks one. */
function install(tarball: string): { dir: string } | { why: string } {
  const dir = scratch('splitnet-install-');
  const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as Record<string, unknown>;
  const spec = `file:${tarball}`;
  const packages: Record<string, unknown> = {
    '': { name: 'splitnet-host', dependencies: { splitnet: spec } },
    'node_modules/splitnet': { version: pkg.version, resolved: spec, license: pkg.license, dependencies: pkg.dependencies, bin: pkg.bin, engines: pkg.engines },
  };
  for (const [k, v] of Object.entries(lock.packages)) if (k.startsWith('node_modules/') && !v.dev) packages[k] = v;
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'splitnet-host', private: true, dependencies: { splitnet: spec } }));
  writeFileSync(join(dir, 'package-lock.json'), JSON.stringify({ name: 'splitnet-host', lockfileVersion: 3, requires: true, packages }));
  const r = spawnSync(npm, ['ci', '--offline', '--omit=dev', '--no-audit', '--no-fund'], { cwd: dir, env: plainEnv(), encoding: 'utf8' });
  if (r.status !== 0) {
    if (/ENOTCACHED/.test(r.stderr)) return { why: `npm's cache lacks a dependency (run npm ci first): ${r.stderr.trim().split('\n')[0]}` };
    throw new Error(`npm ci of the packed splitnet failed: ${r.stderr}`);
  }
  return { dir };
}

describe('the package a worker host installs', () => {
  it('npm pack has the compiled CLI; installed from it, splitnet runs a model summary and a 2-worker launch from its own copy', async (ctx) => {
    const t0 = Date.now();
    const tarball = pack();
    const listed = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n');
    expect(listed).toContain('package/bin/splitnet.js');
    expect(listed).toContain('package/dist/cli.js');
    expect(listed).toContain('package/dist/run/worker.js');
    expect(listed.filter((f) => /^package\/(src|test|bench)\/|\.map$|\.ts$/.test(f))).toEqual([]);
    const packed = Date.now();
    const host = install(tarball);
    if ('why' in host) {
      console.warn(`\n*** SKIPPED the install check: ${host.why} ***\n`);
      ctx.skip();
      return;
    }
    const installed = Date.now();
    const bin = join(host.dir, 'node_modules', '.bin', 'splitnet');
    const copy = join(host.dir, 'node_modules', 'splitnet');

    const summary = spawnSync(bin, ['model', 'summary', '--width', '0.125', '--resolution', '67'], { cwd: host.dir, env: plainEnv(), encoding: 'utf8' });
    expect(summary.status, summary.stderr).toBe(0);
    expect(summary.stdout).toContain('total: 344,290 parameters');

    const cluster = await localCluster(2);
    writeFileSync(join(host.dir, 'cluster.json'), JSON.stringify(cluster));
    const launch = spawn(bin, ['--backend', 'wasm', 'launch', '--config', 'cluster.json', '--synthetic', '--width', '0.125', '--resolution', '67',
      '--batch', '8', '--train-samples', '16', '--test-samples', '8', '--epochs', '1', '--out', 'run', '--no-progress'],
    { cwd: host.dir, env: plainEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const workerCommands: string[] = [];
    const seen = new Set<number>();
    const onData = (d: Buffer) => {
      out += d.toString();
      for (const m of out.matchAll(/pid (\d+)\)/g)) {
        const pid = Number(m[1]);
        if (seen.has(pid)) continue;
        seen.add(pid);
        try { workerCommands.push(readFileSync(`/proc/${pid}/cmdline`, 'utf8')); } catch { /* exited already */ }
      }
    };
    launch.stdout.on('data', onData);
    launch.stderr.on('data', onData);
    const killer = setTimeout(() => launch.kill('SIGKILL'), 120_000);
    const code = await new Promise<number | null>((r) => launch.once('exit', r));
    clearTimeout(killer);
    expect(code, out).toBe(0);
    expect(out).toMatch(/final test accuracy [\d.]+% on 8 images/);
    // the workers ran the installed copy's CLI, not the checkout's
    expect(workerCommands).toHaveLength(2);
    for (const c of workerCommands) expect(c.split('\0')).toContain(join(copy, 'dist', 'cli.js'));
    console.log(`install: pack ${((packed - t0) / 1000).toFixed(1)} s, npm ci ${((installed - packed) / 1000).toFixed(1)} s, ` +
      `summary and launch ${((Date.now() - installed) / 1000).toFixed(1)} s`);
  }, 300_000);
});
