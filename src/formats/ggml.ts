/**
 * GGML block formats Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 (llama.cpp / GGUF), bit-exact with llama.cpp's reference
 * quantizers, and F16 rows.
 *
 * Sources read (public): ggml/src/ggml-quants.c of ggml-org/llama.cpp (quantize_row_q8_0_ref,
 * quantize_row_q4_0_ref, dequantize_row_q8_0, dequantize_row_q4_0) and gguf-py/gguf/quants.py
 * (its numpy Q8_0 / Q4_0, both the 0.19.0 release and the later master).
 *
 * Blocks hold 32 consecutive values of a row, little-endian, the fp16 scale first:
 *   Q8_0 (34 bytes): d = amax / 127, q = roundf(x * (1/d)) (half away from zero), x = q * d
 *   Q4_0 (18 bytes): d = m / -8 where m is the value of largest magnitude (the first one on ties,
 *     sign kept), q = min(15, trunc(x * (1/d) + 8.5)), x = (q - 8) * d; byte j holds element j in
 *     its low nibble and element j + 16 in its high nibble.
 * All arithmetic is float32 as in C (Math.fround after each operation); d is stored rounded to fp16
 * (round to nearest even, as F16C's _cvtss_sh and numpy's astype(float16)), while the codes use the
 * reciprocal of the unrounded float32 d, exactly as the reference does.
 *
 * Q4_0 has one platform-dependent step: `x*id + 8.5f` is two float32 roundings in ISO C (what an
 * x86-64 build of ggml-base does, and gguf-py 0.19.0), but a compiler that contracts it into a fused
 * multiply-add rounds once (GCC on aarch64; gguf-py master emulates that in float64). The default is
 * the ISO C result; `{ fma: true }` gives the fused one. They differ only on values within an ulp of
 * a rounding boundary.
 */
import { fail } from '../errors.ts';
import { f16BitsToNumber, f32ToF16, numberToF16Bits } from '../tensor/dtype.ts';
import { fitScale, fitScaleMin, QKX3_GRID } from './ggml-search.ts';
import type { GgmlSpec } from './spec.ts';

export const QK = 32;
export const Q8_0_BLOCK_BYTES = 2 + QK;
export const Q4_0_BLOCK_BYTES = 2 + QK / 2;

export interface Q4_0Options {
  /** round x*id + 8.5 once (fused multiply-add) instead of twice; see the file comment */
  fma?: boolean;
}

/** llama.cpp's importance matrix for a quantizer: one weight per column of rows of `cols` values. */
export interface Importance {
  importance: Float32Array;
  cols: number;
}

const fr = Math.fround;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function checkLength(n: number): void {
  if (n % QK !== 0) throw new RangeError(`GGML blocks need a multiple of ${QK} values, got ${n}`);
}

/** C roundf: to nearest, halfway cases away from zero. */
function roundHalfAway(v: number): number {
  const r = Math.floor(Math.abs(v) + 0.5);
  return v < 0 ? -r : r;
}

export function writeF16(out: Uint8Array, at: number, value: number): void {
  const h = numberToF16Bits(value);
  out[at] = h & 0xff;
  out[at + 1] = h >>> 8;
}

export function readF16(src: Uint8Array, at: number): number {
  return f16BitsToNumber(src[at] | (src[at + 1] << 8));
}

function checkBytes(bytes: Uint8Array, blockBytes: number, n: number): void {
  if (n % QK !== 0 || bytes.length < (n / QK) * blockBytes) {
    throw new RangeError(`${bytes.length} bytes do not hold ${n} values in blocks of ${blockBytes}`);
  }
}

/** The float32 d llama.cpp's Q8_0 quantizer picks for x[at, at + 32): amax / 127. */
function blockScaleQ8_0(x: ArrayLike<number>, at: number): number {
  let amax = 0;
  for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[at + j]));
  return fr(amax / 127);
}

/** One Q8_0 block of x[at, at + 32) into out[o, o + 34). */
function quantizeBlockQ8_0(x: Float32Array, at: number, out: Uint8Array, o: number): void {
  const d = blockScaleQ8_0(x, at);
  const id = d !== 0 ? fr(1 / d) : 0;
  writeF16(out, o, d);
  for (let j = 0; j < QK; j++) out[o + 2 + j] = roundHalfAway(fr(x[at + j] * id)) & 0xff;
}

/** x (a multiple of 32 values) -> Q8_0 blocks. */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  checkLength(x.length);
  const out = new Uint8Array((x.length / QK) * Q8_0_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK; b++) quantizeBlockQ8_0(x, b * QK, out, b * Q8_0_BLOCK_BYTES);
  return out;
}

