/**
 * The safetensors format without file I/O: element types, header validation, and checkpoints over
 * files held in memory. Runs anywhere (Node and browsers); safetensors.ts adds the file system.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`, then the
 * data section; offsets are relative to the start of the data section, and the tensors must cover it
 * exactly (no gaps, no overlaps, nothing after the last tensor), as the reference implementation
 * requires.
 */
import { fail } from '../errors.ts';

/**
 * Supported element types. F16/BF16 are carried as raw Uint16Array bits; BOOL and the 8-bit float
 * formats (F8_E4M3, F8_E5M2, F8_E8M0) as raw Uint8Array bytes.
 */
export type SafetensorsDType =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'F8_E8M0';

export type SafetensorsArray =
  | Float64Array
  | Float32Array
  | Uint16Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

export const DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  F8_E8M0: 1,
};

export const SAFETENSORS_DTYPES: readonly SafetensorsDType[] = Object.keys(DTYPE_BYTES) as SafetensorsDType[];

export function isSafetensorsDType(s: unknown): s is SafetensorsDType {
  return typeof s === 'string' && Object.hasOwn(DTYPE_BYTES, s);
}

/** Bytes per element of a dtype. */
export function dtypeBytes(dtype: SafetensorsDType): number {
  return DTYPE_BYTES[dtype];
}

/** Wraps raw bytes (offset 0, aligned) in the typed array that carries `dtype`. */
export function typedArrayFor(
  dtype: SafetensorsDType,
  buffer: ArrayBufferLike,
  byteOffset: number,
  byteLength: number,
): SafetensorsArray {
  const n = byteLength / DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'F64':
      return new Float64Array(buffer, byteOffset, n);
    case 'F32':
      return new Float32Array(buffer, byteOffset, n);
    case 'F16':
    case 'BF16':
    case 'U16':
      return new Uint16Array(buffer, byteOffset, n);
    case 'I64':
      return new BigInt64Array(buffer, byteOffset, n);
    case 'U64':
      return new BigUint64Array(buffer, byteOffset, n);
    case 'I32':
      return new Int32Array(buffer, byteOffset, n);
    case 'U32':
      return new Uint32Array(buffer, byteOffset, n);
    case 'I16':
      return new Int16Array(buffer, byteOffset, n);
    case 'I8':
      return new Int8Array(buffer, byteOffset, n);
    default:
      return new Uint8Array(buffer, byteOffset, n);
  }
}

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** absolute position of the first byte in the file */
  byteOffset: number;
  byteLength: number;
  /** the file that holds it */
  file: string;
}

export interface TensorData {
  dtype: SafetensorsDType;
  shape: number[];
  /** backed by a SharedArrayBuffer of exactly byteLength bytes */
  data: SafetensorsArray;
}

export interface SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly tensors: Map<string, TensorInfo>;
  read(name: string): TensorData;
  close(): void;
}

/** The reference implementation refuses headers above 100 MB; so do we (a corrupt length is likelier). */
const MAX_HEADER_BYTES = 100_000_000;

export function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export interface ParsedHeader {
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
}

/**
 * Reads `length` bytes at `position` of a file: a reader on disk fails naming the file when it ends
 * first, one over bytes in memory returns fewer (the parsers check).
 */
export type ReadAt = (position: number, length: number) => Uint8Array;

