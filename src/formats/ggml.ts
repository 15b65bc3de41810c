/**
 * GGML block formats Q8_0 and Q4_0 (llama.cpp / GGUF), bit-exact with llama.cpp's reference
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
import { f16BitsToNumber, f32ToF16, numberToF16Bits } from '../tensor/dtype.ts';

export const QK = 32;
export const Q8_0_BLOCK_BYTES = 2 + QK;
export const Q4_0_BLOCK_BYTES = 2 + QK / 2;

export interface Q4_0Options {
  /** round x*id + 8.5 once (fused multiply-add) instead of twice; see the file comment */
  fma?: boolean;
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

function writeF16(out: Uint8Array, at: number, value: number): void {
  const h = numberToF16Bits(value);
  out[at] = h & 0xff;
  out[at + 1] = h >>> 8;
}

function readF16(src: Uint8Array, at: number): number {
  return f16BitsToNumber(src[at] | (src[at + 1] << 8));
}

function checkBytes(bytes: Uint8Array, blockBytes: number, n: number): void {
  if (n % QK !== 0 || bytes.length < (n / QK) * blockBytes) {
    throw new RangeError(`${bytes.length} bytes do not hold ${n} values in blocks of ${blockBytes}`);
  }
}

/** One Q8_0 block of x[at, at + 32) into out[o, o + 34). */
function quantizeBlockQ8_0(x: Float32Array, at: number, out: Uint8Array, o: number): void {
  let amax = 0;
  for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[at + j]));
  const d = fr(amax / 127);
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

function quantizeBlockQ4_0(x: Float32Array, at: number, out: Uint8Array, o: number, fma: boolean): void {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < QK; j++) {
    const v = x[at + j];
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  const d = fr(max / -8);
  const id = d !== 0 ? fr(1 / d) : 0;
  writeF16(out, o, d);
  for (let j = 0; j < QK / 2; j++) {
    const lo = codeQ4_0(x[at + j], id, fma);
    const hi = codeQ4_0(x[at + QK / 2 + j], id, fma);
    out[o + 2 + j] = lo | (hi << 4);
  }
}

/** x (a multiple of 32 values) -> Q4_0 blocks. */
export function quantizeQ4_0(x: Float32Array, opts: Q4_0Options = {}): Uint8Array {
  checkLength(x.length);
  const fma = opts.fma ?? false;
  const out = new Uint8Array((x.length / QK) * Q4_0_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK; b++) quantizeBlockQ4_0(x, b * QK, out, b * Q4_0_BLOCK_BYTES, fma);
  return out;
}

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
