/**
 * A shaped network on one machine: each local worker in a network namespace
 * of its own, plugged into one bridge by a veth pair whose two ends are both
 * rate-limited with `tc tbf`, the coordinator on the bridge. Every worker
 * then has what a node of a real cluster has: a full-duplex link of `rate`
 * to a switch. A worker-to-worker transfer crosses the sender's upload and
 * the receiver's download, each at `rate`; two workers sending to a third
 * share its download, as on a switch.
 *
 *              coordinator (this namespace): bridge snb<id>, 10.a.b.1/24
 *          ┌──────────────┴──────────────┐
 *    veth  h<k> ─ tbf (download)     h<k+1> ─ tbf
 *          │                             │
 *   ns k:  n<k> ─ tbf (upload)       n<k+1> ─ tbf       10.a.b.(k+2)
 *          worker k                  worker k+1
 *
 * Why tbf and nothing else: on the kernels this runs on `tbf`, `htb` and
 * `pfifo` exist, `netem`, `fq` and `fq_codel` do not, and there is no
 * modprobe: a rate can be emulated, added latency cannot. The link's
 * latency is then the veth's (tens of µs), far below a real network's; the
 * step-time model takes the latency it measures, so its check is honest about
 * what was emulated.
 *
 * Everything made here is named after this process (`splitnet-<pid>-…`) and
 * removed by `close()` on every exit path; what a killed launcher left behind
 * is removed by the next one (`removeStale`), as a namespace outlives nobody
 * who is still alive.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { probeLink, type Echo, type EchoPlan, type LinkProbe } from '../wire/link-probe.js';
import { UsageError } from '../errors.js';
import { isLocal, type ClusterConfig, type WorkerSpec } from '../config/cluster.js';
import { workerCommand, type WorkerCommandOverride } from './launcher.js';

/** A link rate as tc reads it: '1gbit', '200mbit', '10gbit', '500kbit'. */
export interface LinkRate {
  /** as given, e.g. '1gbit' */
  text: string;
  bitsPerSecond: number;
}

const UNITS: Record<string, number> = { kbit: 1e3, mbit: 1e6, gbit: 1e9 };
/** Below this, a 25 MiB bucket takes minutes: a typo (a unit missing), not a link. */
const MIN_BITS = 1e6;
/** Above this, tbf's burst would need more than tc accepts; an unshaped veth does about 20 Gbit/s here anyway. */
const MAX_BITS = 100e9;

/** '1gbit' → 1e9 bits/s. Anything else is refused with the form expected. */
export function parseLinkRate(text: string): LinkRate {
  const m = /^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$/i.exec(text.trim());
  if (m === null) throw new UsageError(`--link: expected a rate like 1gbit, 200mbit or 10gbit, got '${text}'`);
  const bitsPerSecond = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!;
  if (bitsPerSecond < MIN_BITS || bitsPerSecond > MAX_BITS) {
    throw new UsageError(`--link: ${text} is outside 1mbit..100gbit`);
  }
  return { text: text.trim().toLowerCase(), bitsPerSecond };
}

const run = (cmd: string, args: string[]): string => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
const tryRun = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });

/**
 * Why links cannot be shaped here, in one line, or undefined when they can:
 * root (namespaces and qdiscs need CAP_NET_ADMIN), `ip` and `tc`, and a
 * namespace that can really be made.
 */
export function whyNoShaping(): string | undefined {
  if (process.getuid?.() !== 0) return 'shaping links needs root (network namespaces and tc qdiscs need CAP_NET_ADMIN)';
  for (const tool of ['ip', 'tc']) {
    const r = tryRun(tool, ['-V']);
    if (r.error !== undefined) return `shaping links needs the '${tool}' command (Debian: apt-get install iproute2): ${(r.error as NodeJS.ErrnoException).code ?? r.error.message}`;
  }
  const probe = `splitnet-${process.pid}-probe`;
  const r = tryRun('ip', ['netns', 'add', probe]);
  if (r.status !== 0) return `shaping links needs network namespaces: ip netns add failed: ${r.stderr.trim()}`;
  tryRun('ip', ['netns', 'del', probe]);
  return undefined;
}

/**
 * tbf's bucket: at least 64 KiB (veth hands over segmentation-offloaded
 * packets of up to 64 KiB, and a packet larger than the bucket never
 * leaves), else 4 ms of traffic (the kernel's timer tick at HZ 250: a
 * smaller bucket cannot be refilled fast enough to reach the rate).
 */
function burstBytes(rate: LinkRate): number {
  return Math.max(64 * 1024, Math.ceil((rate.bitsPerSecond / 8) * 0.004));
}

