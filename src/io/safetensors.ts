/**
 * safetensors files on disk (https://github.com/huggingface/safetensors, format section; the format
 * itself is in safetensors-format.ts).
 *
 * Reading touches only the header on open; tensors are read on demand with positional reads, so files
 * larger than a Node Buffer work. Tensor data lands in a SharedArrayBuffer (the CPU backend shares
 * weights with its worker threads). Pickle checkpoints are refused and never executed.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as nodePath from 'node:path';
import { fail } from '../errors.ts';
import {
  type Checkpoint,
  CheckpointImpl,
  DTYPE_BYTES,
  describe,
  INDEX_FILE,
  isNonNegInt,
  isPlainObject,
  isSafetensorsDType,
  type ParsedHeader,
  parseHeader,
  type ReadAt,
  SAFETENSORS_DTYPES,
  type SafetensorsDType,
  type SafetensorsFile,
  SINGLE_FILE,
  type TensorData,
  type TensorInfo,
  typedArrayFor,
} from './safetensors-format.ts';

export { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../tensor/dtype.ts';
export {
  type Checkpoint,
  checkpointFromBytes,
  dtypeBytes,
  isSafetensorsDType,
  SAFETENSORS_DTYPES,
  type SafetensorsArray,
  type SafetensorsDType,
  type SafetensorsFile,
  safetensorsFromBytes,
  type TensorData,
  type TensorInfo,
  typedArrayFor,
} from './safetensors-format.ts';

/** Largest single read/write; Node refuses more than 2 GiB - 1 per call. */
const IO_CHUNK_BYTES = 1 << 30;

/**
 * Reads exactly target.byteLength bytes at `position` into `target`, in chunks of at most `chunk`
 * bytes (readSync may also return short counts). Fails if the file ends first.
 * Exported for tests (chunking is exercised with a small chunk).
 */
export function readFully(
  fd: number,
  target: Uint8Array,
  position: number,
  what: string,
  chunk = IO_CHUNK_BYTES,
): void {
  let done = 0;
  while (done < target.byteLength) {
    const want = Math.min(chunk, target.byteLength - done);
    const got = fs.readSync(fd, target, done, want, position + done);
    if (got === 0) {
      fail(`${what}: file ended after ${done} of ${target.byteLength} bytes (was it truncated or modified?)`);
    }
    done += got;
  }
}

/** Positional reads of an open file for the format parsers (each read fills its length or fails). */
export function readAtFd(fd: number, path: string): ReadAt {
  return (position, length) => {
    const bytes = new Uint8Array(length);
    readFully(fd, bytes, position, path);
    return bytes;
  };
}

/** Writes all of `src` at the file's current position, in chunks of at most `chunk` bytes. */
function writeFully(fd: number, src: Uint8Array, chunk = IO_CHUNK_BYTES): void {
  let done = 0;
  while (done < src.byteLength) {
    const n = Math.min(chunk, src.byteLength - done);
    done += fs.writeSync(fd, src, done, n);
  }
}

class SafetensorsReader implements SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly tensors: Map<string, TensorInfo>;
  private fd: number | undefined;

  constructor(path: string, fd: number, header: ParsedHeader) {
    this.path = path;
    this.fd = fd;
    this.metadata = header.metadata;
    this.tensors = header.tensors;
  }

  read(name: string): TensorData {
    const info = this.tensors.get(name);
    if (info === undefined) fail(`${this.path}: no tensor named "${name}"`);
    if (this.fd === undefined) throw new Error(`${this.path}: read("${name}") after close()`);
    if (os.endianness() !== 'LE') fail('safetensors data is little-endian; this machine is big-endian');
    let buffer: SharedArrayBuffer;
    try {
      buffer = new SharedArrayBuffer(info.byteLength);
    } catch {
      fail(`${this.path}: tensor "${name}" (${info.byteLength} bytes) is too large to allocate`);
    }
    readFully(this.fd, new Uint8Array(buffer), info.byteOffset, `${this.path}: tensor "${name}"`);
    return {
      dtype: info.dtype,
      shape: [...info.shape],
      data: typedArrayFor(info.dtype, buffer, 0, info.byteLength),
    };
  }

  close(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
  }
}

/** Opens a .safetensors file and validates its header; tensor data is read on demand. */
export function openSafetensors(path: string): SafetensorsFile {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    fail(`${path}: cannot open (${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)})`);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) fail(`${path}: not a regular file`);
    return new SafetensorsReader(path, fd, parseHeader(path, readAtFd(fd, path), stat.size));
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------
// Checkpoints (a model directory: one file or shards + index)

