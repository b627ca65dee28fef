/**
 * A worker task under srun: Slurm started it (not the launcher), so it reads
 * its keys from the config's key file and pins its device itself. scancel
 * and the time limit SIGTERM every task at once: a worker ignores it, so the
 * coordinator can checkpoint first and then stop the workers.
 */
import type { BackendChoice } from '../backend.js';
import { readWorkerKeys } from '../wire/key-file.js';
import { deviceEnv } from './launcher.js';
import type { SlurmRole } from './slurm.js';
import { runWorker } from './worker.js';

/** How long a Slurm worker task that has finished may take to exit by itself before it is made to, ms. */
const EXIT_MS = 1000;

export async function runSlurmWorker(role: Extract<SlurmRole, { kind: 'worker' }>, backend: BackendChoice): Promise<number> {
  process.on('SIGINT', () => {});
  process.on('SIGTERM', () => {});
  Object.assign(process.env, deviceEnv(role.device));
  const code = await runWorker({
    coordinator: role.coordinator, rank: role.rank, device: String(role.device), backend, registerMs: role.registerMs, heartbeat: role.heartbeat,
    ...(role.keysFile !== undefined ? { keys: readWorkerKeys(role.keysFile, role.rank) } : {}),
  });
  // Done: no launcher will SIGTERM a task that lingers on an open native handle, and srun waits for every task.
  setTimeout(() => process.exit(code), EXIT_MS).unref();
  return code;
}
