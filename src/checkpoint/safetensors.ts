/**
 * The safetensors format (huggingface/safetensors): an 8-byte little-endian
 * header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
 * [begin, end]}, "__metadata__": {string: string}}, then the raw little-endian
 * tensor bytes. Only F32 is written or read here.
 */
import { readFileSync } from 'node:fs';
import { DataFileError } from '../errors.js';
import { writeFileDurably, type WriteFs, type Written } from './durable-write.js';

export interface NamedTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** Header size cap: a corrupt length field must not make us allocate gigabytes. */
const MAX_HEADER_BYTES = 100 * 2 ** 20;

/** A file's bytes as pieces (the header, then each tensor's data, not copied). */
export function encodeSafetensors(tensors: NamedTensor[], metadata: Record<string, string> = {}): Uint8Array[] {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1);
    if (size !== t.data.length) throw new Error(`writeSafetensors: ${t.name} has shape [${t.shape}] but ${t.data.length} values`);
    if (t.name in header) throw new Error(`writeSafetensors: duplicate tensor name ${t.name}`);
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // keeps tensor data 8-byte aligned
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8);
  return [head, ...tensors.map((t) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))];
}

/** Writes atomically (a temporary file, every byte checked, fsync, then rename over `path`). */
export function writeSafetensors(path: string, tensors: NamedTensor[], metadata: Record<string, string> = {}, fs?: WriteFs): Written {
  return writeFileDurably(path, encodeSafetensors(tensors, metadata), fs);
}

export interface SafetensorsFile {
  tensors: Map<string, NamedTensor>;
  metadata: Record<string, string>;
}

/** Reads and validates a whole file; every problem names the file. */
export function readSafetensors(path: string): SafetensorsFile {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (err) {
    throw new DataFileError(path, `cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  return parseSafetensors(buf, path);
}

/** Parses and validates a file's bytes; `path` names it in errors. */
export function parseSafetensors(buf: Buffer, path: string): SafetensorsFile {
  if (buf.length < 8) throw new DataFileError(path, `truncated: ${buf.length} bytes, no safetensors header`);
  const n = Number(buf.readBigUInt64LE(0));
  if (n > MAX_HEADER_BYTES || 8 + n > buf.length) {
    throw new DataFileError(path, `header length ${n} does not fit a ${buf.length}-byte file`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new DataFileError(path, `header is not JSON (${(err as Error).message})`);
  }
  const dataStart = 8 + n;
  const dataBytes = buf.length - dataStart;
  const tensors = new Map<string, NamedTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (e.dtype !== 'F32') throw new DataFileError(path, `${name}: dtype ${String(e.dtype)}, expected F32`);
    const shape = e.shape;
    const offsets = e.data_offsets;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new DataFileError(path, `${name}: shape ${JSON.stringify(shape)} is not a list of sizes`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isInteger(o))) {
      throw new DataFileError(path, `${name}: data_offsets ${JSON.stringify(offsets)} is not [begin, end]`);
    }
    const [begin, end] = offsets as [number, number];
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end - begin !== count * 4 || begin < 0 || end > dataBytes) {
      throw new DataFileError(path, `${name}: bytes [${begin}, ${end}) do not hold [${shape}] float32 within ${dataBytes} data bytes`);
    }
    // Copy: the file buffer's offset need not be 4-byte aligned.
    const data = new Float32Array(count);
    new Uint8Array(data.buffer).set(buf.subarray(dataStart + begin, dataStart + end));
    tensors.set(name, { name, shape: shape as number[], data });
  }
  return { tensors, metadata };
}