/** Q8_0 blocks -> n values. */
export function dequantizeQ8_0(bytes: Uint8Array, n = (bytes.length / Q8_0_BLOCK_BYTES) * QK): Float32Array {
  checkBytes(bytes, Q8_0_BLOCK_BYTES, n);
  const y = new Float32Array(n);
  for (let b = 0; b < n / QK; b++) {
    const o = b * Q8_0_BLOCK_BYTES;
    const d = readF16(bytes, o);
    for (let j = 0; j < QK; j++) y[b * QK + j] = ((bytes[o + 2 + j] << 24) >> 24) * d;
  }
  return y;
}

/** The Q4_0 code of x given id = 1/d: min(15, trunc(x*id + 8.5)), rounded as the options say. */
function codeQ4_0(x: number, id: number, fma: boolean): number {
  // x and id are float32, so x*id is exact in float64 and one fround gives the fused result
  const t = fma ? fr(x * id + 8.5) : fr(fr(x * id) + 8.5);
  return Math.min(15, Math.trunc(t));
}

/** The value of largest magnitude in x[at, at + 32), the first of equal magnitudes. */
function largestMagnitude(x: ArrayLike<number>, at: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < QK; j++) {
    const v = x[at + j];
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

/** The float32 d llama.cpp's Q4_0 quantizer picks for x[at, at + 32): the largest-magnitude value / -8. */
function blockScaleQ4_0(x: ArrayLike<number>, at: number): number {
  return fr(largestMagnitude(x, at) / -8);
}

function quantizeBlockQ4_0(x: Float32Array, at: number, out: Uint8Array, o: number, fma: boolean): void {
  const d = blockScaleQ4_0(x, at);
  const id = d !== 0 ? fr(1 / d) : 0;
  writeF16(out, o, d);
  for (let j = 0; j < QK / 2; j++) {
    const lo = codeQ4_0(x[at + j], id, fma);
    const hi = codeQ4_0(x[at + QK / 2 + j], id, fma);
    out[o + 2 + j] = lo | (hi << 4);
  }
}

/** 16 bytes at out[o] of 32 four-bit codes at codes[at]: code j in the low nibble of byte j, j + 16 in its high. */
export function packNibbles(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let j = 0; j < QK / 2; j++)
    out[o + j] = (codes[at + j] & 0x0f) | ((codes[at + QK / 2 + j] & 0x0f) << 4);
}

/**
 * x (a multiple of 32 values) -> Q4_0 blocks, as llama.cpp's quantize_row_q4_0_ref, or with an
 * importance matrix as quantize_row_q4_0_impl: Q5_0's importance path with codes in 0..15.
 */
export function quantizeQ4_0(x: Float32Array, opts: Q4_0Options & Partial<Importance> = {}): Uint8Array {
  checkLength(x.length);
  if (opts.importance)
    return quantizeWeighted(x, opts, Q4_0_BLOCK_BYTES, 8, (codes, blocks, o) =>
      packNibbles(codes, 0, blocks, o + 2),
    );
  const fma = opts.fma ?? false;
  const out = new Uint8Array((x.length / QK) * Q4_0_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK; b++) quantizeBlockQ4_0(x, b * QK, out, b * Q4_0_BLOCK_BYTES, fma);
  return out;
}

export const Q5_0_BLOCK_BYTES = 2 + 4 + QK / 2;

/**
 * One Q5_0 block (fp16 d, 32 fifth bits, 16 bytes of nibbles) of x[at, at + 32): d = (value of
 * largest magnitude) / -16, code min(31, trunc(x/d + 16.5)), rounded as Q4_0's.
 */
function quantizeBlockQ5_0(x: Float32Array, at: number, out: Uint8Array, o: number, fma: boolean): void {
  const d = fr(largestMagnitude(x, at) / -16);
  const id = d !== 0 ? fr(1 / d) : 0;
  const codes = new Uint8Array(QK);
  for (let j = 0; j < QK; j++) {
    const v = x[at + j];
    codes[j] = Math.min(31, Math.trunc(fma ? fr(v * id + 16.5) : fr(fr(v * id) + 16.5)));
  }
  writeF16(out, o, d);
  packQ5_0Codes(codes, 0, out, o);
}

/** The fifth bits (4 bytes from `qhAt`) and nibbles (16 bytes after them) of 32 codes at codes[at]. */
function packFiveBitCodes(codes: Uint8Array, at: number, out: Uint8Array, qhAt: number): void {
  let qh = 0;
  for (let j = 0; j < QK / 2; j++) {
    const [lo, hi] = [codes[at + j], codes[at + QK / 2 + j]];
    out[qhAt + 4 + j] = (lo & 0x0f) | ((hi & 0x0f) << 4);
    qh |= ((lo >>> 4) << j) | ((hi >>> 4) << (j + QK / 2));
  }
  for (let k = 0; k < 4; k++) out[qhAt + k] = (qh >>> (8 * k)) & 0xff;
}

/** The fifth bits (bytes 2..6) and nibbles (6..22) of one Q5_0 block from its 32 codes at codes[at]. */
export function packQ5_0Codes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  packFiveBitCodes(codes, at, out, o + 2);
}

