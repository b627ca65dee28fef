/**
 * Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60,000 training and 10,000 test
 * images, 28×28 grey, 10 classes, as the four original IDX files.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DataFileError, parseIdx, readIdxBytes } from './idx.js';

export const CLASSES = [
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
] as const;

export const SIDE = 28;

export type Split = 'train' | 't10k';

export const FILES = {
  train: { images: 'train-images-idx3-ubyte', labels: 'train-labels-idx1-ubyte', count: 60_000 },
  t10k: { images: 't10k-images-idx3-ubyte', labels: 't10k-labels-idx1-ubyte', count: 10_000 },
} as const;

/**
 * SHA-256 of each file's decompressed bytes. The gzip wrappers differ between
 * copies (the official mirror's, Debian's dataset-fashion-mnist), the content
 * does not.
 */
export const CONTENT_SHA256: Record<string, string> = {
  'train-images-idx3-ubyte': 'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
  'train-labels-idx1-ubyte': 'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
  't10k-images-idx3-ubyte': '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
  't10k-labels-idx1-ubyte': '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
};

/** Images [N, 28, 28] as bytes and labels [N] in 0..9. */
export interface LabeledImages {
  split: Split;
  count: number;
  images: Uint8Array;
  labels: Uint8Array;
}

/** Where the data is looked for, in order. */
export function searchPath(explicit?: string): string[] {
  const dirs: string[] = [];
  if (explicit !== undefined) return [resolve(explicit)];
  if (process.env.SPLITNET_DATA) dirs.push(resolve(process.env.SPLITNET_DATA));
  dirs.push(resolve('data/fashion-mnist'), '/usr/share/datasets/fashion-mnist');
  return dirs;
}

/** `dir/name.gz` or `dir/name`, whichever exists. */
export function dataFile(dir: string, name: string): string | undefined {
  for (const candidate of [join(dir, `${name}.gz`), join(dir, name)]) if (existsSync(candidate)) return candidate;
  return undefined;
}

/** The first directory in the search path that holds all four files. */
export function findDataDir(explicit?: string): string {
  const dirs = searchPath(explicit);
  const names = Object.values(FILES).flatMap((f) => [f.images, f.labels]);
  for (const dir of dirs) {
    if (names.every((n) => dataFile(dir, n) !== undefined)) return dir;
  }
  if (explicit !== undefined) {
    const missing = names.filter((n) => dataFile(dirs[0]!, n) === undefined);
    throw new DataFileError(dirs[0]!, `missing ${missing.map((m) => `${m}(.gz)`).join(', ')}`);
  }
  throw new DataFileError(dirs.join(', '),
    "Fashion-MNIST not found in any of these: run 'npx splitnet data fetch' or 'apt-get install dataset-fashion-mnist'");
}

/**
 * Loads one split, checking headers, sizes, that images and labels agree and
 * that every label is a class. `verify` also checks the content checksum
 * (~0.2 s for the training images).
 */
export function loadSplit(dir: string, split: Split, opts: { verify?: boolean } = {}): LabeledImages {
  const f = FILES[split];
  const read = (name: string, dims: number) => {
    const path = dataFile(dir, name);
    if (path === undefined) throw new DataFileError(join(dir, name), 'not found (looked for .gz and plain)');
    const bytes = readIdxBytes(path);
    if (opts.verify) {
      const sha = createHash('sha256').update(bytes).digest('hex');
      if (sha !== CONTENT_SHA256[name]) {
        throw new DataFileError(path, `content checksum ${sha.slice(0, 12)}… does not match Fashion-MNIST's ${CONTENT_SHA256[name]!.slice(0, 12)}…`);
      }
    }
    return { path, idx: parseIdx(path, bytes, dims) };
  };
  const images = read(f.images, 3);
  const labels = read(f.labels, 1);
  const [n, h, w] = images.idx.dims as [number, number, number];
  if (h !== SIDE || w !== SIDE) {
    throw new DataFileError(images.path, `images are ${h}×${w}: expected ${SIDE}×${SIDE}`);
  }
  if (labels.idx.dims[0] !== n) {
    throw new DataFileError(labels.path, `${labels.idx.dims[0]} labels for the ${n} images of ${images.path}`);
  }
  const bad = labels.idx.data.findIndex((l) => l >= CLASSES.length);
  if (bad >= 0) {
    throw new DataFileError(labels.path, `label ${labels.idx.data[bad]} at index ${bad}: expected 0..${CLASSES.length - 1}`);
  }
  return { split, count: n, images: images.idx.data, labels: labels.idx.data };
}
