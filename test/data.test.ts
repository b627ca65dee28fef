import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { epochOrder, makeBatch, PIXEL_MEAN, PIXEL_STD } from '../src/data/batches.js';
import { dataFile, findDataDir, loadSplit, searchPath } from '../src/data/fashion-mnist.js';
import { fetchFashionMnist } from '../src/data/fetch.js';
import { syntheticImages } from '../src/data/synthetic.js';
import { setupBackends } from './helpers/backends.js';
import { idxBytes, tempDir, writeTinyDataset } from './helpers/idx-files.js';

beforeAll(setupBackends);

const DEBIAN = '/usr/share/datasets/fashion-mnist';
/** The real data set, wherever `npm run setup` put it (CI: Debian's package). */
function realDataDir(): string {
  try {
    return findDataDir();
  } catch (err) {
    throw new Error(`these tests read the real Fashion-MNIST: run 'npm run setup' first (${(err as Error).message})`);
  }
}

describe('Fashion-MNIST files', () => {
  it('loads the real data set and verifies its content checksums', () => {
    const dir = realDataDir();
    const train = loadSplit(dir, 'train', { verify: true });
    const test = loadSplit(dir, 't10k', { verify: true });
    expect([train.count, test.count]).toEqual([60_000, 10_000]);
    expect(train.images.length).toBe(60_000 * 784);
    // every class appears 6,000 times in the training set
    const counts = new Array(10).fill(0);
    for (const l of train.labels) counts[l]++;
    expect(counts).toEqual(new Array(10).fill(6000));
  });

  it('reads plain (not gzip) files as well', () => {
    const dir = tempDir();
    writeTinyDataset(dir, 20, 10, false);
    expect(loadSplit(dir, 'train').count).toBe(20);
  });

  it('looks in --data, then $SPLITNET_DATA, then ./data/fashion-mnist, then Debian\'s directory', () => {
    const saved = process.env.SPLITNET_DATA;
    process.env.SPLITNET_DATA = '/somewhere/else';
    try {
      expect(searchPath('/given')).toEqual(['/given']);
      expect(searchPath()).toEqual(['/somewhere/else', join(process.cwd(), 'data/fashion-mnist'), DEBIAN]);
      const dir = tempDir();
      writeTinyDataset(dir);
      process.env.SPLITNET_DATA = dir;
      expect(findDataDir()).toBe(dir);
    } finally {
      if (saved === undefined) delete process.env.SPLITNET_DATA; else process.env.SPLITNET_DATA = saved;
    }
  });

  describe('refuses a bad file, naming it and what is wrong', () => {
    const cases: Array<[string, (dir: string) => void, 'train' | 't10k', RegExp]> = [
      ['a truncated image file', (d) => writeFileSync(join(d, 'train-images-idx3-ubyte.gz'), gzipSync(idxBytes([20, 28, 28], new Uint8Array(100)))), 'train',
        /train-images-idx3-ubyte\.gz: truncated: header says 20×28×28 = 15680 bytes of data, file has 100$/],
      ['corrupt gzip data', (d) => writeFileSync(join(d, 'train-labels-idx1-ubyte.gz'), Buffer.from([0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5])), 'train',
        /train-labels-idx1-ubyte\.gz: corrupt gzip data/],
      ['a file that is not IDX', (d) => writeFileSync(join(d, 't10k-images-idx3-ubyte.gz'), gzipSync(Buffer.from('<html>not found</html>'))), 't10k',
        /t10k-images-idx3-ubyte\.gz: not an IDX file: magic starts 0x3c68, expected 0x0000$/],
      ['labels with three dimensions', (d) => writeFileSync(join(d, 't10k-labels-idx1-ubyte.gz'), gzipSync(idxBytes([10, 1, 1], new Uint8Array(10)))), 't10k',
        /t10k-labels-idx1-ubyte\.gz: 3 dimensions: expected 1$/],
      ['fewer labels than images', (d) => writeFileSync(join(d, 'train-labels-idx1-ubyte.gz'), gzipSync(idxBytes([19], new Uint8Array(19)))), 'train',
        /train-labels-idx1-ubyte\.gz: 19 labels for the 20 images of .*train-images-idx3-ubyte\.gz$/],
      ['a label that is not a class', (d) => writeFileSync(join(d, 't10k-labels-idx1-ubyte.gz'), gzipSync(idxBytes([10], [0, 1, 2, 12, 4, 5, 6, 7, 8, 9]))), 't10k',
        /t10k-labels-idx1-ubyte\.gz: label 12 at index 3: expected 0\.\.9$/],
      ['images of another size', (d) => writeFileSync(join(d, 'train-images-idx3-ubyte.gz'), gzipSync(idxBytes([20, 32, 32], new Uint8Array(20 * 1024)))), 'train',
        /train-images-idx3-ubyte\.gz: images are 32×32: expected 28×28$/],
      ['bytes after the data', (d) => writeFileSync(join(d, 't10k-labels-idx1-ubyte.gz'), gzipSync(idxBytes([10], new Uint8Array(12)))), 't10k',
        /t10k-labels-idx1-ubyte\.gz: 2 bytes after the 10 data the header declares$/],
      ['an element type other than bytes', (d) => writeFileSync(join(d, 't10k-labels-idx1-ubyte.gz'), gzipSync(idxBytes([10], new Uint8Array(10), 0x0d))), 't10k',
        /t10k-labels-idx1-ubyte\.gz: element type 0xd: expected 0x08 \(unsigned bytes\)$/],
    ];
    for (const [what, damage, split, message] of cases) {
      it(what, () => {
        const dir = tempDir();
        writeTinyDataset(dir);
        damage(dir);
        expect(() => loadSplit(dir, split)).toThrow(message);
      });
    }

    it('a missing file, through the search for the data directory', () => {
      const dir = tempDir();
      writeTinyDataset(dir);
      rmSync(join(dir, 't10k-labels-idx1-ubyte.gz'));
      expect(() => findDataDir(dir)).toThrow(`${dir}: missing t10k-labels-idx1-ubyte(.gz)`);
    });

    it('content that is valid IDX but not Fashion-MNIST, when verifying', () => {
      const dir = tempDir();
      writeTinyDataset(dir);
      expect(() => loadSplit(dir, 'train', { verify: true })).toThrow(/train-images-idx3-ubyte\.gz: content checksum .* does not match Fashion-MNIST's c59f468a2f67…$/);
    });
  });
});

describe('batches', () => {
  it('each epoch is a different permutation fixed by (seed, epoch)', () => {
    const a = epochOrder(1000, 1, 0);
    expect([...a].sort((x, y) => x - y)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(epochOrder(1000, 1, 0)).toEqual(a);
    expect(epochOrder(1000, 1, 1)).not.toEqual(a);
    expect(epochOrder(1000, 2, 0)).not.toEqual(a);
  });

  it('resizes, normalizes and repeats channels: x [B, R, R, C], labels int32', () => {
    const data = syntheticImages('train', 8, 1);
    const { x, y } = makeBatch(data, [0, 3, 5], { resolution: 67, channels: 3, resize: 'half-pixel' });
    expect(x.shape).toEqual([3, 67, 67, 3]);
    expect(y.dtype).toBe('int32');
    expect(Array.from(y.dataSync())).toEqual([data.labels[0], data.labels[3], data.labels[5]]);
    const min = tf.min(x).dataSync()[0]!;
    expect(min).toBeGreaterThanOrEqual(-PIXEL_MEAN / PIXEL_STD - 1e-5);
    tf.dispose([x, y]);
  });

  /**
   * PyTorch's bilinear interpolate(align_corners=False), torchvision's Resize
   * (d2l's) on tensors: output pixel i reads input (i + 0.5)·28/R − 0.5,
   * clamped at 0, between floor and floor + 1 (clamped at 27).
   */
  function halfPixelResize(img: Float32Array, r: number): Float32Array {
    const out = new Float32Array(r * r);
    const src = (i: number) => {
      const s = Math.max(0, (i + 0.5) * (28 / r) - 0.5);
      const lo = Math.min(Math.floor(s), 27);
      return { lo, hi: Math.min(lo + 1, 27), t: s - lo };
    };
    for (let y = 0; y < r; y++) {
      const v = src(y);
      for (let x = 0; x < r; x++) {
        const h = src(x);
        const at = (yy: number, xx: number) => img[yy * 28 + xx]!;
        const top = at(v.lo, h.lo) * (1 - h.t) + at(v.lo, h.hi) * h.t;
        const bottom = at(v.hi, h.lo) * (1 - h.t) + at(v.hi, h.hi) * h.t;
        out[y * r + x] = top * (1 - v.t) + bottom * v.t;
      }
    }
    return out;
  }

  for (const r of [67, 99, 224]) {
    it(`resizes 28 → ${r} as PyTorch's interpolate(align_corners=False) does (< 1e-5), not with tfjs's legacy mapping`, () => {
      const data = syntheticImages('train', 2, 3);
      const pixels = Float32Array.from(data.images.subarray(28 * 28, 2 * 28 * 28), (v) => v / 255);
      const want = halfPixelResize(pixels, r).map((v) => (v - PIXEL_MEAN) / PIXEL_STD);
      const got = (mapping: 'half-pixel' | 'legacy') => {
        const { x, y } = makeBatch(data, [1], { resolution: r, channels: 1, resize: mapping });
        const v = Float32Array.from(x.dataSync());
        tf.dispose([x, y]);
        return v;
      };
      const worst = (a: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - want[i]!)), 0);
      expect(worst(got('half-pixel'))).toBeLessThan(1e-5);
      expect(worst(got('legacy'))).toBeGreaterThan(1e-2);
    });
  }

  it('augmentation is keyed: the same (seed, epoch) crops and flips the same way', () => {
    const data = syntheticImages('train', 16, 1);
    const make = (epoch: number) => {
      const { x, y } = makeBatch(data, [1, 2, 3, 4], { resolution: 28, channels: 1, resize: 'half-pixel', augment: { seed: 4, epoch } });
      const v = Array.from(x.dataSync());
      tf.dispose([x, y]);
      return v;
    };
    const plain = makeBatch(data, [1, 2, 3, 4], { resolution: 28, channels: 1, resize: 'half-pixel' });
    const p = Array.from(plain.x.dataSync());
    tf.dispose([plain.x, plain.y]);
    expect(make(0)).toEqual(make(0));
    expect(make(0)).not.toEqual(make(1));
    expect(make(0)).not.toEqual(p);
  });

  it('throws when a sample index is outside the data', () => {
    const data = syntheticImages('train', 4, 1);
    expect(() => makeBatch(data, [0, 4], { resolution: 28, channels: 1, resize: 'half-pixel' })).toThrow('makeBatch: sample 4 outside 0..3');
  });
});