/**
 * x (a multiple of 32 values) -> Q5_0 blocks, as llama.cpp's quantize_row_q5_0_ref, or with an
 * importance matrix as quantize_row_q5_0_impl: per block, make_qx_quants' scale under the weights
 * importance * sqrt(mean x^2 of the row + x^2), its codes kept as found (no second rounding).
 */
export function quantizeQ5_0(x: Float32Array, opts: Q4_0Options & Partial<Importance> = {}): Uint8Array {
  checkLength(x.length);
  if (opts.importance)
    return quantizeWeighted(x, opts, Q5_0_BLOCK_BYTES, 16, (codes, blocks, o) =>
      packQ5_0Codes(codes, 0, blocks, o),
    );
  const fma = opts.fma ?? false;
  const out = new Uint8Array((x.length / QK) * Q5_0_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK; b++) quantizeBlockQ5_0(x, b * QK, out, b * Q5_0_BLOCK_BYTES, fma);
  return out;
}

/**
 * The importance path of Q4_0 / Q5_0 (quantize_row_q4_0_impl / _q5_0_impl): per block, make_qx_quants'
 * scale under forEachWeightedBlock's weights, its codes kept as found (no second rounding); `pack`
 * writes a block's codes into the block at out[o] after its fp16 scale.
 */
function quantizeWeighted(
  x: Float32Array,
  opts: Partial<Importance>,
  blockBytes: number,
  nmax: number,
  pack: (codes: Uint8Array, out: Uint8Array, o: number) => void,
): Uint8Array {
  const out = new Uint8Array((x.length / QK) * blockBytes);
  const qw = opts.importance as Float32Array;
  const codes = new Uint8Array(QK);
  forEachWeightedBlock(x, { importance: qw, cols: opts.cols ?? qw.length }, (b, w) => {
    const o = (b / QK) * blockBytes;
    writeF16(out, o, fitScale({ x, at: b, n: QK }, nmax, codes, 0, w, 0));
    pack(codes, out, o);
  });
  return out;
}

/**
 * The 32-blocks of x (block start b) with the weights of the _impl quantizers of Q5_0 / Q5_1:
 * importance * sqrt(mean x^2 of the row + x^2).
 */
function forEachWeightedBlock(
  x: Float32Array,
  imp: Importance,
  visit: (b: number, w: Float32Array) => void,
): void {
  const { importance: qw, cols } = imp;
  if (qw.length !== cols || cols % QK !== 0 || x.length % cols !== 0)
    throw new RangeError(`importance: ${qw.length} values for rows of ${cols}`);
  const w = new Float32Array(QK);
  for (let at = 0; at < x.length; at += cols) {
    let sumX2 = 0;
    for (let j = 0; j < cols; j++) sumX2 = fr(sumX2 + fr(x[at + j] * x[at + j]));
    const sigma2 = fr(sumX2 / cols);
    for (let ib = 0; ib < cols / QK; ib++) {
      const b = at + QK * ib;
      for (let j = 0; j < QK; j++)
        w[j] = fr(qw[QK * ib + j] * fr(Math.sqrt(fr(sigma2 + fr(x[b + j] * x[b + j])))));
      visit(b, w);
    }
  }
}

export const Q5_1_BLOCK_BYTES = 2 + 2 + 4 + QK / 2;

/** The fifth bits (bytes 4..8) and nibbles (8..24) of one Q5_1 block from its 32 codes at codes[at]. */
export function packQ5_1Codes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  packFiveBitCodes(codes, at, out, o + 4);
}

/** The nibbles (bytes 4..20) of one Q4_1 block from its 32 codes at codes[at]. */
export function packQ4_1Codes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  packNibbles(codes, at, out, o + 4);
}

export const Q4_1_BLOCK_BYTES = 2 + 2 + QK / 2;

/** Q4_1 (4-bit codes, nibbles) and Q5_1 (5-bit codes, fifth bits and nibbles): x = q d + m. */
interface MinBlockKind {
  bytes: number;
  nmax: number;
  pack: (codes: Uint8Array, at: number, out: Uint8Array, o: number) => void;
}
const Q4_1_KIND: MinBlockKind = { bytes: Q4_1_BLOCK_BYTES, nmax: 15, pack: packQ4_1Codes };
const Q5_1_KIND: MinBlockKind = { bytes: Q5_1_BLOCK_BYTES, nmax: 31, pack: packQ5_1Codes };

/**
 * One Q4_1 / Q5_1 block (fp16 d and m, then the codes) of x[at, at + 32) as quantize_row_q4_1_ref /
 * _q5_1_ref: m = min, d = (max - min) / nmax, code min(nmax, trunc((x - min) / d + 0.5)) with the
 * float32 min and 1/d.
 */
