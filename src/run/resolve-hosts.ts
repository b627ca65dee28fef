/**
 * Every host a cluster names is looked up before anything starts: a name
 * that does not resolve is one line naming it (exit 2), instead of workers
 * started and a registration timeout a minute later.
 */
import { lookup } from 'node:dns/promises';
import type { ClusterConfig, WorkerSpec } from '../config/cluster.js';
import { UsageError } from '../errors.js';

/** How long one name may take to resolve, ms (a resolver that does not answer is a failure too). */
const LOOKUP_MS = 10_000;
/** getaddrinfo's answers that the name does not exist (bad input); anything else (EAI_AGAIN, a timeout) is the network failing. */
const NO_SUCH_NAME = new Set(['ENOTFOUND', 'EAI_NONAME', 'EAI_NODATA']);

async function resolves(host: string): Promise<string | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => { timer = setTimeout(() => resolve(`no answer within ${LOOKUP_MS / 1000} s`), LOOKUP_MS); });
  try {
    return await Promise.race([lookup(host).then(() => undefined, (err: NodeJS.ErrnoException) => err.code ?? err.message), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves the coordinator's host and every worker's (each name once, all at once); throws naming the first that does not resolve. */
export async function resolveHosts(cluster: ClusterConfig, workers: WorkerSpec[]): Promise<void> {
  const roles = new Map<string, string>([[cluster.coordinator.host, 'coordinator.host']]);
  cluster.workers.forEach((w, i) => { if (workers.includes(w) && !roles.has(w.host)) roles.set(w.host, `workers.${i}.host`); });
  const failures = await Promise.all([...roles].map(async ([host, key]) => ({ host, key, why: await resolves(host) })));
  const bad = failures.find((f) => f.why !== undefined);
  if (bad === undefined) return;
  if (NO_SUCH_NAME.has(bad.why!)) throw new UsageError(`${bad.key}: host '${bad.host}' does not resolve (${bad.why}): fix the name in the cluster config; nothing was started`);
  throw new Error(`${bad.key}: host '${bad.host}' could not be looked up (${bad.why}): the name service is failing; nothing was started`);
}