/** Validates a safetensors header: every tensor in bounds, the tensors tiling the data section exactly. */
export function parseHeader(path: string, readAt: ReadAt, fileSize: number): ParsedHeader {
  if (fileSize < 8) {
    fail(
      `${path}: file is ${fileSize} bytes, too short for a safetensors file (the header length alone is 8)`,
    );
  }
  const lenBytes = readAt(0, 8);
  const headerLen = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLen > BigInt(fileSize - 8)) {
    fail(
      `${path}: header length ${headerLen} runs past the end of the file (${fileSize - 8} bytes after the length field); truncated or not a safetensors file`,
    );
  }
  const n = Number(headerLen);
  if (n > MAX_HEADER_BYTES) fail(`${path}: header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const headerBuf = readAt(8, n);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBuf));
  } catch (e) {
    fail(`${path}: header is not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  if (!isPlainObject(header)) {
    fail(
      `${path}: header must be a JSON object, found ${Array.isArray(header) ? 'an array' : describe(header)}`,
    );
  }

  const dataStart = 8 + n;
  const dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];

  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry))
        fail(`${path}: "__metadata__" must be an object of strings, found ${describe(entry)}`);
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string')
          fail(`${path}: "__metadata__" entry "${k}" must be a string, found ${describe(v)}`);
        metadata[k] = v;
      }
      continue;
    }
    const where = `${path}: tensor "${name}"`;
    if (!isPlainObject(entry))
      fail(`${where} must be an object {dtype, shape, data_offsets}, found ${describe(entry)}`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (!isSafetensorsDType(dtype)) {
      fail(`${where} has unsupported dtype ${describe(dtype)} (supported: ${SAFETENSORS_DTYPES.join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      fail(`${where} shape must be an array of non-negative integers, found ${describe(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt)) {
      fail(`${where} data_offsets must be [begin, end] non-negative integers, found ${describe(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) fail(`${where} data_offsets [${begin}, ${end}] end before they begin`);
    let expected = DTYPE_BYTES[dtype];
    for (const d of shape as number[]) expected *= d;
    if (!Number.isSafeInteger(expected)) fail(`${where} shape ${describe(shape)} is too large`);
    if (end - begin !== expected) {
      fail(
        `${where} is ${end - begin} bytes (data_offsets [${begin}, ${end}]) but dtype ${dtype} x shape [${(shape as number[]).join(', ')}] needs ${expected}`,
      );
    }
    if (end > dataSize) {
      fail(`${where} data_offsets [${begin}, ${end}] exceed the data section (${dataSize} bytes)`);
    }
    tensors.set(name, {
      name,
      dtype,
      shape: [...(shape as number[])],
      byteOffset: dataStart + begin,
      byteLength: end - begin,
      file: path,
    });
    spans.push({ name, begin, end });
  }

  // The tensors must tile the data section exactly: sorted by offset, each starts where the previous ended.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev: (typeof spans)[number] | undefined;
  for (const s of spans) {
    if (s.begin < pos && prev !== undefined) {
      fail(
        `${path}: tensor "${s.name}" data_offsets [${s.begin}, ${s.end}] overlap tensor "${prev.name}" [${prev.begin}, ${prev.end}]`,
      );
    }
    if (s.begin > pos) {
      const after =
        prev === undefined ? 'the start of the data section' : `tensor "${prev.name}" (ends at ${pos})`;
      fail(
        `${path}: ${s.begin - pos} unused bytes between ${after} and tensor "${s.name}" (starts at ${s.begin})`,
      );
    }
    pos = s.end;
    prev = s;
  }
  if (pos !== dataSize) {
    fail(
      `${path}: data section is ${dataSize} bytes but the tensors cover ${pos}; ${dataSize - pos} trailing bytes (corrupt or mis-written file)`,
    );
  }
  return { metadata, tensors };
}

export interface Checkpoint {
  readonly dir: string;
  /** the safetensors files opened, full paths */
  readonly files: string[];
  /** sum of the byte lengths of all tensors */
  readonly totalBytes: number;
  /** tensor names: weight_map order for sharded checkpoints, header order otherwise */
  names(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  read(name: string): TensorData;
  close(): void;
}

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/** Tensors spread over one or more opened files (`where`: which file holds each name). */
export class CheckpointImpl implements Checkpoint {
  readonly files: string[];
  readonly totalBytes: number;
  constructor(
    readonly dir: string,
    private readonly shards: SafetensorsFile[],
    private readonly where: Map<string, SafetensorsFile>,
  ) {
    this.files = shards.map((s) => s.path);
    let total = 0;
    for (const name of where.keys()) total += this.info(name).byteLength;
    this.totalBytes = total;
  }
  names(): string[] {
    return [...this.where.keys()];
  }
  has(name: string): boolean {
    return this.where.has(name);
  }
  private shardOf(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (f === undefined) fail(`${this.dir}: checkpoint has no tensor named "${name}"`);
    return f;
  }
  info(name: string): TensorInfo {
    return this.shardOf(name).tensors.get(name)!;
  }
  read(name: string): TensorData {
    return this.shardOf(name).read(name);
  }
  close(): void {
    for (const s of this.shards) s.close();
  }
}

/** A safetensors file held in memory (a fetched file in a browser, say); reads copy the tensor out. */
class BytesReader implements SafetensorsFile {
  readonly metadata: Record<string, string>;
  readonly tensors: Map<string, TensorInfo>;
  constructor(
    readonly path: string,
    private readonly bytes: Uint8Array,
  ) {
    const readAt: ReadAt = (position, length) => bytes.subarray(position, position + length);
    ({ metadata: this.metadata, tensors: this.tensors } = parseHeader(path, readAt, bytes.byteLength));
  }
  read(name: string): TensorData {
    const info = this.tensors.get(name);
    if (info === undefined) fail(`${this.path}: no tensor named "${name}"`);
    const copy = this.bytes.slice(info.byteOffset, info.byteOffset + info.byteLength);
    return {
      dtype: info.dtype,
      shape: [...info.shape],
      data: typedArrayFor(info.dtype, copy.buffer, 0, info.byteLength),
    };
  }
  close(): void {}
}

/** Validates a safetensors file given as bytes; `path` names it in errors. */
export function safetensorsFromBytes(path: string, bytes: Uint8Array): SafetensorsFile {
  return new BytesReader(path, bytes);
}

/**
 * A checkpoint from safetensors files held in memory (one file, or the shards of a sharded one: each
 * tensor name must occur in exactly one of them). `label` names it in errors.
 */
export function checkpointFromBytes(label: string, files: Record<string, Uint8Array>): Checkpoint {
  const opened = Object.entries(files).map(([name, bytes]) =>
    safetensorsFromBytes(`${label}/${name}`, bytes),
  );
  if (opened.length === 0) fail(`${label}: no safetensors files given`);
  const where = new Map<string, SafetensorsFile>();
  for (const f of opened)
    for (const name of f.tensors.keys()) {
      const other = where.get(name);
      if (other) fail(`${label}: tensor "${name}" is in both ${other.path} and ${f.path}`);
      where.set(name, f);
    }
  return new CheckpointImpl(label, opened, where);
}