function quantizeMinBlock(kind: MinBlockKind, x: Float32Array, at: number, out: Uint8Array, o: number): void {
  let min = x[at];
  let max = x[at];
  for (let j = 1; j < QK; j++) {
    if (x[at + j] < min) min = x[at + j];
    if (x[at + j] > max) max = x[at + j];
  }
  const d = fr(fr(max - min) / kind.nmax);
  const id = d !== 0 ? fr(1 / d) : 0;
  const codes = new Uint8Array(QK);
  for (let j = 0; j < QK; j++)
    codes[j] = Math.min(kind.nmax, Math.trunc(fr(fr(fr(x[at + j] - min) * id) + 0.5)));
  writeF16(out, o, d);
  writeF16(out, o + 2, min);
  kind.pack(codes, 0, out, o);
}

/**
 * x (a multiple of 32 values) -> Q4_1 / Q5_1 blocks, as the _ref quantizer, or with an importance
 * matrix as quantize_row_q4_1_impl / _q5_1_impl: make_qkx3_quants' scale and min under the weights of
 * forEachWeightedBlock, its codes kept as found.
 */
function quantizeMinBlocks(kind: MinBlockKind, x: Float32Array, imatrix?: Importance): Uint8Array {
  checkLength(x.length);
  const out = new Uint8Array((x.length / QK) * kind.bytes);
  if (!imatrix) {
    for (let b = 0; b < x.length / QK; b++) quantizeMinBlock(kind, x, b * QK, out, b * kind.bytes);
    return out;
  }
  const codes = new Uint8Array(QK);
  forEachWeightedBlock(x, imatrix, (b, w) => {
    const [d, min] = fitScaleMin({ x, at: b, n: QK, w, wAt: 0 }, kind.nmax, QKX3_GRID, codes, 0);
    const o = (b / QK) * kind.bytes;
    writeF16(out, o, d);
    writeF16(out, o + 2, -min);
    kind.pack(codes, 0, out, o);
  });
  return out;
}

/** x (a multiple of 32 values) -> Q4_1 blocks (x = q d + m), as llama.cpp's quantize_q4_1. */
export const quantizeQ4_1 = (x: Float32Array, imatrix?: Importance) =>
  quantizeMinBlocks(Q4_1_KIND, x, imatrix);

/** x (a multiple of 32 values) -> Q5_1 blocks (x = q d + m), as llama.cpp's quantize_q5_1. */
export const quantizeQ5_1 = (x: Float32Array, imatrix?: Importance) =>
  quantizeMinBlocks(Q5_1_KIND, x, imatrix);

/** Q4_0 blocks -> n values. */
export function dequantizeQ4_0(bytes: Uint8Array, n = (bytes.length / Q4_0_BLOCK_BYTES) * QK): Float32Array {
  checkBytes(bytes, Q4_0_BLOCK_BYTES, n);
  const y = new Float32Array(n);
  for (let b = 0; b < n / QK; b++) {
    const o = b * Q4_0_BLOCK_BYTES;
    const d = readF16(bytes, o);
    for (let j = 0; j < QK / 2; j++) {
      const byte = bytes[o + 2 + j];
      y[b * QK + j] = ((byte & 0x0f) - 8) * d;
      y[b * QK + QK / 2 + j] = ((byte >>> 4) - 8) * d;
    }
  }
  return y;
}

/** x -> little-endian IEEE binary16 bytes (round to nearest even). */
export function quantizeF16(x: Float32Array): Uint8Array {
  const bits = f32ToF16(x);
  if (LITTLE_ENDIAN) return new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
  const out = new Uint8Array(x.length * 2);
  for (let i = 0; i < bits.length; i++) {
    out[2 * i] = bits[i] & 0xff;
    out[2 * i + 1] = bits[i] >>> 8;
  }
  return out;
}

/** Little-endian binary16 bytes -> values. */
export function dequantizeF16(bytes: Uint8Array): Float32Array {
  const y = new Float32Array(bytes.length >>> 1);
  for (let i = 0; i < y.length; i++) y[i] = readF16(bytes, 2 * i);
  return y;
}

// ---------------------------------------------------------------------------------------------
// Dequantization of the other block types found in GGUF files (llmq does not write them).
//
// Sources read (public): ggml/src/ggml-quants.c of ggml-org/llama.cpp (dequantize_row_q4_1, _q5_0,
// _q5_1, _q4_K, _q5_K, _q6_K, get_scale_min_k4) and gguf-py/gguf/quants.py 0.19.0 (the numpy
// dequantize_blocks of the same types), against which test/fixtures/ggml-quants.json checks these.
// Products and sums are float32 in the order ggml evaluates them (Math.fround after each step).

