/**
 * 16-bit float conversions on raw bit patterns (bf16 / IEEE binary16 are carried as Uint16Array).
 *
 * Rounding and special values follow PyTorch so that a tensor converted here has the same bits as
 * `tensor.to(torch.bfloat16)` / `tensor.to(torch.float16)`:
 * - f32 -> bf16: round to nearest, ties to even; every NaN becomes 0x7FC0 (c10::BFloat16 does this,
 *   dropping the sign); overflow rounds to +-inf.
 * - f32 -> f16: round to nearest, ties to even, with f16 subnormals; magnitudes that round past 65504
 *   become +-inf; NaN becomes sign | 0x7E00 (the fp16 library torch uses keeps the sign).
 * - bf16/f16 -> f32 are exact (NaN payloads are kept).
 */

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** The bits of Math.fround(x) as an unsigned 32-bit integer. */
export function f32Bits(x: number): number {
  f32Scratch[0] = x;
  return u32Scratch[0];
}

/** The float32 value whose bits are `bits`. */
export function f32FromBits(bits: number): number {
  u32Scratch[0] = bits >>> 0;
  return f32Scratch[0];
}

/** f32 bits -> bf16 bits, round to nearest even (as torch). */
function bf16FromF32Bits(b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  const lsb = (b >>> 16) & 1;
  return ((b + 0x7fff + lsb) >>> 16) & 0xffff;
}

/** f32 bits -> f16 bits, round to nearest even, subnormals, inf, NaN. */
function f16FromF32Bits(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const e = (b >>> 23) & 0xff;
  const m = b & 0x7fffff;
  if (e === 0xff) return m !== 0 ? sign | 0x7e00 : sign | 0x7c00;
  const exp = e - 127;
  if (exp > 15) return sign | 0x7c00;
  if (exp >= -14) {
    // normal range: keep 10 mantissa bits, round on the 13 dropped ones; a carry out of the mantissa
    // increments the exponent (and turns 65520.. into inf), which is the correct result.
    let h = ((exp + 15) << 10) | (m >>> 13);
    const rest = m & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h += 1;
    return sign | h;
  }
  if (exp < -25) return sign; // below half the smallest subnormal (f32 subnormals included)
  // subnormal: value = (m | 2^23) * 2^(exp - 23) = q * 2^-24 with q = (m | 2^23) >> shift
  const full = m | 0x800000;
  const shift = -exp - 1; // 14..24
  let q = full >>> shift;
  const rest = full & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (q & 1) === 1)) q += 1;
  return sign | q;
}

/** f16 bits -> f32 bits (exact). */
function f32BitsFromF16(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 0x1f;
  let m = h & 0x3ff;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e === 0) {
    if (m === 0) return sign >>> 0;
    let exp = -14;
    while ((m & 0x400) === 0) {
      m <<= 1;
      exp -= 1;
    }
    return (sign | ((exp + 127) << 23) | ((m & 0x3ff) << 13)) >>> 0;
  }
  return (sign | ((e - 15 + 127) << 23) | (m << 13)) >>> 0;
}

let f16Table: Uint32Array | undefined;
function f16ToF32Table(): Uint32Array {
  if (f16Table === undefined) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f32BitsFromF16(h);
  }
  return f16Table;
}

/** One bf16 bit pattern -> its value. */
export function bf16BitsToNumber(bits: number): number {
  return f32FromBits((bits & 0xffff) << 16);
}

/** One f16 bit pattern -> its value. */
export function f16BitsToNumber(bits: number): number {
  return f32FromBits(f32BitsFromF16(bits & 0xffff));
}

/** A number -> bf16 bits (via float32, as torch converts a float32 tensor). */
export function numberToBf16Bits(x: number): number {
  return bf16FromF32Bits(f32Bits(x));
}

/** A number -> f16 bits (via float32). */
export function numberToF16Bits(x: number): number {
  return f16FromF32Bits(f32Bits(x));
}

function checkOut<T extends { length: number }>(out: T | undefined, n: number, make: (n: number) => T): T {
  if (out === undefined) return make(n);
  if (out.length !== n) throw new RangeError(`output has ${out.length} elements, expected ${n}`);
  return out;
}

function u32View(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

/** bf16 bits -> f32 values (exact). `out`, if given, must have the same length. */
export function bf16ToF32(bits: Uint16Array, out?: Float32Array): Float32Array {
  const res = checkOut(out, bits.length, (n) => new Float32Array(n));
  const u = u32View(res);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  return res;
}

/** f16 bits -> f32 values (exact). */
export function f16ToF32(bits: Uint16Array, out?: Float32Array): Float32Array {
  const res = checkOut(out, bits.length, (n) => new Float32Array(n));
  const u = u32View(res);
  const table = f16ToF32Table();
  for (let i = 0; i < bits.length; i++) u[i] = table[bits[i]];
  return res;
}

/** f32 -> bf16 bits, round to nearest even; NaN -> 0x7FC0 (as torch). */
export function f32ToBf16(x: Float32Array, out?: Uint16Array): Uint16Array {
  const res = checkOut(out, x.length, (n) => new Uint16Array(n));
  const u = u32View(x);
  for (let i = 0; i < x.length; i++) res[i] = bf16FromF32Bits(u[i]);
  return res;
}

/** f32 -> f16 bits, round to nearest even with subnormals; overflow -> inf; NaN -> sign|0x7E00. */
export function f32ToF16(x: Float32Array, out?: Uint16Array): Uint16Array {
  const res = checkOut(out, x.length, (n) => new Uint16Array(n));
  const u = u32View(x);
  for (let i = 0; i < x.length; i++) res[i] = f16FromF32Bits(u[i]);
  return res;
}

/** The parts one after another in one new array of their kind. */
export function concatArrays<T extends Uint8Array | Float32Array>(
  parts: readonly T[],
  make: (n: number) => T,
): T {
  const out = make(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