describe('splitnet data fetch', () => {
  let server: Server | undefined;
  afterEach(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

  /** A local stand-in for the mirror, serving `files` by name. */
  async function mirror(files: Record<string, Buffer>): Promise<string> {
    server = createServer((req, res) => {
      const body = files[(req.url ?? '').slice(1)];
      if (body === undefined) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, { 'content-length': body.length });
      res.end(body);
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  }

  it('downloads the four files, verifies them, and skips verified ones the second time', async () => {
    const names = ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'];
    const real = realDataDir();
    const files = Object.fromEntries(names.map((n) => [`${n}.gz`, readFileSync(dataFile(real, n)!)]));
    const url = await mirror(files);
    const dir = join(tempDir(), 'fm');
    const first = await fetchFashionMnist(dir, url);
    expect(first.fetched).toEqual(names);
    expect(loadSplit(dir, 't10k', { verify: true }).count).toBe(10_000);
    const second = await fetchFashionMnist(dir, url);
    expect(second).toMatchObject({ fetched: [], present: names });
  });

  it('refuses content that is not Fashion-MNIST and writes nothing', async () => {
    const url = await mirror({ 'train-images-idx3-ubyte.gz': gzipSync(idxBytes([1, 28, 28], new Uint8Array(784))) });
    const dir = join(tempDir(), 'fm');
    await expect(fetchFashionMnist(dir, url)).rejects.toThrow(/train-images-idx3-ubyte\.gz: content checksum .* is not Fashion-MNIST's .*; nothing written$/);
    expect(existsSync(join(dir, 'train-images-idx3-ubyte.gz'))).toBe(false);
  });

  it("says when the mirror cannot be reached and names Debian's package", async () => {
    const url = await mirror({});
    server!.close();
    server = undefined;
    const dir = join(tempDir(), 'fm');
    mkdirSync(dir, { recursive: true });
    await expect(fetchFashionMnist(dir, url)).rejects.toThrow(/cannot download http:\/\/127\.0\.0\.1:\d+\/train-images-idx3-ubyte\.gz \(.*\); install Debian's dataset-fashion-mnist \(apt-get install dataset-fashion-mnist/);
  });
});