/** Bytes per block of the types below (blocks of 32 values, or 256 for the K-quants). */
export const GGML_BLOCK = {
  Q4_1: { values: 32, bytes: 20 },
  Q5_0: { values: 32, bytes: 22 },
  Q5_1: { values: 32, bytes: 24 },
  Q2_K: { values: 256, bytes: 84 },
  Q3_K: { values: 256, bytes: 110 },
  Q4_K: { values: 256, bytes: 144 },
  Q5_K: { values: 256, bytes: 176 },
  Q6_K: { values: 256, bytes: 210 },
  IQ4_NL: { values: 32, bytes: 18 },
  IQ4_XS: { values: 256, bytes: 136 },
  IQ3_XXS: { values: 256, bytes: 98 },
  IQ3_S: { values: 256, bytes: 110 },
  IQ1_S: { values: 256, bytes: 50 },
  IQ1_M: { values: 256, bytes: 56 },
  IQ2_XXS: { values: 256, bytes: 66 },
  IQ2_XS: { values: 256, bytes: 74 },
  IQ2_S: { values: 256, bytes: 82 },
} as const;

/** How many blocks of `kind` hold n values, checking that `bytes` holds them. */
export function blockCount(bytes: Uint8Array, kind: keyof typeof GGML_BLOCK, n: number): number {
  const { values, bytes: per } = GGML_BLOCK[kind];
  if (n % values !== 0 || bytes.length < (n / values) * per)
    throw new RangeError(`${bytes.length} bytes do not hold ${n} ${kind} values`);
  return n / values;
}

function readU32(src: Uint8Array, at: number): number {
  return (src[at] | (src[at + 1] << 8) | (src[at + 2] << 16) | (src[at + 3] << 24)) >>> 0;
}

/**
 * A block format's data as one code per value and per-group parameters, in the form its dequantizer
 * evaluates: x = fr(code * scale) + mins[g] where `mins` is set (Q4_1, Q5_1, Q4_K, Q5_K),
 * x = scale * levels[code] where `levels` is (IQ4_NL, IQ4_XS: a non-linear grid), else
 * x = (code - zero) * scale (Q5_0, Q6_K); g = value index / group.
 */
export interface GgmlGroupCodes {
  codes: Uint8Array;
  group: number;
  scales: Float32Array;
  mins?: Float32Array;
  levels?: Int8Array;
  zero: number;
  /** bits a code needs */
  bits: number;
}

/** The values of unpacked block data, bit for bit as gguf-py dequantizes the blocks. */
export function ggmlGroupValues(u: GgmlGroupCodes): Float32Array {
  const { codes, group, scales, mins, levels, zero } = u;
  const y = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) {
    const g = Math.floor(i / group);
    if (levels) y[i] = scales[g] * levels[codes[i]];
    else y[i] = mins ? fr(codes[i] * scales[g]) + mins[g] : (codes[i] - zero) * scales[g];
  }
  return y;
}

export function groupCodes(
  n: number,
  group: number,
  bits: number,
  withMins: boolean,
  zero = 0,
): GgmlGroupCodes {
  const groups = n / group;
  return {
    codes: new Uint8Array(n),
    group,
    scales: new Float32Array(groups),
    ...(withMins ? { mins: new Float32Array(groups) } : {}),
    zero,
    bits,
  };
}

/** Q4_1 (d, m, 16 bytes of nibbles): x = q * d + m. */
export function unpackQ4_1(bytes: Uint8Array, n = (bytes.length / 20) * 32): GgmlGroupCodes {
  const u = groupCodes(n, 32, 4, true);
  for (let b = 0; b < blockCount(bytes, 'Q4_1', n); b++) {
    const o = b * 20;
    u.scales[b] = readF16(bytes, o);
    u.mins![b] = readF16(bytes, o + 2);
    unpackNibbles(bytes, o + 4, u.codes, b * 32);
  }
  return u;
}

/** The 32 four-bit codes of the 16 bytes at bytes[o] into codes[at] (packNibbles' layout). */
export function unpackNibbles(bytes: Uint8Array, o: number, codes: Uint8Array, at: number): void {
  for (let j = 0; j < QK / 2; j++) {
    codes[at + j] = bytes[o + j] & 0x0f;
    codes[at + QK / 2 + j] = bytes[o + j] >>> 4;
  }
}

/** The 5-bit codes of a Q5_0 / Q5_1 block: low nibbles in qs, the fifth bits in the u32 qh. */
function fiveBitCodes(bytes: Uint8Array, qhAt: number, codes: Uint8Array, at: number): void {
  const qh = readU32(bytes, qhAt);
  for (let j = 0; j < 16; j++) {
    const byte = bytes[qhAt + 4 + j];
    codes[at + j] = (byte & 0x0f) | (((qh >>> j) & 1) << 4);
    codes[at + j + 16] = (byte >>> 4) | (((qh >>> (j + 16)) & 1) << 4);
  }
}

