/**
 * Checkpoints survive a full disk and crashes: every byte count of a write
 * is checked, the tensor file and the state are committed together by one
 * manifest written last, and --resume refuses a pair that is not one
 * checkpoint, saying what was expected and what was found.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  checkpointFiles, MANIFEST_FILE, readCheckpointState, readCheckpointTensors, saveCheckpoint, type Position, type TrainState,
} from '../src/checkpoint/checkpoint.js';
import { writeFileDurably, type WriteFs } from '../src/checkpoint/durable-write.js';
import { readModelState } from '../src/checkpoint/model-state.js';
import { CPU_DEFAULTS, type TrainConfig } from '../src/config/train.js';
import { alexnet } from '../src/model/alexnet.js';
import { buildModel, disposeModel, parameterShapes } from '../src/model/build.js';
import { Sgd } from '../src/model/sgd.js';
import { train } from '../src/run/loop.js';
import { setupBackends } from './helpers/backends.js';
import { Spawned } from './helpers/cluster.js';
import { tempDir } from './helpers/idx-files.js';

beforeAll(setupBackends);
const root = fileURLToPath(new URL('..', import.meta.url));
const spawned = new Spawned();
afterEach(() => { spawned.reap(); });

const spec = alexnet({ arch: 'd2l', width: 1 / 16, resolution: 67 });
const shapes = parameterShapes(spec);
const at = (globalStep: number): Position => ({ epoch: 0, step: globalStep, globalStep });

/** A model's state with weights keyed on `seed`, so two checkpoints differ. */
async function stateOf(seed: number): Promise<TrainState> {
  const m = buildModel(spec, { seed });
  const state = await readModelState(m, new Sgd({ lr: 0.1, momentum: 0, weightDecay: 0 }));
  disposeModel(m);
  return state;
}
const save = (dir: string, state: TrainState, step: number, fsImpl?: WriteFs) => saveCheckpoint(dir, spec, state, CPU_DEFAULTS, at(step), fsImpl ? { fs: fsImpl } : {});
const weights = (s: TrainState) => s.params.map((p) => Array.from(p.data.subarray(0, 8)));

/** A dir's checkpoint files, names with the random part as <r> (the lock and metrics aside). */
const listing = (dir: string) => fs.readdirSync(dir).map((n) => n.replace(/-[0-9a-f]{8}\./, '-<r>.')).sort();

/**
 * node:fs, except that writes to a file whose name matches `target` stop
 * after `budget` bytes, as on a full disk: short writes, then `code`.
 */
function fullDisk(target: RegExp, budget: number, code = 'ENOSPC'): WriteFs {
  const names = new Map<number, string>();
  let left = budget;
  return {
    ...fs,
    openSync: (path: fs.PathLike, flags?: fs.OpenMode, mode?: fs.Mode) => {
      const fd = fs.openSync(path, flags ?? 'r', mode);
      names.set(fd, basename(String(path)));
      return fd;
    },
    writeSync: (fd: number, buf: Uint8Array, offset: number, length: number) => {
      if (!target.test(names.get(fd) ?? '')) return fs.writeSync(fd, buf, offset, length);
      if (left === 0) throw Object.assign(new Error(`${code}: no space left on device, write`), { code, syscall: 'write' });
      const n = Math.min(left, length, 1000); // never more than 1000 bytes a call: the writer must loop
      left -= n;
      return fs.writeSync(fd, buf, offset, n);
    },
  } as unknown as WriteFs;
}

