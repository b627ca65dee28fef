import { freePorts } from '../../src/wire/free-ports.js';
import { parseClusterConfig, type ClusterConfig } from '../../src/config/cluster.js';

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
