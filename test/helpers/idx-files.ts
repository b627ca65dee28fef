import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

export function tempDir(prefix = 'splitnet-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** An IDX file's bytes: magic 0x0000 08 <rank>, big-endian dims, data. */
export function idxBytes(dims: number[], data: Uint8Array | number[], type = 0x08): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = type;
  head[3] = dims.length;
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, Buffer.from(data instanceof Uint8Array ? data : Uint8Array.from(data))]);
}

/** Writes a small, valid Fashion-MNIST-shaped data set (n train, m test images). */
export function writeTinyDataset(dir: string, n = 20, m = 10, gzip = true): void {
  const put = (name: string, bytes: Buffer) => writeFileSync(join(dir, gzip ? `${name}.gz` : name), gzip ? gzipSync(bytes) : bytes);
  const images = (count: number) => idxBytes([count, 28, 28], Uint8Array.from({ length: count * 784 }, (_, i) => (i * 7) % 256));
  const labels = (count: number) => idxBytes([count], Uint8Array.from({ length: count }, (_, i) => i % 10));
  put('train-images-idx3-ubyte', images(n));
  put('train-labels-idx1-ubyte', labels(n));
  put('t10k-images-idx3-ubyte', images(m));
  put('t10k-labels-idx1-ubyte', labels(m));
}