function openAll(paths: string[]): SafetensorsFile[] {
  const opened: SafetensorsFile[] = [];
  try {
    for (const p of paths) opened.push(openSafetensors(p));
  } catch (e) {
    for (const f of opened) f.close();
    throw e;
  }
  return opened;
}

function openIndexed(dir: string, indexPath: string): Checkpoint {
  let index: unknown;
  try {
    index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
  } catch (e) {
    fail(`${indexPath}: cannot read index (${(e as Error).message.split('\n')[0]})`);
  }
  const weightMap = isPlainObject(index) ? index.weight_map : undefined;
  if (!isPlainObject(weightMap))
    fail(`${indexPath}: "weight_map" must be an object {tensor name: shard file}`);
  const shardNames: string[] = [];
  for (const [name, file] of Object.entries(weightMap)) {
    if (
      typeof file !== 'string' ||
      file === '' ||
      file !== nodePath.basename(file) ||
      file === '..' ||
      file === '.'
    ) {
      fail(
        `${indexPath}: weight_map entry "${name}" must name a file in the same directory, found ${describe(file)}`,
      );
    }
    if (!shardNames.includes(file)) shardNames.push(file);
  }
  if (shardNames.length === 0) fail(`${indexPath}: weight_map is empty`);
  for (const file of shardNames) {
    const p = nodePath.join(dir, file);
    if (!fs.existsSync(p))
      fail(`${indexPath}: shard ${file} is listed in weight_map but ${p} does not exist`);
  }
  const shards = openAll(shardNames.map((f) => nodePath.join(dir, f)));
  const byName = new Map(shardNames.map((f, i) => [f, shards[i]]));
  const where = new Map<string, SafetensorsFile>();
  for (const [name, file] of Object.entries(weightMap)) {
    const shard = byName.get(file as string)!;
    if (!shard.tensors.has(name)) {
      for (const s of shards) s.close();
      fail(`${indexPath}: tensor "${name}" is mapped to ${file} but ${shard.path} does not contain it`);
    }
    where.set(name, shard);
  }
  return new CheckpointImpl(dir, shards, where);
}

const PICKLE_RE = /\.(bin|pt|pth|ckpt|pkl)$/i;

/**
 * Opens the weights of a model directory: model.safetensors.index.json + shards if present, else
 * model.safetensors. A path to a single .safetensors file is accepted too. Pickle checkpoints are
 * refused (never unpickled).
 */
export function openCheckpoint(dir: string): Checkpoint {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch {
    fail(`${dir}: no such directory`);
  }
  if (stat.isFile()) {
    if (dir.endsWith('.safetensors')) {
      const f = openSafetensors(dir);
      return new CheckpointImpl(
        nodePath.dirname(dir),
        [f],
        new Map([...f.tensors.keys()].map((n) => [n, f])),
      );
    }
    if (PICKLE_RE.test(dir)) {
      fail(`${dir}: pickle checkpoint; llmq reads safetensors only (pickle is never executed)`);
    }
    fail(`${dir}: expected a model directory or a .safetensors file`);
  }
  const indexPath = nodePath.join(dir, INDEX_FILE);
  if (fs.existsSync(indexPath)) return openIndexed(dir, indexPath);
  const single = nodePath.join(dir, SINGLE_FILE);
  if (fs.existsSync(single)) {
    const f = openSafetensors(single);
    return new CheckpointImpl(dir, [f], new Map([...f.tensors.keys()].map((n) => [n, f])));
  }
  const entries = fs.readdirSync(dir).sort();
  const pickles = entries.filter((e) => PICKLE_RE.test(e) || e === 'pytorch_model.bin.index.json');
  const others = entries.filter((e) => e.endsWith('.safetensors'));
  if (others.length > 0) {
    fail(
      `${dir}: no ${SINGLE_FILE} or ${INDEX_FILE} (found other safetensors files: ${others.slice(0, 4).join(', ')}${others.length > 4 ? ', ...' : ''})`,
    );
  }
  if (pickles.length > 0) {
    fail(
      `${dir}: only pickle checkpoints (${pickles.slice(0, 4).join(', ')}${pickles.length > 4 ? ', ...' : ''}) found; llmq reads safetensors only (pickle is never executed)`,
    );
  }
  fail(`${dir}: no model weights found (expected ${SINGLE_FILE} or ${INDEX_FILE})`);
}

// ---------------------------------------------------------------------------------------------------
// Writing

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDType;
  shape: readonly number[];
  data: ArrayBufferView;
}