/** Namespaces of launchers that are gone: `splitnet-<pid>-…` where no process <pid> lives. */
function removeStale(): void {
  const r = tryRun('ip', ['netns', 'list']);
  for (const line of r.stdout?.split('\n') ?? []) {
    const m = /^splitnet-(\d+)-(\S+)/.exec(line);
    if (m === null || alive(Number(m[1]))) continue;
    killInside(`splitnet-${m[1]}-${m[2]}`);
    tryRun('ip', ['netns', 'del', `splitnet-${m[1]}-${m[2]}`]);
  }
  const links = tryRun('ip', ['-o', 'link', 'show', 'type', 'bridge']);
  for (const line of links.stdout?.split('\n') ?? []) {
    const m = /^\d+:\s+snb(\d+):/.exec(line);
    if (m !== null && !alive(Number(m[1]))) tryRun('ip', ['link', 'del', `snb${m[1]}`]);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** SIGKILL whatever still runs in a namespace: a namespace that is deleted lives on while a process is inside. */
function killInside(ns: string): void {
  const pids = tryRun('ip', ['netns', 'pids', ns]).stdout?.split('\n').filter(Boolean) ?? [];
  for (const pid of pids) {
    try { process.kill(Number(pid), 'SIGKILL'); } catch { /* gone */ }
  }
}

/** [first, last] address of an IPv4 CIDR ('10.213.4.0/24'), as numbers. */
function cidrRange(cidr: string): [number, number] | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)(?:\/(\d+))?$/.exec(cidr);
  if (m === null) return undefined;
  const ip = ((Number(m[1]) << 24) >>> 0) + (Number(m[2]) << 16) + (Number(m[3]) << 8) + Number(m[4]);
  const bits = m[5] === undefined ? 32 : Number(m[5]);
  const size = 2 ** (32 - bits);
  const first = Math.floor(ip / size) * size;
  return [first, first + size - 1];
}

/**
 * A /24 of 10.213.0.0/16 that no interface address and no route here
 * overlaps (a VPN's 10.0.0.0/8 would otherwise lose that /24 to the bridge
 * for the whole run), picked from this pid.
 */
function freeSubnet(): string {
  const taken = [...run('ip', ['-o', '-4', 'addr', 'show']).matchAll(/inet (\S+)/g)].map((m) => m[1]!)
    .concat(run('ip', ['-4', 'route', 'show']).split('\n').map((l) => l.split(' ')[0]!).filter((d) => d !== '' && d !== 'default'))
    .map(cidrRange).filter((r): r is [number, number] => r !== undefined);
  for (let i = 0; i < 256; i++) {
    const c = (process.pid + i) % 256;
    const [lo, hi] = cidrRange(`10.213.${c}.0/24`)!;
    if (taken.every(([a, b]) => b < lo || a > hi)) return `10.213.${c}`;
  }
  throw new Error('shaped network: every 10.213.x.0/24 overlaps an address or a route of this host');
}

export class ShapedNetwork {
  /** where the coordinator listens: the bridge's address */
  readonly coordinatorHost: string;
  /** rank k's address, inside namespace k */
  readonly hosts: string[];
  readonly namespaces: string[];
  private readonly bridge: string;
  private readonly hostEnds: string[] = [];
  private closed = false;

  private constructor(readonly rate: LinkRate, readonly workers: number) {
    const id = process.pid;
    const net = freeSubnet();
    this.bridge = `snb${id}`;
    this.coordinatorHost = `${net}.1`;
    this.hosts = Array.from({ length: workers }, (_, k) => `${net}.${k + 2}`);
    this.namespaces = Array.from({ length: workers }, (_, k) => `splitnet-${id}-${k}`);
  }

  /**
   * Makes the bridge, one namespace per worker and the shaped veths; on any
   * failure removes what it made and throws. Refused up front (UsageError,
   * one line) where shaping is impossible.
   */
  static create(workers: number, rate: LinkRate): ShapedNetwork {
    const why = whyNoShaping();
    if (why !== undefined) throw new UsageError(`--link ${rate.text}: ${why}`);
    if (workers > 253) throw new UsageError(`--link: ${workers} workers do not fit one /24 (253 at most)`);
    removeStale();
    const n = new ShapedNetwork(rate, workers);
    try {
      n.build();
    } catch (err) {
      n.close();
      throw new Error(`--link ${rate.text}: could not build the shaped network: ${(String((err as { stderr?: string }).stderr ?? '').trim() || (err as Error).message)}`);
    }
    return n;
  }

  private build(): void {
    const id = process.pid;
    const burst = `${burstBytes(this.rate)}b`;
    // rate in bit/s; `latency` bounds the queue (packets that would wait longer are dropped, and TCP backs off as on a real link).
    const tbf = ['root', 'tbf', 'rate', `${this.rate.bitsPerSecond}bit`, 'burst', burst, 'latency', '50ms'];
    run('ip', ['link', 'add', this.bridge, 'type', 'bridge']);
    run('ip', ['addr', 'add', `${this.coordinatorHost}/24`, 'dev', this.bridge]);
    run('ip', ['link', 'set', this.bridge, 'up']);
    this.namespaces.forEach((ns, k) => {
      const hostEnd = `sn${id}h${k}`;
      const nsEnd = `sn${id}n${k}`;
      run('ip', ['netns', 'add', ns]);
      run('ip', ['link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', nsEnd]);
      this.hostEnds.push(hostEnd);
      run('ip', ['link', 'set', nsEnd, 'netns', ns]);
      run('ip', ['link', 'set', hostEnd, 'master', this.bridge, 'up']);
      run('tc', ['qdisc', 'add', 'dev', hostEnd, ...tbf]); // the worker's download
      run('ip', ['-n', ns, 'addr', 'add', `${this.hosts[k]}/24`, 'dev', nsEnd]);
      run('ip', ['-n', ns, 'link', 'set', nsEnd, 'up']);
      run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      run('tc', ['-n', ns, 'qdisc', 'add', 'dev', nsEnd, ...tbf]); // the worker's upload
    });
  }

