/**
 * `splitnet data fetch`: the four files from Fashion-MNIST's own download
 * mirror, checked against the known content checksums, written atomically.
 * Where the mirror cannot be reached it says so and names the other route.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { UsageError } from '../errors.js';
import { CONTENT_SHA256, FILES, dataFile } from './fashion-mnist.js';

export const MIRROR = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/';
const TIMEOUT_MS = 60_000;

export interface FetchReport {
  dir: string;
  fetched: string[];
  present: string[];
}

function verified(path: string, name: string): boolean {
  try {
    const bytes = gunzipSync(readFileSync(path));
    return createHash('sha256').update(bytes).digest('hex') === CONTENT_SHA256[name];
  } catch {
    return false;
  }
}

export async function fetchFashionMnist(dirArg: string | undefined, mirror = MIRROR): Promise<FetchReport> {
  const dir = resolve(dirArg ?? 'data/fashion-mnist');
  mkdirSync(dir, { recursive: true });
  const report: FetchReport = { dir, fetched: [], present: [] };
  const names = Object.values(FILES).flatMap((f) => [f.images, f.labels]);
  for (const name of names) {
    const existing = dataFile(dir, name);
    if (existing !== undefined && existing.endsWith('.gz') && verified(existing, name)) {
      report.present.push(name);
      continue;
    }
    const url = `${mirror}${name}.gz`;
    let body: Buffer;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
      if (!res.ok) throw new Error(`HTTP ${res.status} ${res.statusText}`);
      body = Buffer.from(await res.arrayBuffer());
    } catch (err) {
      const why = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
      throw new Error(`cannot download ${url} (${why}); install Debian's dataset-fashion-mnist ` +
        `(apt-get install dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist) or copy the four .gz files into ${dir}`);
    }
    let sha: string;
    try {
      sha = createHash('sha256').update(gunzipSync(body)).digest('hex');
    } catch (err) {
      throw new UsageError(`${url}: not gzip data (${(err as Error).message})`);
    }
    if (sha !== CONTENT_SHA256[name]) {
      throw new UsageError(`${url}: content checksum ${sha.slice(0, 12)}… is not Fashion-MNIST's ${CONTENT_SHA256[name]!.slice(0, 12)}…; nothing written`);
    }
    const target = join(dir, `${name}.gz`);
    writeFileSync(`${target}.part`, body);
    renameSync(`${target}.part`, target);
    report.fetched.push(name);
  }
  return report;
}