/** Q5_0 (d, qh, qs): x = (q - 16) * d. */
export function unpackQ5_0(bytes: Uint8Array, n = (bytes.length / 22) * 32): GgmlGroupCodes {
  const u = groupCodes(n, 32, 5, false, 16);
  for (let b = 0; b < blockCount(bytes, 'Q5_0', n); b++) {
    u.scales[b] = readF16(bytes, b * 22);
    fiveBitCodes(bytes, b * 22 + 2, u.codes, b * 32);
  }
  return u;
}

/** Q5_1 (d, m, qh, qs): x = q * d + m. */
export function unpackQ5_1(bytes: Uint8Array, n = (bytes.length / 24) * 32): GgmlGroupCodes {
  const u = groupCodes(n, 32, 5, true);
  for (let b = 0; b < blockCount(bytes, 'Q5_1', n); b++) {
    u.scales[b] = readF16(bytes, b * 24);
    u.mins![b] = readF16(bytes, b * 24 + 2);
    fiveBitCodes(bytes, b * 24 + 4, u.codes, b * 32);
  }
  return u;
}

/**
 * get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes at `at`.
 * Sub-blocks 0-3 use the low 6 bits of bytes j and j+4; 4-7 take a nibble of byte j+4 and the top two
 * bits of bytes j-4 (scale) and j (min).
 */
function scaleMinK4(src: Uint8Array, at: number, j: number): [number, number] {
  if (j < 4) return [src[at + j] & 63, src[at + j + 4] & 63];
  const sc = (src[at + j + 4] & 0x0f) | ((src[at + j - 4] >>> 6) << 4);
  const m = (src[at + j + 4] >>> 4) | ((src[at + j] >>> 6) << 4);
  return [sc, m];
}

/**
 * Q4_K / Q5_K super-blocks of 256: fp16 d and dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks
 * of 32, (Q5_K: 32 bytes of fifth bits), 128 bytes of nibbles. Each 32 bytes of nibbles hold two
 * sub-blocks (low nibbles first); x = (d * sc) * q - (dmin * m).
 */
function unpackK4or5(bytes: Uint8Array, n: number, kind: 'Q4_K' | 'Q5_K'): GgmlGroupCodes {
  const per = GGML_BLOCK[kind].bytes;
  const high = kind === 'Q5_K';
  const u = groupCodes(n, 32, high ? 5 : 4, true);
  for (let b = 0; b < blockCount(bytes, kind, n); b++) {
    const o = b * per;
    const d = readF16(bytes, o);
    const dmin = readF16(bytes, o + 2);
    const qh = o + 16;
    const qs = high ? qh + 32 : qh;
    for (let sub = 0; sub < 8; sub++) {
      const [sc, m] = scaleMinK4(bytes, o + 4, sub);
      u.scales[b * 8 + sub] = fr(d * sc);
      u.mins![b * 8 + sub] = -fr(dmin * m);
      const shift = (sub & 1) * 4;
      const from = qs + (sub >> 1) * 32;
      for (let l = 0; l < 32; l++) {
        let q = (bytes[from + l] >>> shift) & 0x0f;
        if (high) q |= ((bytes[qh + l] >>> sub) & 1) << 4;
        u.codes[b * 256 + sub * 32 + l] = q;
      }
    }
  }
  return u;
}

export function unpackQ4_K(bytes: Uint8Array, n = (bytes.length / 144) * 256): GgmlGroupCodes {
  return unpackK4or5(bytes, n, 'Q4_K');
}

export function unpackQ5_K(bytes: Uint8Array, n = (bytes.length / 176) * 256): GgmlGroupCodes {
  return unpackK4or5(bytes, n, 'Q5_K');
}

/**
 * Q6_K super-blocks of 256: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales (one per
 * 16 values), fp16 d last. Each half of 128 values: value v < 32 + 32k takes the low (k = 0, 1) or
 * high (k = 2, 3) nibble of ql[l + 32 (k & 1)] and bits 2k..2k+1 of qh[l]; x = (d * sc) * (q - 32).
 */
export function unpackQ6_K(bytes: Uint8Array, n = (bytes.length / 210) * 256): GgmlGroupCodes {
  const u = groupCodes(n, 16, 6, false, 32);
  for (let b = 0; b < blockCount(bytes, 'Q6_K', n); b++) {
    const o = b * 210;
    const d = readF16(bytes, o + 208);
    for (let g = 0; g < 16; g++) u.scales[b * 16 + g] = fr(d * ((bytes[o + 192 + g] << 24) >> 24));
    for (let half = 0; half < 2; half++) {
      const ql = o + half * 64;
      const qh = o + 128 + half * 32;
      const base = b * 256 + half * 128;
      for (let k = 0; k < 4; k++)
        for (let l = 0; l < 32; l++) {
          const low = (bytes[ql + l + 32 * (k & 1)] >>> (k >> 1 ? 4 : 0)) & 0x0f;
          u.codes[base + k * 32 + l] = low | (((bytes[qh + l] >>> (2 * k)) & 3) << 4);
        }
    }
  }
  return u;
}

