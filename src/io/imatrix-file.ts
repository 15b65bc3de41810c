/**
 * llama.cpp's importance-matrix files, as llama-imatrix writes them and llama-quantize --imatrix reads
 * them (tools/imatrix/imatrix.cpp save_imatrix / save_imatrix_legacy, tools/quantize/quantize.cpp
 * load_imatrix / load_legacy_imatrix, ggml-org/llama.cpp; read for the layout only):
 * - GGUF (current): general.type "imatrix", imatrix.datasets (strings), imatrix.chunk_count and
 *   imatrix.chunk_size (u32); per weight tensor `<name>.in_sum2` (F32 [columns, matrices]: the sum of
 *   x^2 over the tokens) and `<name>.counts` (F32 [1, matrices]: the tokens). The importance is
 *   in_sum2 / counts, 1 where a matrix saw no token.
 * - legacy .dat: i32 entries; per entry i32 name length, the name, i32 ncall, i32 nvalues, f32 values
 *   (mean x^2 times ncall); then optionally i32 chunks, i32 dataset length, the dataset. The importance
 *   is values / ncall.
 * Names are the GGUF tensor names (blk.N.attn_q.weight, ...); importance is per input column.
 */
import fs from 'node:fs';
import { fail } from '../errors.ts';
import { GGML_TYPE, type GgufFile, gguf, readGguf, readGgufTensor, writeGguf } from './gguf.ts';

export interface Imatrix {
  /** GGUF tensor name -> importance per input column (mean x^2) */
  importance: Map<string, Float32Array>;
  datasets: string[];
  chunks: number;
}

export interface ImatrixSums {
  name: string;
  /** sum of x^2 per input column */
  sums: Float32Array;
  /** tokens summed */
  count: number;
}

const f32 = Math.fround;

/** Reads a llama.cpp imatrix file (GGUF or legacy .dat, told apart by the GGUF magic). */
export function readImatrix(path: string): Imatrix {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(path);
  } catch (e) {
    return fail(`${path}: cannot read the imatrix file (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  const isGguf = bytes.subarray(0, 4).toString('latin1') === 'GGUF';
  return isGguf ? readGgufImatrix(readGguf(path)) : readLegacyImatrix(path, bytes);
}

function floats(file: GgufFile, name: string, count: number): Float32Array {
  const t = file.tensors.find((x) => x.name === name);
  if (t?.type !== GGML_TYPE.F32) fail(`${file.path}: tensor ${name} must be F32`);
  const bytes = readGgufTensor(file, name);
  if (bytes.length !== count * 4)
    fail(`${file.path}: tensor ${name} holds ${bytes.length / 4} values, not ${count}`);
  return new Float32Array(bytes.slice().buffer);
}

function readGgufImatrix(file: GgufFile): Imatrix {
  const meta = (key: string) => file.metadata.get(key)?.value;
  const datasets = meta('imatrix.datasets');
  const chunks = meta('imatrix.chunk_count');
  if (
    !Array.isArray(datasets) ||
    typeof chunks !== 'number' ||
    typeof meta('imatrix.chunk_size') !== 'number'
  )
    fail(
      `${file.path}: not an imatrix file (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size missing)`,
    );
  const importance = new Map<string, Float32Array>();
  for (const t of file.tensors) {
    if (!t.name.endsWith('.in_sum2')) continue;
    const name = t.name.slice(0, -'.in_sum2'.length);
    const [cols, mats = 1] = t.dims;
    const sums = floats(file, t.name, cols * mats);
    if (!file.tensors.some((x) => x.name === `${name}.counts`))
      fail(`${file.path}: ${name} has in_sum2 but no counts`);
    const counts = floats(file, `${name}.counts`, mats);
    importance.set(
      name,
      sums.map((s, i) => {
        const count = counts[Math.floor(i / cols)];
        return count > 0 ? f32(s / count) : 1;
      }),
    );
  }
  if (importance.size === 0) fail(`${file.path}: the imatrix file has no entries`);
  return { importance, datasets: datasets.map(String), chunks };
}

function readLegacyImatrix(path: string, bytes: Buffer): Imatrix {
  let at = 0;
  const i32 = () => {
    if (at + 4 > bytes.length) fail(`${path}: the imatrix file ends early (at byte ${at})`);
    const v = bytes.readInt32LE(at);
    at += 4;
    return v;
  };
  const text = (n: number) => {
    if (n < 0 || at + n > bytes.length) fail(`${path}: the imatrix file ends early (at byte ${at})`);
    const s = bytes.toString('utf8', at, at + n);
    at += n;
    return s;
  };
  const entries = i32();
  if (entries < 1) fail(`${path}: not an imatrix file (GGUF or llama-imatrix's legacy .dat with entries)`);
  const importance = new Map<string, Float32Array>();
  for (let e = 0; e < entries; e++) {
    const name = text(i32());
    const ncall = i32();
    const n = i32();
    if (n < 1 || at + 4 * n > bytes.length) fail(`${path}: entry ${name} has a bad value count ${n}`);
    const values = new Float32Array(bytes.buffer.slice(bytes.byteOffset + at, bytes.byteOffset + at + 4 * n));
    at += 4 * n;
    importance.set(name, ncall > 0 ? values.map((v) => f32(v / ncall)) : values);
  }
  let chunks = 0;
  const datasets: string[] = [];
  if (at < bytes.length) {
    chunks = i32();
    datasets.push(text(i32()));
  }
  return { importance, datasets, chunks };
}

/** Writes an imatrix GGUF file llama-quantize --imatrix reads (atomically; over an existing one with force). */
export function writeImatrix(
  path: string,
  entries: readonly ImatrixSums[],
  meta: { datasets: string[]; chunks: number; chunkSize: number },
  opts: { force?: boolean } = {},
): void {
  const metadata = new Map([
    ['general.type', gguf.str('imatrix')],
    ['imatrix.datasets', gguf.strings(meta.datasets)],
    ['imatrix.chunk_count', gguf.u32(meta.chunks)],
    ['imatrix.chunk_size', gguf.u32(meta.chunkSize)],
  ]);
  const sorted = [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const tensors = sorted.flatMap((e) => [
    { name: `${e.name}.in_sum2`, dims: [e.sums.length, 1], type: GGML_TYPE.F32, data: bytesOf(e.sums) },
    { name: `${e.name}.counts`, dims: [1, 1], type: GGML_TYPE.F32, data: bytesOf(Float32Array.of(e.count)) },
  ]);
  writeGguf(path, metadata, tensors, opts);
}

function bytesOf(x: Float32Array): Uint8Array {
  return new Uint8Array(x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength));
}
