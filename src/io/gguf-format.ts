/**
 * GGUF v3 container (llama.cpp, node-llama-cpp): types, constants and the reader, over any byte
 * source (gguf.ts adds the file writer and reading from disk).
 *
 * Sources read (public): docs/gguf.md of ggml-org/ggml (file layout, value types, ggml type ids,
 * alignment rule), gguf-py/gguf/gguf_writer.py and constants.py of ggml-org/llama.cpp (value types the
 * converter uses, tensor dims written fastest-first, every tensor padded to the alignment).
 *
 * Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 kv count; each kv: string key,
 * u32 value type, value (strings are u64 length + UTF-8 bytes; arrays are u32 item type, u64 count,
 * items); each tensor info: string name, u32 n_dims, u64 dims (ne[0] first: the fastest-varying
 * dimension, i.e. the reverse of the row-major shape), u32 ggml type, u64 offset relative to the
 * data section; zero padding to `general.alignment` (32 unless set); the data section, each tensor
 * at an aligned offset and padded to the alignment.
 */
import { fail } from '../errors.ts';
import type { LinearName } from '../model/llama.ts';
import type { ReadAt } from './safetensors-format.ts';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL */
export const MAX_TENSOR_NAME_BYTES = 63;
export const MAX_DIMS = 4;

/** ggml_type ids (docs/gguf.md). */
export const GGML_TYPE = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  IQ1_M: 29,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  BF16: 30,
} as const;
export type GgmlTypeName = keyof typeof GGML_TYPE;

/** [elements per block, bytes per block] of the types whose layout is known here. */
const TYPE_LAYOUT: Record<number, [number, number]> = {
  0: [1, 4],
  1: [1, 2],
  2: [32, 18],
  3: [32, 20],
  6: [32, 22],
  7: [32, 24],
  8: [32, 34],
  9: [32, 36],
  10: [256, 84],
  11: [256, 110],
  12: [256, 144],
  13: [256, 176],
  14: [256, 210],
  15: [256, 292],
  16: [256, 66],
  17: [256, 74],
  18: [256, 98],
  19: [256, 50],
  20: [32, 18],
  21: [256, 110],
  22: [256, 82],
  23: [256, 136],
  29: [256, 56],
  24: [1, 1],
  25: [1, 2],
  26: [1, 4],
  27: [1, 8],
  28: [1, 8],
  30: [1, 2],
};

export function ggmlTypeName(type: number): string {
  const entry = Object.entries(GGML_TYPE).find(([, id]) => id === type);
  return entry ? entry[0] : `type ${type}`;
}

/** Bytes of a tensor of `type` with GGML dims (ne[0] first); undefined for an unknown type. */
export function ggmlTensorBytes(type: number, dims: readonly number[]): number | undefined {
  const layout = TYPE_LAYOUT[type];
  if (!layout) return undefined;
  const [block, bytes] = layout;
  if (dims.length === 0 || dims[0] % block !== 0) return undefined;
  return (dims.reduce((a, b) => a * b, 1) / block) * bytes;
}

export type GgufValueType =
  | 'uint8'
  | 'int8'
  | 'uint16'
  | 'int16'
  | 'uint32'
  | 'int32'
  | 'float32'
  | 'bool'
  | 'string'
  | 'array'
  | 'uint64'
  | 'int64'
  | 'float64';

/** gguf_metadata_value_type ids, in id order. */
export const VALUE_TYPES: readonly GgufValueType[] = [
  'uint8',
  'int8',
  'uint16',
  'int16',
  'uint32',
  'int32',
  'float32',
  'bool',
  'string',
  'array',
  'uint64',
  'int64',
  'float64',
];

export type NumericType = Exclude<GgufValueType, 'bool' | 'string' | 'array'>;
export type GgufPlain = number | boolean | string | GgufPlain[];
export type GgufValue =
  | { type: NumericType; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; itemType: GgufValueType; value: GgufPlain[] };