/** Bits 2 (k % 4) .. 2 (k % 4) + 1 of the 64 two-bit-plane bytes at qsAt for value i (Q2_K's codes, Q3_K's low bits). */
function twoBitCode(bytes: Uint8Array, qsAt: number, i: number): number {
  return (bytes[qsAt + 32 * (i >> 7) + (i & 31)] >>> (2 * ((i >> 5) & 3))) & 3;
}

/**
 * Q2_K super-blocks of 256: 16 bytes of 4-bit scales (low nibble) and mins (high) for 16 sub-blocks of
 * 16, 64 bytes of 2-bit codes, fp16 d and dmin; x = (d * sc) * q - (dmin * m).
 */
export function unpackQ2_K(bytes: Uint8Array, n = (bytes.length / 84) * 256): GgmlGroupCodes {
  const u = groupCodes(n, 16, 2, true);
  for (let b = 0; b < blockCount(bytes, 'Q2_K', n); b++) {
    const o = b * 84;
    const d = readF16(bytes, o + 80);
    const dmin = readF16(bytes, o + 82);
    for (let g = 0; g < 16; g++) {
      u.scales[b * 16 + g] = fr(d * (bytes[o + g] & 0x0f));
      u.mins![b * 16 + g] = -fr(dmin * (bytes[o + g] >>> 4));
    }
    for (let i = 0; i < 256; i++) u.codes[b * 256 + i] = twoBitCode(bytes, o + 16, i);
  }
  return u;
}

/**
 * Q3_K super-blocks of 256: 32 bytes of high bits (bit k of byte l for value 32 k + l), 64 bytes of low
 * 2-bit planes, 12 bytes of 6-bit scales for 16 groups of 16, fp16 d; x = (d * (sc - 32)) * (q - 4).
 */
export function unpackQ3_K(bytes: Uint8Array, n = (bytes.length / 110) * 256): GgmlGroupCodes {
  const u = groupCodes(n, 16, 3, false, 4);
  for (let b = 0; b < blockCount(bytes, 'Q3_K', n); b++) {
    const o = b * 110;
    const d = readF16(bytes, o + 108);
    for (let g = 0; g < 16; g++) {
      const low = g < 8 ? bytes[o + 96 + g] & 0x0f : bytes[o + 96 + g - 8] >>> 4;
      const high = (bytes[o + 104 + (g % 4)] >>> (2 * (g >> 2))) & 3;
      u.scales[b * 16 + g] = fr(d * ((low | (high << 4)) - 32));
    }
    for (let i = 0; i < 256; i++) {
      const high = (bytes[o + (i & 31)] >>> (i >> 5)) & 1;
      u.codes[b * 256 + i] = twoBitCode(bytes, o + 32, i) | (high << 2);
    }
  }
  return u;
}

export const dequantizeQ2_K = (bytes: Uint8Array, n?: number) => ggmlGroupValues(unpackQ2_K(bytes, n));
export const dequantizeQ3_K = (bytes: Uint8Array, n?: number) => ggmlGroupValues(unpackQ3_K(bytes, n));
export const dequantizeQ4_1 = (bytes: Uint8Array, n?: number) => ggmlGroupValues(unpackQ4_1(bytes, n));
export const dequantizeQ5_0 = (bytes: Uint8Array, n?: number) => ggmlGroupValues(unpackQ5_0(bytes, n));
export const dequantizeQ5_1 = (bytes: Uint8Array, n?: number) => ggmlGroupValues(unpackQ5_1(bytes, n));
export const dequantizeQ4_K = (bytes: Uint8Array, n?: number) => ggmlGroupValues(unpackQ4_K(bytes, n));
export const dequantizeQ5_K = (bytes: Uint8Array, n?: number) => ggmlGroupValues(unpackQ5_K(bytes, n));
export const dequantizeQ6_K = (bytes: Uint8Array, n?: number) => ggmlGroupValues(unpackQ6_K(bytes, n));

/**
 * For GPTQ, which fixes a block's scale and then quantizes values that its error updates have moved:
 * the block's float32 d (as llama.cpp picks it; stored rounded to fp16), from x[at, at + 32).
 */
export function ggmlBlockScale(spec: GgmlSpec, x: ArrayLike<number>, at: number): number {
  return spec.type === 'q4_0' ? blockScaleQ4_0(x, at) : blockScaleQ8_0(x, at);
}

/**
 * The code (as encodeGgml: q4_0 0..15, q8_0 int8 + 128) of x in a block of float32 scale d, by
 * llama.cpp's rounding, clamped to the code range (x may lie outside the range d was fitted on).
 */