describe('a durable write', () => {
  it('continues after short writes until every byte is on disk', () => {
    const dir = tempDir();
    const data = Uint8Array.from({ length: 10_000 }, (_, i) => i % 251);
    const w = writeFileDurably(join(dir, 'f.bin'), [data.subarray(0, 2500), data.subarray(2500)], fullDisk(/^f\.bin/, Infinity));
    expect(fs.readFileSync(join(dir, 'f.bin'))).toEqual(Buffer.from(data));
    expect(w).toEqual({ bytes: 10_000, sha256: createHash('sha256').update(data).digest('hex') });
  });

  it('that fails throws naming the file, the bytes expected and written and the errno code, and leaves no file behind', () => {
    const dir = tempDir();
    expect(() => writeFileDurably(join(dir, 'f.bin'), [new Uint8Array(10_000)], fullDisk(/^f\.bin/, 4096)))
      .toThrow('f.bin: wrote 4096 of 10000 bytes: ENOSPC (no space left on device)');
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});

describe('committing a checkpoint', () => {
  for (const [file, target] of [['the tensor file', /^checkpoint-2-.*\.safetensors/], ['the state file', /^checkpoint-2-.*\.json/], ['the manifest', /^checkpoint\.manifest\.json/]] as const) {
    it(`a full disk while writing ${file} gives the error and leaves the previous checkpoint current and resumable`, async () => {
      const dir = tempDir();
      const [one, two] = [await stateOf(1), await stateOf(2)];
      save(dir, one, 1);
      const before = listing(dir);
      expect(() => save(dir, two, 2, fullDisk(target, 300)))
        .toThrow(/^checkpoint[-.][\w.-]+: wrote 300 of \d+ bytes: ENOSPC \(no space left on device\); the previous checkpoint is untouched$/);
      expect(listing(dir)).toEqual(before); // nothing of the failed checkpoint is left
      expect(readCheckpointState(dir).position).toEqual(at(1));
      expect(weights(readCheckpointTensors(dir, spec, shapes))).toEqual(weights(one));
    });
  }

  it('a full disk at the first checkpoint says that none was written, and leaves nothing behind', async () => {
    const dir = tempDir();
    const one = await stateOf(1);
    expect(() => save(dir, one, 1, fullDisk(/^checkpoint-1-.*\.safetensors/, 300)))
      .toThrow(/^checkpoint-1-[0-9a-f]{8}\.safetensors: wrote 300 of \d+ bytes: ENOSPC \(no space left on device\); no checkpoint was written$/);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('a crash after the new pair is written but before the manifest is committed resumes the previous pair', async () => {
    const dir = tempDir();
    const [one, two] = [await stateOf(1), await stateOf(2)];
    save(dir, one, 1);
    // What a crash leaves: the next pair written in full, a manifest half-written under its temporary name.
    const crashed = tempDir();
    save(crashed, two, 2);
    for (const f of Object.values(checkpointFiles(crashed)!).filter((v) => typeof v === 'string')) fs.copyFileSync(f, join(dir, basename(f)));
    fs.writeFileSync(join(dir, `${MANIFEST_FILE}.tmp-99999-0badc0de`), '{"format": "splitnet-checkpoint-man');
    expect(readCheckpointState(dir).position).toEqual(at(1));
    expect(weights(readCheckpointTensors(dir, spec, shapes))).toEqual(weights(one));
    // The next commit removes what no manifest names.
    save(dir, two, 3);
    expect(listing(dir)).toEqual(['checkpoint-3-<r>.json', 'checkpoint-3-<r>.safetensors', MANIFEST_FILE]);
  });

  it('a run directory of the old format (checkpoint.json and checkpoint.safetensors, no manifest) still resumes, and the next checkpoint replaces it', async () => {
    const dir = tempDir();
    const one = await stateOf(1);
    save(dir, one, 1);
    const files = checkpointFiles(dir)!;
    const { tensorsFile: _, tensorsSha256: __, ...v1 } = { ...JSON.parse(fs.readFileSync(files.state, 'utf8')), version: 1 };
    fs.renameSync(files.tensors, join(dir, 'checkpoint.safetensors'));
    fs.writeFileSync(join(dir, 'checkpoint.json'), JSON.stringify(v1));
    [files.state, join(dir, MANIFEST_FILE)].forEach((f) => fs.rmSync(f));
    expect(readCheckpointState(dir).position).toEqual(at(1));
    expect(weights(readCheckpointTensors(dir, spec, shapes))).toEqual(weights(one));
    save(dir, one, 2);
    expect(listing(dir)).toEqual(['checkpoint-2-<r>.json', 'checkpoint-2-<r>.safetensors', MANIFEST_FILE]);
  });
});

describe('--resume refuses what is not one checkpoint', () => {
  it('a tensor file changed after the commit: its size or its hash, expected and found', async () => {
    const dir = tempDir();
    save(dir, await stateOf(1), 1);
    const { tensors } = checkpointFiles(dir)!;
    const bytes = fs.readFileSync(tensors);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 0x40, bytes.length - 1); // one bit of the last weight
    fs.writeFileSync(tensors, bytes);
    const hashMismatch = /checkpoint-1-[0-9a-f]{8}\.safetensors: SHA-256 [0-9a-f]{16}…: checkpoint\.manifest\.json names it with SHA-256 [0-9a-f]{16}… \(the file changed after the checkpoint was committed\)/;
    expect(() => readCheckpointState(dir)).toThrow(hashMismatch);
    expect(() => readCheckpointTensors(dir, spec, shapes)).toThrow(hashMismatch);
    fs.writeFileSync(tensors, bytes.subarray(0, 1000));
    expect(() => readCheckpointState(dir)).toThrow(new RegExp(`1000 bytes: checkpoint\\.manifest\\.json names it with ${bytes.length} bytes`));
    fs.rmSync(tensors);
    expect(() => readCheckpointState(dir)).toThrow(new RegExp(`\\.safetensors: missing: checkpoint\\.manifest\\.json names it with ${bytes.length} bytes`));
  });

  it("a manifest naming another checkpoint's state: which pair it names and which the state was written with", async () => {
    const dir = tempDir();
    save(dir, await stateOf(1), 1);
    const old = checkpointFiles(dir)!.state;
    const oldState = fs.readFileSync(old);
    save(dir, await stateOf(2), 2);
    fs.writeFileSync(old, oldState); // step 1's state, back beside step 2's tensors
    const manifest = JSON.parse(fs.readFileSync(join(dir, MANIFEST_FILE), 'utf8'));
    manifest.state = { file: basename(old), bytes: oldState.length, sha256: createHash('sha256').update(oldState).digest('hex') };
    fs.writeFileSync(join(dir, MANIFEST_FILE), JSON.stringify(manifest));
    expect(() => readCheckpointState(dir)).toThrow(new RegExp(
      `checkpoint\\.manifest\\.json: pairs ${basename(old)} with ${manifest.tensors.file} \\(\\d+ bytes, SHA-256 [0-9a-f]{16}…\\) at step 2, ` +
      `but ${basename(old)} was written at step 1 with checkpoint-1-[0-9a-f]{8}\\.safetensors \\(\\d+ bytes, SHA-256 [0-9a-f]{16}…\\): not one checkpoint`));
    manifest.state.file = '../../etc/passwd';
    fs.writeFileSync(join(dir, MANIFEST_FILE), JSON.stringify(manifest));
    expect(() => readCheckpointState(dir)).toThrow(/checkpoint\.manifest\.json: state is \{"file":"\.\.\/\.\.\/etc\/passwd",.*\}: expected \{file: "checkpoint-<step>-<hex>\.<ext>", bytes, sha256\}/);
  });

  it("tensors that are not the model's: a shape or a parameter it does not have", async () => {
    const dir = tempDir();
    save(dir, await stateOf(1), 1);
    const wider = alexnet({ arch: 'd2l', width: 1 / 8, resolution: 67 });
    expect(() => readCheckpointTensors(dir, wider, parameterShapes(wider))).toThrow(/\.safetensors: conv1\.weight is \[6,1,11,11\], the model needs \[12,1,11,11\]/);
    const fewer = new Map([...shapes].filter(([name]) => !name.startsWith('fc8')));
    expect(() => readCheckpointTensors(dir, spec, fewer)).toThrow(/\.safetensors: tensor fc8\.weight \(and 1 more\) is not a parameter of this model \(d2l\) or its momentum/);
  });
});

describe('a full disk under `splitnet train`', () => {
  const config: TrainConfig = {
    ...CPU_DEFAULTS, backend: 'wasm', data: 'synthetic', width: 1 / 8, resolution: 67, batch: 8, epochs: 1,
    trainSamples: 32, testSamples: 8, checkpointEvery: 1,
  };

  it('under a file-size limit the run fails with the error, and the previous checkpoint resumes', async () => {
    const dir = tempDir();
    await train({ config, outDir: dir, maxSteps: 2, log: () => {}, progress: false });
    const size = checkpointFiles(dir)!.manifest!.tensors.bytes;
    const blocks = Math.floor(size / 2 / 512); // dash's ulimit -f counts 512-byte blocks: half a tensor file fits
    const child = spawn('sh', ['-c', `ulimit -f ${blocks}; exec "$0" "$@"`, process.execPath, '--import', 'tsx', 'src/cli.ts', 'train', '--resume', dir, '--no-progress'],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    spawned.add(child.pid!);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(stderr).toMatch(new RegExp(`^splitnet: error: checkpoint-3-[0-9a-f]{8}\\.safetensors: wrote ${blocks * 512} of ${size} bytes: EFBIG \\(file too large\\); the previous checkpoint is untouched\\n$`));
    expect(code).toBe(1);
    expect(readCheckpointState(dir).position).toEqual(at(2));
    expect(listing(dir)).toEqual(['checkpoint-2-<r>.json', 'checkpoint-2-<r>.safetensors', MANIFEST_FILE, 'metrics.jsonl']);
    const resumed = await train({ config, outDir: dir, resume: true, log: () => {}, progress: false });
    expect([resumed.finished, resumed.position.globalStep]).toEqual([true, 4]);
  });
});