/** Shorthands for metadata values. */
export const gguf = {
  u32: (value: number): GgufValue => ({ type: 'uint32', value }),
  i32: (value: number): GgufValue => ({ type: 'int32', value }),
  u64: (value: number): GgufValue => ({ type: 'uint64', value }),
  f32: (value: number): GgufValue => ({ type: 'float32', value }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  str: (value: string): GgufValue => ({ type: 'string', value }),
  strings: (value: string[]): GgufValue => ({ type: 'array', itemType: 'string', value }),
  i32s: (value: number[]): GgufValue => ({ type: 'array', itemType: 'int32', value }),
  u32s: (value: number[]): GgufValue => ({ type: 'array', itemType: 'uint32', value }),
  f32s: (value: number[]): GgufValue => ({ type: 'array', itemType: 'float32', value }),
};

export interface GgufTensorSpec {
  name: string;
  /** GGML order: ne[0] (the contiguous, fastest-varying dimension) first */
  dims: number[];
  /** a ggml type id (GGML_TYPE) */
  type: number;
}

export interface GgufTensorInfo extends GgufTensorSpec {
  /** offset of the data relative to the data section */
  offset: number;
  /** undefined when the type's layout is not known here */
  nbytes?: number;
}

export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

// ---------------------------------------------------------------------------------------------
// reader

export interface GgufFile {
  path: string;
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** absolute file offset of the data section */
  dataOffset: number;
  fileSize: number;
  /** bytes at a file position (see ReadAt) */
  readAt: ReadAt;
}

/** Sequential reads through a ReadAt, buffered, failing on truncation. */
class Cursor {
  pos = 0;
  private buf: Uint8Array = new Uint8Array(0);
  /** the buffered bytes as a DataView, for scalar reads */
  private data: DataView = new DataView(new ArrayBuffer(0));
  private bufStart = 0;

  constructor(
    private readonly readAt: ReadAt,
    readonly size: number,
    readonly path: string,
  ) {}

  remaining(): number {
    return this.size - this.pos;
  }

  /** Moves past the next n bytes; returns where they start in the buffer. */
  private at(n: number, what: string): number {
    if (n > this.remaining())
      fail(
        `${this.path}: truncated GGUF file (${what} at byte ${this.pos} needs ${n} bytes, ${this.remaining()} left)`,
      );
    const end = this.pos + n;
    if (this.pos < this.bufStart || end > this.bufStart + this.buf.length) this.fill(n);
    const start = this.pos - this.bufStart;
    this.pos = end;
    return start;
  }

  /** Reads the next n bytes as one scalar with `get` (a DataView getter at an offset). */
  scalar<T>(n: number, what: string, get: (data: DataView, offset: number) => T): T {
    const offset = this.at(n, what); // may refill, so before this.data is read
    return get(this.data, offset);
  }

  take(n: number, what: string): Uint8Array {
    const start = this.at(n, what);
    return this.buf.subarray(start, start + n);
  }

  private fill(n: number): void {
    const len = Math.min(Math.max(n, 1 << 20), this.size - this.pos);
    const buf = this.readAt(this.pos, len);
    if (buf.length < len)
      fail(`${this.path}: file ended early while reading at byte ${this.pos + buf.length}`);
    this.buf = buf;
    this.data = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.bufStart = this.pos;
  }

  u32(what: string): number {
    return this.scalar(4, what, (d, i) => d.getUint32(i, true));
  }

  u64(what: string): number {
    const v = this.scalar(8, what, (d, i) => d.getBigUint64(i, true));
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${this.path}: ${what} ${v} is too large`);
    return Number(v);
  }

  string(what: string): string {
    const len = this.u64(`${what} length`);
    return UTF8.decode(this.take(len, what));
  }
}

const UTF8 = new TextDecoder();

function readScalar(c: Cursor, type: GgufValueType, what: string): GgufPlain {
  switch (type) {
    case 'uint8':
      return c.scalar(1, what, (d, i) => d.getUint8(i));
    case 'int8':
      return c.scalar(1, what, (d, i) => d.getInt8(i));
    case 'uint16':
      return c.scalar(2, what, (d, i) => d.getUint16(i, true));
    case 'int16':
      return c.scalar(2, what, (d, i) => d.getInt16(i, true));
    case 'uint32':
      return c.scalar(4, what, (d, i) => d.getUint32(i, true));
    case 'int32':
      return c.scalar(4, what, (d, i) => d.getInt32(i, true));
    case 'float32':
      return c.scalar(4, what, (d, i) => d.getFloat32(i, true));
    case 'uint64':
      return c.u64(what);
    case 'int64': {
      const v = c.scalar(8, what, (d, i) => d.getBigInt64(i, true));
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER))
        fail(`${c.path}: ${what} ${v} is too large`);
      return Number(v);
    }
    case 'float64':
      return c.scalar(8, what, (d, i) => d.getFloat64(i, true));
    case 'bool': {
      const v = c.scalar(1, what, (d, i) => d.getUint8(i));
      if (v > 1) fail(`${c.path}: ${what} is a bool with byte value ${v} (0 or 1 expected)`);
      return v === 1;
    }
    case 'string':
      return c.string(what);
    case 'array':
      return readArray(c, what).value;
  }
}

function valueType(c: Cursor, what: string): GgufValueType {
  const id = c.u32(`${what} type`);
  const type = VALUE_TYPES[id];
  if (type === undefined) fail(`${c.path}: ${what} has unknown value type ${id} (0-12 expected)`);
  return type;
}

function readArray(c: Cursor, what: string, depth = 0): { itemType: GgufValueType; value: GgufPlain[] } {
  if (depth > 8) fail(`${c.path}: ${what} nests arrays more than 8 deep`);
  const itemType = valueType(c, `${what} item`);
  const n = c.u64(`${what} length`);
  if (n > c.remaining())
    fail(
      `${c.path}: truncated or corrupt GGUF file (${what} claims ${n} items, ${c.remaining()} bytes remain)`,
    );
  const value: GgufPlain[] = new Array(n);
  for (let i = 0; i < n; i++) {
    value[i] = itemType === 'array' ? readArray(c, what, depth + 1).value : readScalar(c, itemType, what);
  }
  return { itemType, value };
}

function readValue(c: Cursor, key: string): GgufValue {
  const what = `metadata ${key}`;
  const type = valueType(c, what);
  if (type === 'array') return { type, ...readArray(c, what) };
  return { type, value: readScalar(c, type, what) } as GgufValue;
}

function readHeader(c: Cursor, path: string): { version: number; nTensors: number; nKv: number } {
  if (c.size < 24) fail(`${path}: not a GGUF file (${c.size} bytes, shorter than the header)`);
  const magic = c.u32('magic');
  if (magic !== GGUF_MAGIC) fail(`${path}: not a GGUF file (magic 0x${magic.toString(16)}, expected "GGUF")`);
  const version = c.u32('version');
  if (version === 1) fail(`${path}: GGUF version 1 is not supported (2 or 3 expected)`);
  if (version !== 2 && version !== 3) {
    const hint = version > 0xffff ? ' (a big-endian file?)' : '';
    fail(`${path}: unsupported GGUF version ${version}${hint}`);
  }
  const nTensors = c.u64('tensor count');
  const nKv = c.u64('metadata count');
  if (nTensors > c.size || nKv > c.size)
    fail(
      `${path}: header claims ${nTensors} tensors and ${nKv} metadata entries, more than the file can hold`,
    );
  return { version, nTensors, nKv };
}

function readTensorInfo(c: Cursor, path: string, i: number): GgufTensorInfo {
  const name = c.string(`tensor ${i} name`);
  const nDims = c.u32(`tensor ${name} n_dims`);
  if (nDims < 1 || nDims > MAX_DIMS)
    fail(`${path}: tensor ${name} has ${nDims} dims (1 to ${MAX_DIMS} expected)`);
  const dims: number[] = [];
  for (let d = 0; d < nDims; d++) dims.push(c.u64(`tensor ${name} dim ${d}`));
  const type = c.u32(`tensor ${name} type`);
  const offset = c.u64(`tensor ${name} offset`);
  return { name, dims, type, offset, nbytes: ggmlTensorBytes(type, dims) };
}

function alignmentOf(path: string, metadata: Map<string, GgufValue>): number {
  const v = metadata.get('general.alignment');
  if (v === undefined) return GGUF_DEFAULT_ALIGNMENT;
  if (v.type !== 'uint32' || v.value <= 0 || v.value % 8 !== 0)
    fail(`${path}: general.alignment must be a uint32 multiple of 8, found ${v.type} ${String(v.value)}`);
  return v.value;
}

function checkTensorData(path: string, t: GgufTensorInfo, alignment: number, dataBytes: number): void {
  if (t.offset % alignment !== 0)
    fail(`${path}: tensor ${t.name} offset ${t.offset} is not a multiple of ${alignment}`);
  if (t.nbytes === undefined) return;
  if (t.offset + t.nbytes > dataBytes) {
    fail(
      `${path}: tensor ${t.name} data [${t.offset}, ${t.offset + t.nbytes}) runs past the end of the data section (${dataBytes} bytes)`,
    );
  }
}

/** Parses the header, metadata and tensor infos of a GGUF file (tensor data is not read). */

/** Parses the header, metadata and tensor infos of a GGUF file read through `readAt` (no tensor data). */
export function parseGguf(path: string, readAt: ReadAt, size: number): GgufFile {
  const c = new Cursor(readAt, size, path);
  const { version, nTensors, nKv } = readHeader(c, path);
  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = c.string(`metadata key ${i}`);
    if (metadata.has(key)) fail(`${path}: metadata key ${key} appears twice`);
    metadata.set(key, readValue(c, key));
  }
  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const t = readTensorInfo(c, path, i);
    if (names.has(t.name)) fail(`${path}: tensor ${t.name} appears twice`);
    names.add(t.name);
    tensors.push(t);
  }
  const alignment = alignmentOf(path, metadata);
  const dataOffset = alignUp(c.pos, alignment);
  if (dataOffset > c.size && nTensors > 0)
    fail(`${path}: truncated GGUF file (no tensor data after the header)`);
  for (const t of tensors) checkTensorData(path, t, alignment, c.size - dataOffset);
  return { path, version, metadata, tensors, alignment, dataOffset, fileSize: c.size, readAt };
}

/** A GGUF file held in memory (fetched or picked in a browser); `label` names it in errors. */
export function ggufFromBytes(label: string, bytes: Uint8Array): GgufFile {
  return parseGguf(label, (position, length) => bytes.subarray(position, position + length), bytes.length);
}

/** The raw bytes of one tensor. */
export function readGgufTensor(file: GgufFile, name: string): Uint8Array {
  const t = file.tensors.find((x) => x.name === name);
  if (!t) fail(`${file.path}: no tensor named ${name}`);
  if (t.nbytes === undefined)
    fail(`${file.path}: tensor ${name} has ${ggmlTypeName(t.type)}, whose size is not known here`);
  const out = file.readAt(file.dataOffset + t.offset, t.nbytes);
  if (out.length < t.nbytes) fail(`${file.path}: tensor ${name} data ends early`);
  return out;
}

/** A metadata value's plain form, or undefined. */
export function ggufMeta(file: GgufFile, key: string): GgufPlain | undefined {
  return file.metadata.get(key)?.value;
}

/** llama.cpp's tensor names (blk.N.<name>.weight) for the HF Llama linears. */
export const LINEAR_GGUF: Record<LinearName, string> = {
  q_proj: 'attn_q',
  k_proj: 'attn_k',
  v_proj: 'attn_v',
  o_proj: 'attn_output',
  gate_proj: 'ffn_gate',
  up_proj: 'ffn_up',
  down_proj: 'ffn_down',
};
