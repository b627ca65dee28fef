/**
 * Starting and stopping workers without a shell in between: the ssh
 * template is split into an argv (strictly), a host name reaches ssh as it
 * is, the remote side runs the installed `splitnet` in a process group of
 * its own, and stopping a run leaves nothing running on either side. The
 * "remote" host is an ssh stand-in that does what sshd does with the
 * command (`sh -c`), on this machine. Local workers run in their own
 * process group, get one line of secrets on stdin, and exit when it closes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { lookup } from 'node:dns/promises';
import { hostname } from 'node:os';
import { parseClusterConfig, type ClusterConfig } from '../src/config/cluster.js';
import { CPU_DEFAULTS } from '../src/config/train.js';
import { train } from '../src/run/loop.js';
import { freePorts } from '../src/wire/free-ports.js';
import { startWorker, stopWorkers, type LaunchedWorker } from '../src/run/launcher.js';
import { checkSshTemplate, remoteWorkerCommand, splitTemplate, sshArgv } from '../src/run/ssh.js';
import { tempDir } from './helpers/idx-files.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const WEIRD_HOST = `we$&ird$'ho"st$\`x`;

/** The command lines of the processes whose environment holds `token` (each test's processes carry their own). */
function withToken(token: string): string[] {
  const found: string[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/environ`, 'latin1').split('\0').includes(`SPLITNET_TEST_TOKEN=${token}`)) {
        found.push(readFileSync(`/proc/${name}/cmdline`, 'utf8').replaceAll('\0', ' ').trim());
      }
    } catch { /* gone, or not ours to read */ }
  }
  return found;
}

/** A process's group id (field 5 of /proc/pid/stat, after the parenthesized name). */
function pgidOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
  } catch {
    return undefined;
  }
}

async function until<T>(what: string, ms: number, probe: () => T | undefined | false): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function script(path: string, text: string): string {
  writeFileSync(path, text);
  chmodSync(path, 0o755);
  return path;
}

/**
 * A "remote host" in a temp dir: `fake-ssh HOST COMMAND` records its
 * arguments (NUL-separated, one file per call), then runs COMMAND with
 * `sh -c` (what sshd does) with PATH = DIR/bin plus the system's, where
 * `splitnet` is whatever the test puts there.
 */
function fakeHost(splitnet?: string | ((dir: string) => string)) {
  const dir = tempDir('splitnet-ssh-');
  mkdirSync(join(dir, 'bin'));
  mkdirSync(join(dir, 'calls'));
  const ssh = script(join(dir, 'fake-ssh'), `#!/bin/sh
printf '%s\\0' "$@" > '${dir}/calls/'$$
shift
PATH='${dir}/bin':/usr/bin:/bin
export PATH
exec sh -c "$*"
`);
  if (splitnet !== undefined) script(join(dir, 'bin', 'splitnet'), typeof splitnet === 'string' ? splitnet : splitnet(dir));
  const calls = () => readdirSync(join(dir, 'calls')).map((f) => readFileSync(join(dir, 'calls', f), 'utf8').split('\0').slice(0, -1));
  return { dir, ssh, calls };
}

/** The project's CLI as an installed `splitnet` would be. */
const REAL_SPLITNET = `#!/bin/sh\ncd '${root}' && exec '${process.execPath}' --import tsx '${root}src/cli.ts' "$@"\n`;

function remoteCluster(ssh: string, host = WEIRD_HOST, graceMs = 1500): ClusterConfig {
  return parseClusterConfig({
    coordinator: { host: '127.0.0.1', port: 1 }, transport: 'tcp',
    workers: [{ host, device: 'cpu', port: 2 }],
    timeouts: { registerMs: 60_000, stepMs: 60_000, shutdownGraceMs: graceMs },
    ssh: `${ssh} {host} {command}`, security: 'none',
  });
}

const started: LaunchedWorker[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  await stopWorkers(started.splice(0), 500);
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

describe('the ssh template', () => {
  it('is split into words, with quoting, and no shell', () => {
    expect(splitTemplate(`ssh -o BatchMode=yes -o 'ProxyCommand=ssh -W %h:%p jump' "-i" /k/id {host} {command}`))
      .toEqual(['ssh', '-o', 'BatchMode=yes', '-o', 'ProxyCommand=ssh -W %h:%p jump', '-i', '/k/id', '{host}', '{command}']);
    expect(splitTemplate(`a'b c'"d"  e`)).toEqual(['ab cd', 'e']);
  });

  it('refuses what only a shell would understand, naming the key', () => {
    for (const [t, what] of [
      ['ssh {host} {command}; rm -rf /', "unexpected ';'"],
      ['ssh -i $HOME/.ssh/id {host} {command}', "unexpected '$'"],
      ['ssh -i ~/.ssh/id {host} {command}', "unexpected '~'"],
      ['ssh "-i $K" {host} {command}', `'$' inside "…"`],
      ["ssh 'x {host} {command}", "unterminated '"],
      ['ssh {host} `x` {command}', "unexpected '`'"],
    ] as const) {
      expect(() => checkSshTemplate(t), t).toThrow(`cluster config key 'ssh': ${what}`);
    }
    expect(() => checkSshTemplate('ssh {host} "cd /x && {command}"')).toThrow('{command} exactly once, as a word of its own');
    expect(() => checkSshTemplate('ssh {command}')).toThrow('has no {host}');
    expect(() => checkSshTemplate('ssh {host} {command} {port}')).toThrow("'{' or '}' that is not part of {host} or {command}");
  });

  it('takes the host and the command as whole arguments: $&, $\' and quotes stay as they are', () => {
    expect(sshArgv('ssh -o BatchMode=yes root@{host} {command}', WEIRD_HOST, 'echo $HOME; x'))
      .toEqual(['ssh', '-o', 'BatchMode=yes', `root@${WEIRD_HOST}`, 'echo $HOME; x']);
    expect(() => sshArgv('ssh {host} {command}', '-oProxyCommand=evil', 'x')).toThrow("starts with '-'");
  });

  it('the remote command runs the installed splitnet (never npx) and says so when it is missing', () => {
    const cmd = remoteWorkerCommand('h1', { CUDA_VISIBLE_DEVICES: '1' }, ['worker', '--rank', '0']);
    expect(cmd).toMatch(/^sh -c '/);
    expect(cmd).toContain('CUDA_VISIBLE_DEVICES=1 setsid splitnet worker --rank 0');
    expect(cmd).not.toContain('npx');
  });
});

describe('remote workers through ssh', () => {
  it('reach ssh verbatim, run `splitnet worker` in their own process group, and stopWorkers leaves nothing running', async () => {
    const host = fakeHost(REAL_SPLITNET);
    const token = randomUUID();
    const cluster = remoteCluster(host.ssh);
    const w = startWorker(0, cluster.workers[0]!, cluster, 'tcp://127.0.0.1:1', { SPLITNET_TEST_TOKEN: token }, undefined, '{}');
    started.push(w);
    const pgid = await until('the remote marker', 30_000, () => Number(/remote pid (\d+)/.exec(w.describe())?.[1] ?? NaN) || undefined);
    // the worker itself, leading its group, started by the installed splitnet
    const cmdline = await until('the worker process', 30_000, () => {
      const c = existsSync(`/proc/${pgid}/cmdline`) ? readFileSync(`/proc/${pgid}/cmdline`, 'utf8') : '';
      return c.includes('\0worker\0') && c;
    });
    expect(cmdline).toContain('\0--stdin-secrets');
    expect(pgidOf(pgid)).toBe(pgid);
    const [call] = host.calls();
    expect(call![0]).toBe(WEIRD_HOST);
    expect(call).toHaveLength(2);
    expect(call![1]).toContain('setsid splitnet worker --coordinator tcp://127.0.0.1:1 --rank 0 --device cpu');
    expect(call![1]).not.toContain('npx');

    await stopWorkers([w], 1500);
    await until('every process of the worker gone', 5000, () => withToken(token).length === 0);
    // the stop went to the remote group, over ssh
    expect(host.calls().some((c) => c[0] === WEIRD_HOST && c[1]!.includes(`kill -TERM -${pgid}`))).toBe(true);
  });

  it('a worker that ignores SIGTERM is killed after the grace period, remote children and all', async () => {
    // `splitnet` here ignores TERM and leaves a child of its own in its group.
    const host = fakeHost(`#!/bin/sh\ntrap '' TERM\nsleep 300 &\ncat >/dev/null\nwait\n`);
    const token = randomUUID();
    const cluster = remoteCluster(host.ssh, 'h2', 500);
    const w = startWorker(0, cluster.workers[0]!, cluster, 'tcp://127.0.0.1:1', { SPLITNET_TEST_TOKEN: token });
    started.push(w);
    await until('the remote marker', 10_000, () => /remote pid/.test(w.describe()));
    await until('the remote sleep', 10_000, () => withToken(token).some((c) => c.startsWith('sleep')));
    await stopWorkers([w], 500);
    await until('every process of the worker gone', 5000, () => withToken(token).length === 0);
    expect(host.calls().some((c) => c[1]!.includes('kill -KILL -'))).toBe(true);
  });

  it('a host without splitnet: the worker fails saying so', async () => {
    const host = fakeHost(undefined);
    const cluster = remoteCluster(host.ssh, 'h3');
    const w = startWorker(0, cluster.workers[0]!, cluster, 'tcp://127.0.0.1:1');
    started.push(w);
    expect((await w.exited).code).toBe(127);
    expect(w.stderrTail.at(-1)).toBe("splitnet is not installed on h3: see the README section Installing on a worker host");
  });

  it('gets its secrets line on stdin, and exits when the launcher is SIGKILLed (stdin closes through ssh)', async () => {
    const host = fakeHost((dir) => `#!/bin/sh\nIFS= read -r line\nprintf '%s' "$line" > '${dir}/secret'\ncat >/dev/null\necho eof > '${dir}/eof'\n`);
    const token = randomUUID();
    const secret = JSON.stringify({ keys: 'not really', n: 1 });
    const launcher = launcherProcess(remoteCluster(host.ssh, 'h4'), secret, token);
    const out = await launcherSays(launcher, /REMOTE (\d+)/);
    const pgid = Number(out[1]);
    await until('the secret line', 10_000, () => existsSync(join(host.dir, 'secret')));
    expect(readFileSync(join(host.dir, 'secret'), 'utf8')).toBe(secret);
    expect(pgidOf(pgid)).toBe(pgid);
    launcher.kill('SIGKILL');
    await until('every process of the worker gone after the launcher died', 10_000, () => withToken(token).length === 0);
    expect(readFileSync(join(host.dir, 'eof'), 'utf8')).toBe('eof\n'); // it left because stdin closed, not on a signal
  });

  it('the real worker exits when the launcher is SIGKILLed', async () => {
    const host = fakeHost(REAL_SPLITNET);
    const token = randomUUID();
    const launcher = launcherProcess(remoteCluster(host.ssh, 'h5'), '{}', token);
    const pgid = Number((await launcherSays(launcher, /REMOTE (\d+)/))[1]);
    await until('the worker process', 30_000, () => existsSync(`/proc/${pgid}/cmdline`) && readFileSync(`/proc/${pgid}/cmdline`, 'utf8').includes('\0worker\0'));
    launcher.kill('SIGKILL');
    await until('every process of the worker gone after the launcher died', 20_000, () => withToken(token).length === 0);
  });
});

describe('a run with "remote" workers', () => {
  it('trains data-parallel through the ssh stand-in (keys over stdin, CURVE) and leaves nothing running', async (ctx) => {
    // A host name that is not a loopback name (so ssh is used) but reaches this machine: its own name.
    const name = hostname().split('.')[0]!;
    if (!(await lookup(name).then(() => true, () => false))) {
      console.warn(`\n*** SKIPPED the remote run: this host's name '${name}' does not resolve ***\n`);
      ctx.skip();
      return;
    }
    const host = fakeHost(REAL_SPLITNET);
    const token = randomUUID();
    const [coord, p0, p1] = await freePorts(3);
    const cluster = parseClusterConfig({
      coordinator: { host: name, port: coord }, transport: 'tcp',
      workers: [{ host: name, device: 'cpu', port: p0 }, { host: name, device: 'cpu', port: p1 }],
      timeouts: { registerMs: 60_000, stepMs: 60_000, shutdownGraceMs: 2000 }, ssh: `${host.ssh} {host} {command}`,
    });
    const r = await train({
      config: { ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1, trainSamples: 16, testSamples: 8, checkpointEvery: 0 },
      outDir: tempDir(), mode: 'data', cluster, workers: cluster.workers, log: () => {}, progress: false, workerEnv: { SPLITNET_TEST_TOKEN: token },
    });
    expect(r.finished).toBe(true);
    expect(r.world).toBe(2);
    expect(host.calls().filter((c) => c[1]!.includes('setsid splitnet worker'))).toHaveLength(2);
    await until('every process of the run gone', 5000, () => withToken(token).length === 0);
  });
});

describe('local workers', () => {
  it('run in their own process group: a signal to the launcher\'s group spares them, and they exit when stdin closes', async () => {
    const dir = tempDir('splitnet-local-');
    const token = randomUUID();
    const stand = script(join(dir, 'worker.sh'), `#!/bin/sh\nIFS= read -r line\nprintf '%s' "$line" > '${dir}/secret'\ncat >/dev/null\necho eof > '${dir}/eof'\n`);
    const cluster = parseClusterConfig({ coordinator: { host: '127.0.0.1', port: 1 }, transport: 'tcp', workers: [{ host: '127.0.0.1', device: 'cpu', port: 2 }] });
    const launcher = launcherProcess(cluster, '{"k":1}', token, stand, true);
    const pid = Number((await launcherSays(launcher, /LOCAL (\d+)/))[1]);
    await until('the secret line', 10_000, () => existsSync(join(dir, 'secret')));
    expect(readFileSync(join(dir, 'secret'), 'utf8')).toBe('{"k":1}');
    expect(pgidOf(pid)).toBe(pid);
    expect(pgidOf(launcher.pid!)).toBe(launcher.pid);
    // Ctrl-C / SIGTERM to the coordinator's group (its terminal, a scheduler): the workers must not see it.
    process.kill(-launcher.pid!, 'SIGTERM');
    await until('every process gone', 10_000, () => withToken(token).length === 0);
    expect(readFileSync(join(dir, 'eof'), 'utf8')).toBe('eof\n');
  });

  it('stopWorkers kills the whole group: a worker\'s own children too', async () => {
    const dir = tempDir('splitnet-local-');
    const token = randomUUID();
    const stand = script(join(dir, 'worker.sh'), '#!/bin/sh\nsleep 300 &\ncat >/dev/null\nwait\n');
    const cluster = parseClusterConfig({ coordinator: { host: '127.0.0.1', port: 1 }, transport: 'tcp', workers: [{ host: '127.0.0.1', device: 'cpu', port: 2 }] });
    const w = startWorker(0, cluster.workers[0]!, cluster, 'tcp://127.0.0.1:1', { SPLITNET_TEST_TOKEN: token }, () => ({ command: stand, args: [] }));
    started.push(w);
    await until('the worker and its child', 10_000, () => withToken(token).some((c) => c.startsWith('sleep')));
    await stopWorkers([w], 1000);
    expect((await w.exited).signal).toBe('SIGTERM');
    await until('every process gone', 5000, () => withToken(token).length === 0);
  });
});

/**
 * A launcher in a process of its own: starts rank 0 of `cluster` (through
 * `override` when given) with `secret` on its stdin and prints the worker's
 * pid (LOCAL n) or, once known, its remote process group (REMOTE n).
 */
function launcherProcess(cluster: ClusterConfig, secret: string, token: string, override?: string, detached = false): ChildProcess {
  const dir = tempDir('splitnet-launcher-');
  const file = join(dir, 'launch.ts');
  writeFileSync(file, `
import { startWorker } from '${root}src/run/launcher.ts';
const cluster = JSON.parse(process.argv[2]);
const override = process.argv[4];
const w = startWorker(0, cluster.workers[0], cluster, 'tcp://127.0.0.1:1', {}, override ? () => ({ command: override, args: [] }) : undefined, process.argv[3]);
if (override) console.log('LOCAL ' + w.child.pid);
const t = setInterval(() => {
  const m = /remote pid (\\d+)/.exec(w.describe());
  if (m) { console.log('REMOTE ' + m[1]); clearInterval(t); }
}, 50);
`);
  const child = spawn(process.execPath, ['--import', 'tsx', file, JSON.stringify(cluster), secret, ...(override ? [override] : [])], {
    cwd: root, env: { ...process.env, SPLITNET_TEST_TOKEN: token }, stdio: ['ignore', 'pipe', 'inherit'], detached,
  });
  children.push(child);
  return child;
}

function launcherSays(launcher: ChildProcess, what: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`the launcher did not say ${what} within 30 s: ${out}`)), 30_000);
    launcher.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = what.exec(out);
      if (m) { clearTimeout(timer); resolve(m); }
    });
  });
}
