/**
 * GGUF files on disk: the streaming writer and the reader (Node only); the format, types and the
 * byte-level reader are in gguf-format.ts.
 */
import fs from 'node:fs';
import nodePath from 'node:path';
import { fail } from '../errors.ts';
import {
  alignUp,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VERSION,
  type GgufFile,
  type GgufPlain,
  type GgufTensorInfo,
  type GgufTensorSpec,
  type GgufValue,
  type GgufValueType,
  ggmlTensorBytes,
  ggmlTypeName,
  gguf,
  MAX_DIMS,
  MAX_TENSOR_NAME_BYTES,
  type NumericType,
  parseGguf,
  VALUE_TYPES,
} from './gguf-format.ts';
import { readAtFd } from './safetensors.ts';

export * from './gguf-format.ts';

// ---------------------------------------------------------------------------------------------
// writer

type NumericWriter = [number, (view: DataView, at: number, v: number) => void];
const NUMERIC_WRITERS: Record<NumericType, NumericWriter> = {
  uint8: [1, (d, a, v) => d.setUint8(a, v)],
  int8: [1, (d, a, v) => d.setInt8(a, v)],
  uint16: [2, (d, a, v) => d.setUint16(a, v, true)],
  int16: [2, (d, a, v) => d.setInt16(a, v, true)],
  uint32: [4, (d, a, v) => d.setUint32(a, v, true)],
  int32: [4, (d, a, v) => d.setInt32(a, v, true)],
  float32: [4, (d, a, v) => d.setFloat32(a, v, true)],
  uint64: [8, (d, a, v) => d.setBigUint64(a, BigInt(v), true)],
  int64: [8, (d, a, v) => d.setBigInt64(a, BigInt(v), true)],
  float64: [8, (d, a, v) => d.setFloat64(a, v, true)],
};

/** A growable little-endian byte buffer. */
class ByteBuilder {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): number {
    const at = this.length;
    if (at + n > this.buf.length) {
      const bigger = new Uint8Array(Math.max(this.buf.length * 2, at + n));
      bigger.set(this.buf.subarray(0, at));
      this.buf = bigger;
      this.view = new DataView(bigger.buffer);
    }
    this.length += n;
    return at;
  }

  private numeric(type: NumericType, v: number): void {
    const [size, set] = NUMERIC_WRITERS[type];
    const at = this.reserve(size); // may replace this.view
    set(this.view, at, v);
  }

  u8(v: number): void {
    this.numeric('uint8', v);
  }
  u32(v: number): void {
    this.numeric('uint32', v);
  }
  u64(v: number): void {
    this.numeric('uint64', v);
  }
  bytes(b: Uint8Array): void {
    const at = this.reserve(b.length);
    this.buf.set(b, at);
  }
  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.bytes(b);
  }

  scalar(type: GgufValueType, v: GgufPlain, where: string): void {
    if (type === 'array') throw new TypeError(`${where}: nested arrays are not written`);
    if (type === 'bool' || type === 'string') {
      if (typeof v !== (type === 'bool' ? 'boolean' : 'string'))
        throw new TypeError(`${where}: expected a ${type}`);
      if (type === 'bool') this.u8(v ? 1 : 0);
      else this.string(v as string);
      return;
    }
    if (typeof v !== 'number')
      throw new TypeError(`${where}: expected a number for ${type}, got ${typeof v}`);
    this.numeric(type, v);
  }

  value(v: GgufValue, where: string): void {
    this.u32(VALUE_TYPES.indexOf(v.type));
    if (v.type !== 'array') {
      this.scalar(v.type, v.value, where);
      return;
    }
    this.u32(VALUE_TYPES.indexOf(v.itemType));
    this.u64(v.value.length);
    for (const item of v.value) this.scalar(v.itemType, item, where);
  }

  take(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

export interface GgufWriteOptions {
  /** replace an existing file */
  force?: boolean;
  /** data alignment (a multiple of 8); written as general.alignment */
  alignment?: number;
}

/**
 * Streams one GGUF file: the header, metadata and tensor infos are written at construction, then
 * each tensor's bytes with write() in the declared order, then finish() renames the temporary file
 * over `path`. An existing `path` is refused unless `force`. abort() removes the temporary file.
 */
export class GgufWriter {
  readonly tmp: string;
  readonly alignment: number;
  private readonly fd: number;
  private readonly infos: GgufTensorInfo[];
  private next = 0;
  private position = 0;
  private closed = false;

  constructor(
    readonly path: string,
    metadata: Map<string, GgufValue>,
    tensors: readonly GgufTensorSpec[],
    private readonly opts: GgufWriteOptions = {},
  ) {
    if (fs.existsSync(path) && !opts.force) fail(`${path} already exists (pass --force to replace it)`);
    this.alignment = opts.alignment ?? GGUF_DEFAULT_ALIGNMENT;
    if (this.alignment <= 0 || this.alignment % 8 !== 0)
      fail(`${path}: alignment ${this.alignment} must be a positive multiple of 8`);
    this.infos = layoutTensors(path, tensors, this.alignment);
    const header = encodeHeader(path, withAlignment(metadata, this.alignment), this.infos, this.alignment);
    fs.mkdirSync(nodePath.dirname(nodePath.resolve(path)), { recursive: true });
    this.tmp = `${path}.tmp-${process.pid}`;
    this.fd = fs.openSync(this.tmp, 'w');
    try {
      this.append(header);
    } catch (e) {
      this.abort();
      throw e;
    }
  }

  /** The next tensor's data; `name` must be the next declared one and the size must match. */
  write(name: string, data: Uint8Array): void {
    const info = this.infos[this.next];
    if (!info) throw new Error(`${this.path}: tensor ${name} written after all declared tensors`);
    if (info.name !== name) throw new Error(`${this.path}: expected tensor ${info.name} next, got ${name}`);
    if (data.length !== info.nbytes) {
      throw new Error(
        `${this.path}: tensor ${name} has ${data.length} bytes, its type and dims need ${info.nbytes}`,
      );
    }
    this.append(data);
    this.pad();
    this.next++;
  }

  /** Flushes and moves the file into place. */
  finish(): void {
    if (this.next !== this.infos.length) {
      throw new Error(`${this.path}: ${this.infos.length - this.next} declared tensors were not written`);
    }
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.closed = true;
    if (fs.existsSync(this.path) && !this.opts.force) {
      fs.rmSync(this.tmp, { force: true });
      fail(`${this.path} already exists (pass --force to replace it)`);
    }
    fs.renameSync(this.tmp, this.path);
  }

  abort(): void {
    if (!this.closed) fs.closeSync(this.fd);
    this.closed = true;
    fs.rmSync(this.tmp, { force: true });
  }

  private append(bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.length) done += fs.writeSync(this.fd, bytes, done, bytes.length - done);
    this.position += bytes.length;
  }

  private pad(): void {
    const n = alignUp(this.position, this.alignment) - this.position;
    if (n > 0) this.append(new Uint8Array(n));
  }
}

