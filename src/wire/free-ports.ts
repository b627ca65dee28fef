import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/**
 * Where ports are picked: below the kernel's ephemeral range, so no outgoing
 * connection (libzmq reconnecting to a peer not yet listening takes a new
 * one each try) can take a port between its check here and its bind. Linux's
 * range starts at 32768 by default; the picks stay at least 5000 under it.
 */
function pickRange(): [number, number] {
  let low = 32_768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch { /* not Linux: the default */ }
  return [10_000, Math.max(10_100, low - 5_000)];
}

/** Whether `port` can be listened on, on every interface (a worker on a non-loopback host binds 0.0.0.0). */
const canListen = (port: number) => new Promise<boolean>((resolve) => {
  const s = createServer();
  s.once('error', () => resolve(false));
  s.listen(port, '0.0.0.0', () => s.close(() => resolve(true)));
});

/**
 * `n` ports free now, for tests and benchmarks; with `consecutive`, a block
 * base..base+n-1 (the Slurm layout: the coordinator's port, then one per
 * worker).
 */
export async function freePorts(n: number, consecutive = false): Promise<number[]> {
  const [from, to] = pickRange();
  const got: number[] = [];
  for (let tries = 0; got.length < n && tries < 10_000; tries++) {
    if (consecutive) {
      const base = from + Math.floor(Math.random() * (to - from - n));
      const block = Array.from({ length: n }, (_, i) => base + i);
      if ((await Promise.all(block.map(canListen))).every(Boolean)) return block;
    } else {
      const port = from + Math.floor(Math.random() * (to - from));
      if (!got.includes(port) && await canListen(port)) got.push(port);
    }
  }
  if (got.length < n) throw new Error(`no ${n} free ports between ${from} and ${to}`);
  return got;
}
