import { createServer } from 'node:net';
import { parseClusterConfig, type ClusterConfig } from '../../src/cluster/config.js';

/** Ports the OS says are free now (listen on 0, read, close). */
export async function freePorts(n: number): Promise<number[]> {
  const ports: number[] = [];
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise<ReturnType<typeof createServer>>((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => resolve(s));
  })));
  for (const s of servers) ports.push((s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/** A local cluster of `workers` CPU workers on fresh loopback ports. */
export async function localCluster(workers: number, overrides: Record<string, unknown> = {}): Promise<ClusterConfig> {
  const [coord, ...peers] = await freePorts(workers + 1);
  return parseClusterConfig({
    coordinator: { host: '127.0.0.1', port: coord },
    transport: 'tcp',
    workers: peers.map((port) => ({ host: '127.0.0.1', device: 'cpu', port })),
    timeouts: { registerMs: 30_000, stepMs: 60_000, shutdownGraceMs: 2_000 },
    heartbeat: { intervalMs: 500, timeoutMs: 5_000 },
    ...overrides,
  });
}