  /**
   * The cluster with its local workers moved into the namespaces: each
   * worker's host becomes its namespace's address (ports stay: each
   * namespace has ports of its own), the coordinator listens on the bridge,
   * over TCP (ipc does not cross namespaces), bound to those addresses only,
   * with CURVE (plain only where the config says "none" and the user gave
   * --insecure).
   */
  place(cluster: ClusterConfig, insecure = false): ClusterConfig {
    if (cluster.workers.length > this.workers) throw new Error(`shaped network: built for ${this.workers} workers, the cluster has ${cluster.workers.length}`);
    return {
      ...cluster,
      transport: 'tcp',
      // The bridge's and the namespaces' addresses are not loopback: Linux takes a packet for any of its
      // addresses on any interface, so a neighbour with a route to this /24 through this host reaches them.
      // CURVE, then, unless the user said --insecure to a config without it.
      security: insecure && cluster.security === 'none' ? 'none' : 'curve',
      coordinator: { ...cluster.coordinator, host: this.coordinatorHost },
      workers: cluster.workers.map((w, k) => ({ ...w, host: this.hosts[k]! })),
    };
  }

  /** Starts rank k's worker inside namespace k (`ip netns exec` execs it: the pid is the worker's). */
  readonly workerCommand: WorkerCommandOverride = (rank) => {
    const ns = this.namespaces[rank];
    if (ns === undefined) return undefined;
    const { command, args } = workerCommand();
    return { command: 'ip', args: ['netns', 'exec', ns, command, ...args] };
  };

  /**
   * Probes rank `rank`'s link from here: the echo runs inside its namespace
   * (`splitnet link-echo`), so each direction crosses one shaped end, as a
   * worker's sends and receives do.
   */
  probe(rank = 0, secure = true): Promise<LinkProbe> {
    return probeLink({ host: this.coordinatorHost, echoHost: this.hosts[rank]!, secure, startEcho: (plan) => this.startEcho(rank, plan) });
  }

  private startEcho(rank: number, plan: EchoPlan): Promise<Echo> {
    const { command, args } = workerCommand();
    const child = spawn('ip', ['netns', 'exec', this.namespaces[rank]!, command, ...args, 'link-echo'], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin.on('error', () => {});
    child.stdin.write(`${JSON.stringify(plan)}\n`);
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    return new Promise<Echo>((resolve, reject) => {
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`link probe: the echo in ${this.namespaces[rank]} did not start within 30 s`)); }, 30_000);
      child.stdout.setEncoding('utf8').on('data', (c: string) => {
        if (!c.includes('ready')) return;
        clearTimeout(timer);
        resolve({
          stop: async () => {
            child.stdin.end();
            const late = setTimeout(() => child.kill('SIGKILL'), 5_000);
            await exited;
            clearTimeout(late);
          },
        });
      });
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`link probe: the echo in ${this.namespaces[rank]} exited (${code}): ${stderr.trim().split('\n').at(-1) ?? ''}`)); });
    });
  }

  /** Kills what runs inside, deletes the namespaces, veths and the bridge. Idempotent; never throws. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const ns of this.namespaces) killInside(ns);
    for (const h of this.hostEnds) tryRun('ip', ['link', 'del', h]); // its peer in the namespace goes with it
    for (const ns of this.namespaces) tryRun('ip', ['netns', 'del', ns]);
    tryRun('ip', ['link', 'del', this.bridge]);
  }
}

/**
 * The run's workers, all on this host, moved behind shaped links. A worker
 * on another host is refused: its link is the real network's, not ours to
 * shape. `insecure`: the user's --insecure (see `place`).
 */
export function shapeLinks(cluster: ClusterConfig, workers: WorkerSpec[], rate: LinkRate, insecure = false): { network: ShapedNetwork; cluster: ClusterConfig } {
  const remote = workers.filter((w) => !isLocal(w.host)).map((w) => w.host);
  if (remote.length > 0) {
    throw new UsageError(`--link ${rate.text}: shapes the links of workers on this host; ${[...new Set(remote)].join(', ')} ${remote.length === 1 ? 'is' : 'are'} remote`);
  }
  const network = ShapedNetwork.create(workers.length, rate);
  return { network, cluster: network.place({ ...cluster, workers }, insecure) };
}