function withAlignment(metadata: Map<string, GgufValue>, alignment: number): Map<string, GgufValue> {
  if (metadata.has('general.alignment')) return metadata;
  return new Map([...metadata, ['general.alignment', gguf.u32(alignment)]]);
}

function layoutTensors(
  path: string,
  tensors: readonly GgufTensorSpec[],
  alignment: number,
): GgufTensorInfo[] {
  const seen = new Set<string>();
  let offset = 0;
  return tensors.map((t) => {
    if (seen.has(t.name)) fail(`${path}: tensor ${t.name} is declared twice`);
    seen.add(t.name);
    if (Buffer.byteLength(t.name) > MAX_TENSOR_NAME_BYTES)
      fail(`${path}: tensor name ${t.name} is longer than ${MAX_TENSOR_NAME_BYTES} bytes`);
    if (
      t.dims.length < 1 ||
      t.dims.length > MAX_DIMS ||
      t.dims.some((d) => !Number.isSafeInteger(d) || d <= 0)
    )
      fail(
        `${path}: tensor ${t.name} has dims [${t.dims.join(', ')}] (1 to ${MAX_DIMS} positive sizes expected)`,
      );
    const nbytes = ggmlTensorBytes(t.type, t.dims);
    if (nbytes === undefined)
      fail(`${path}: tensor ${t.name}: ${ggmlTypeName(t.type)} cannot hold dims [${t.dims.join(', ')}]`);
    const info = { ...t, dims: [...t.dims], offset, nbytes };
    offset += alignUp(nbytes, alignment);
    return info;
  });
}

function encodeHeader(
  path: string,
  metadata: Map<string, GgufValue>,
  infos: readonly GgufTensorInfo[],
  alignment: number,
): Uint8Array {
  const b = new ByteBuilder();
  b.u32(GGUF_MAGIC);
  b.u32(GGUF_VERSION);
  b.u64(infos.length);
  b.u64(metadata.size);
  for (const [key, value] of metadata) {
    b.string(key);
    b.value(value, `${path}: metadata ${key}`);
  }
  for (const t of infos) {
    b.string(t.name);
    b.u32(t.dims.length);
    for (const d of t.dims) b.u64(d);
    b.u32(t.type);
    b.u64(t.offset);
  }
  const padding = alignUp(b.length, alignment) - b.length;
  b.bytes(new Uint8Array(padding));
  return b.take();
}

/** Writes a whole GGUF file from in-memory tensors (atomically). */
export function writeGguf(
  path: string,
  metadata: Map<string, GgufValue>,
  tensors: readonly (GgufTensorSpec & { data: Uint8Array })[],
  opts: GgufWriteOptions = {},
): void {
  const w = new GgufWriter(path, metadata, tensors, opts);
  try {
    for (const t of tensors) w.write(t.name, t.data);
    w.finish();
  } catch (e) {
    w.abort();
    throw e;
  }
}

/** Parses the header, metadata and tensor infos of a GGUF file on disk (tensor data is read on demand). */
export function readGguf(path: string): GgufFile {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return fail(
      `${path}: cannot open (${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)})`,
    );
  }
  let file: GgufFile;
  try {
    file = parseGguf(path, readAtFd(fd, path), fs.fstatSync(fd).size);
  } finally {
    fs.closeSync(fd);
  }
  // tensor data is read when asked for; each read opens the file anew, so no descriptor stays open
  return {
    ...file,
    readAt: (position, length) => {
      const tensorFd = fs.openSync(path, 'r');
      try {
        return readAtFd(tensorFd, path)(position, length);
      } finally {
        fs.closeSync(tensorFd);
      }
    },
  };
}