function checkTensorToWrite(path: string, t: TensorToWrite, seen: Set<string>): number {
  const where = `${path}: tensor "${t.name}"`;
  if (typeof t.name !== 'string' || t.name === '' || t.name === '__metadata__') {
    fail(`${path}: invalid tensor name ${describe(t.name)}`);
  }
  if (seen.has(t.name)) fail(`${where} is given twice`);
  seen.add(t.name);
  if (!isSafetensorsDType(t.dtype)) {
    fail(`${where} has unsupported dtype ${describe(t.dtype)} (supported: ${SAFETENSORS_DTYPES.join(', ')})`);
  }
  if (!Array.isArray(t.shape) || !t.shape.every(isNonNegInt)) {
    fail(`${where} shape must be an array of non-negative integers, found ${describe(t.shape)}`);
  }
  let expected = DTYPE_BYTES[t.dtype];
  for (const d of t.shape) expected *= d;
  if (t.data.byteLength !== expected) {
    fail(
      `${where}: dtype ${t.dtype} x shape [${t.shape.join(', ')}] needs ${expected} bytes, data has ${t.data.byteLength}`,
    );
  }
  return expected;
}

/**
 * Writes a safetensors file atomically (to `path.tmp-<pid>`, fsync, rename). Tensors are stored in the
 * given order, contiguously, streamed one by one. The header is padded with spaces to a multiple of 8.
 * `metadata` defaults to {format: 'pt'}, which transformers requires to load a file; pass {} for none.
 * An existing file at `path` is replaced: refusing to overwrite outputs is the caller's policy.
 */
export function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> = { format: 'pt' },
): void {
  if (os.endianness() !== 'LE') fail('safetensors data is little-endian; this machine is big-endian');
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') fail(`${path}: metadata "${k}" must be a string, found ${describe(v)}`);
    }
    header.__metadata__ = metadata;
  }
  const seen = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    const size = checkTensorToWrite(path, t, seen);
    header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + size] };
    offset += size;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const head = Buffer.alloc(8 + padded, 0x20);
  head.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(head, 8);

  const tmp = `${path}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    writeFully(fd, head);
    for (const t of tensors)
      writeFully(fd, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  try {
    fs.renameSync(tmp, path);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** value as 2-space JSON + newline, written to a temporary file and renamed over `path`. */
export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`);
  fs.renameSync(tmp, path);
}

/**
 * Writes tensors as model-0000i-of-0000n.safetensors shards of at most `maxShardBytes` of tensor data
 * (a tensor larger than that gets a shard of its own), then model.safetensors.index.json
 * ({metadata: {total_size}, weight_map}) last, as transformers' save_pretrained does. Always writes an
 * index, even for one shard. Creates `dir` if needed. Returns the shard file names.
 */
export function writeShardedCheckpoint(
  dir: string,
  tensors: readonly TensorToWrite[],
  maxShardBytes: number,
  metadata: Record<string, string> = { format: 'pt' },
): string[] {
  if (!(maxShardBytes > 0)) fail(`${dir}: max shard size must be positive, got ${maxShardBytes}`);
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) fail(`${dir}: tensor "${t.name}" is given twice`);
    names.add(t.name);
  }
  const groups: TensorToWrite[][] = [];
  let current: TensorToWrite[] = [];
  let size = 0;
  for (const t of tensors) {
    if (current.length > 0 && size + t.data.byteLength > maxShardBytes) {
      groups.push(current);
      current = [];
      size = 0;
    }
    current.push(t);
    size += t.data.byteLength;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);

  return writeShards(dir, groups.length, (i) => groups[i], metadata);
}

/**
 * Writes `count` shards model-0000i-of-0000n.safetensors, the tensors of shard i from shard(i)
 * (called once per shard, so a caller can create each shard's data just before it is written),
 * then model.safetensors.index.json. Creates `dir` if needed. Returns the shard file names.
 */
export function writeShards(
  dir: string,
  count: number,
  shard: (i: number) => readonly TensorToWrite[],
  metadata: Record<string, string> = { format: 'pt' },
): string[] {
  fs.mkdirSync(dir, { recursive: true });
  const pad = (i: number) => String(i).padStart(5, '0');
  const files = Array.from({ length: count }, (_, i) => `model-${pad(i + 1)}-of-${pad(count)}.safetensors`);
  const weightMap: Record<string, string> = {};
  let total = 0;
  files.forEach((file, i) => {
    const tensors = shard(i);
    writeSafetensors(nodePath.join(dir, file), tensors, metadata);
    for (const t of tensors) {
      weightMap[t.name] = file;
      total += t.data.byteLength;
    }
  });
  writeJsonAtomic(nodePath.join(dir, INDEX_FILE), { metadata: { total_size: total }, weight_map: weightMap });
  return files;
}
