/**
 * The IDX format of (Fashion-)MNIST: a 4-byte magic (0, 0, type 0x08 = ubyte,
 * number of dimensions), one big-endian uint32 per dimension, then the bytes.
 * Files may be gzip-compressed (as distributed) or plain.
 */
import { gunzipSync } from 'node:zlib';
import { basename } from 'node:path';
import { readFileSync } from 'node:fs';
import { DataFileError, INPUT_ERRNOS } from '../errors.js';

export { DataFileError };

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

const GZIP_MAGIC = [0x1f, 0x8b];

/** Reads and decompresses (when gzip) one IDX file. */
export function readIdxBytes(path: string): Buffer {
  let raw: Buffer;
  try {
    raw = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== undefined && !INPUT_ERRNOS.has(code)) throw new Error(`${path}: reading failed (${code})`); // the disk, not the input
    throw new DataFileError(path, code === 'ENOENT' ? 'not found' : `cannot be read (${code ?? String(err)})`);
  }
  if (raw[0] === GZIP_MAGIC[0] && raw[1] === GZIP_MAGIC[1]) {
    try {
      return gunzipSync(raw);
    } catch (err) {
      throw new DataFileError(path, `corrupt gzip data (${(err as Error).message})`);
    }
  }
  return raw;
}

/** Parses IDX bytes, checking the header against `expectDims` (the number of dimensions) and the length. */
export function parseIdx(file: string, bytes: Buffer, expectDims: number): IdxArray {
  const name = basename(file);
  if (bytes.length < 4 + 4 * expectDims) {
    throw new DataFileError(name, `truncated: ${bytes.length} bytes, shorter than an IDX header of ${expectDims} dimensions`);
  }
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    throw new DataFileError(name, `not an IDX file: magic starts 0x${bytes.readUInt16BE(0).toString(16).padStart(4, '0')}, expected 0x0000`);
  }
  if (bytes[2] !== 0x08) {
    throw new DataFileError(name, `element type 0x${bytes[2]!.toString(16)}: expected 0x08 (unsigned bytes)`);
  }
  if (bytes[3] !== expectDims) {
    throw new DataFileError(name, `${bytes[3]} dimensions: expected ${expectDims}`);
  }
  const dims = Array.from({ length: expectDims }, (_, i) => bytes.readUInt32BE(4 + 4 * i));
  const header = 4 + 4 * expectDims;
  const expected = dims.reduce((a, b) => a * b, 1);
  const have = bytes.length - header;
  if (have < expected) {
    throw new DataFileError(name, `truncated: header says ${dims.join('×')} = ${expected} bytes of data, file has ${have}`);
  }
  if (have > expected) {
    throw new DataFileError(name, `${have - expected} bytes after the ${dims.join('×')} data the header declares`);
  }
  return { dims, data: new Uint8Array(bytes.buffer, bytes.byteOffset + header, expected) };
}