export function ggmlCode(spec: GgmlSpec, x: number, d: number): number {
  const id = d !== 0 ? fr(1 / d) : 0;
  if (spec.type === 'q4_0') return Math.max(0, codeQ4_0(fr(x), id, false));
  return Math.min(127, Math.max(-128, roundHalfAway(fr(fr(x) * id)))) + 128;
}

/** Code offset of a GGML weight format: x = (code - offset) * d (q8_0 codes are int8 + 128). */
export function ggmlCodeOffset(spec: GgmlSpec): number {
  return spec.type === 'q4_0' ? 8 : 128;
}

/** x as float32 for a llama.cpp quantizer of `type`: whole blocks of `block` per row, finite values. */
export function ggmlValues(
  x: ArrayLike<number>,
  cols: number,
  type: string,
  where: string,
  block = QK,
): Float32Array {
  if (cols % block !== 0)
    fail(`${type}: blocks of ${block} do not divide the row length (last dimension) ${cols}`);
  const values = x instanceof Float32Array ? x : Float32Array.from(x);
  for (let i = 0; i < values.length; i++)
    if (!Number.isFinite(values[i]))
      fail(
        `${where}: ${type} takes finite values only (llama.cpp's quantizers), got ${values[i]} at element ${i}`,
      );
  return values;
}

/** Quantize-dequantize with llama.cpp's Q4_0 / Q8_0 reference quantizers (rows of a multiple of 32). */
export function fakeQuantGgml(x: ArrayLike<number>, cols: number, spec: GgmlSpec): Float32Array {
  const values = ggmlValues(x, cols, spec.type, 'fakeQuant');
  return spec.type === 'q4_0' ? dequantizeQ4_0(quantizeQ4_0(values)) : dequantizeQ8_0(quantizeQ8_0(values));
}

/**
 * One code per element (see ggmlCodeOffset) and the fp16-rounded scale of each block of 32; Q4_0 with
 * `importance` by its importance path.
 */
export function encodeGgml(
  x: ArrayLike<number>,
  cols: number,
  spec: GgmlSpec,
  importance?: Float32Array,
): { codes: Uint8Array; scales: Float32Array } {
  const values = ggmlValues(x, cols, spec.type, 'encode');
  const blocks =
    spec.type === 'q4_0' ? quantizeQ4_0(values, importance && { importance, cols }) : quantizeQ8_0(values);
  return ggmlUnpackBlocks(blocks, spec);
}

/** The codes (as encodeGgml gives them) and block scales of Q4_0 / Q8_0 blocks: ggmlBlocks inverted. */
export function ggmlUnpackBlocks(
  bytes: Uint8Array,
  spec: GgmlSpec,
): { codes: Uint8Array; scales: Float32Array } {
  const q4 = spec.type === 'q4_0';
  const blockBytes = q4 ? Q4_0_BLOCK_BYTES : Q8_0_BLOCK_BYTES;
  if (bytes.length % blockBytes !== 0)
    fail(`${spec.type}: ${bytes.length} bytes are not a whole number of ${blockBytes}-byte blocks`);
  const blocks = bytes.length / blockBytes;
  const codes = new Uint8Array(blocks * QK);
  const scales = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const o = b * blockBytes;
    scales[b] = readF16(bytes, o);
    for (let j = 0; j < QK; j++)
      codes[b * QK + j] = q4
        ? (bytes[o + 2 + (j % 16)] >> (j < 16 ? 0 : 4)) & 0x0f
        : (bytes[o + 2 + j] + 128) & 0xff;
  }
  return { codes, scales };
}

/**
 * GGUF blocks from codes as encodeGgml gives them and one fp16-valued scale per 32 codes: what a Q4_0 /
 * Q8_0 checkpoint (RTN, AWQ or GPTQ) holds, written without a second rounding.
 */
export function ggmlBlocks(codes: Uint8Array, scales: Float32Array, spec: GgmlSpec): Uint8Array {
  const q4 = spec.type === 'q4_0';
  const blockBytes = q4 ? Q4_0_BLOCK_BYTES : Q8_0_BLOCK_BYTES;
  const out = new Uint8Array(scales.length * blockBytes);
  for (let b = 0; b < scales.length; b++) {
    const o = b * blockBytes;
    const c = b * QK;
    writeF16(out, o, scales[b]);
    if (q4) for (let j = 0; j < QK / 2; j++) out[o + 2 + j] = codes[c + j] | (codes[c + QK / 2 + j] << 4);
    else for (let j = 0; j < QK; j++) out[o + 2 + j] = (codes[c + j] - 128) & 0xff;
  }
  return out;
}

/** Values of encodeGgml's codes: bit-identical to fakeQuantGgml of the encoded input. */
export function decodeGgml(codes: Uint8Array, scales: Float32Array, spec: GgmlSpec): Float32Array {
  const offset = ggmlCodeOffset(spec);
  const y = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) y[i] = (codes[i] - offset) * scales[Math.floor(i / QK)];
  return y;
}
