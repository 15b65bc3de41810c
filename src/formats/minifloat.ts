/**
 * Small binary floating-point element formats: FP8 E4M3 / E5M2, FP6 E3M2 / E2M3, FP4 E2M1.
 *
 * Bit pattern: sign | exponent field (ebits) | mantissa field (mbits), bias 2^(ebits-1) - 1.
 * Exponent field 0 holds the subnormals m * 2^(emin - mbits) (emin = 1 - bias), so every
 * format has a uniform grid below 2^emin. Largest normal magnitudes:
 *   E4M3 448 (S.1111.111 is NaN, no Inf: "E4M3FN"), E5M2 57344 (IEEE-like: exponent 31 is Inf/NaN),
 *   E3M2 28, E2M3 7.5, E2M1 6 (no Inf/NaN codes).
 *
 * Conversion (miniFloatEncode) is a saturating cast: round |v| to the element grid (including
 * subnormals) with ties either to even mantissa or away from zero, and clamp magnitudes at the
 * largest normal (so +-Infinity and anything above max become +-max, never Inf/NaN). The sign is
 * kept, including the sign of zero (-0 and tiny negatives give the -0 pattern).
 */
import { floorLog2, pow2 } from './rounding.ts';

// Module-local exponent extraction for the hot loops below (a call into another module may go
// through a getter when the loader transpiles to CommonJS, which costs more than the work).
const F64 = new Float64Array(1);
const U32 = new Uint32Array(F64.buffer);
const HI = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0;

export interface MiniFloat {
  readonly name: string;
  /** total bits including the sign */
  readonly bits: number;
  readonly ebits: number;
  /** explicit mantissa (fraction) bits */
  readonly mbits: number;
  readonly bias: number;
  /** exponent of the smallest normal (1 - bias) */
  readonly emin: number;
  /** exponent of the largest normal */
  readonly emax: number;
  readonly maxNorm: number;
  /** pattern (without sign) of maxNorm; every larger magnitude saturates to it */
  readonly maxCode: number;
  readonly signBit: number;
  /** positive NaN pattern, or -1 where the format has none */
  readonly nanCode: number;
  /** decoded value of every bit pattern (length 2^bits) */
  readonly values: Float64Array;
  /** invStep[ep - emin] = 2^(mbits - ep): scales |v| with exponent ep to integer mantissa units */
  readonly invStep: Float64Array;
}

type Special = 'none' | 'fn' | 'ieee';

function makeMiniFloat(
  name: string,
  ebits: number,
  mbits: number,
  maxNorm: number,
  special: Special,
): MiniFloat {
  const bits = 1 + ebits + mbits;
  const bias = 2 ** (ebits - 1) - 1;
  const emin = 1 - bias;
  const emax = floorLog2(maxNorm);
  const maxCode = ((emax - emin) << mbits) + maxNorm * 2 ** (mbits - emax);
  const signBit = 1 << (bits - 1);
  const magMask = signBit - 1;
  const mantMask = (1 << mbits) - 1;
  const expAllOnes = (1 << ebits) - 1;
  const values = new Float64Array(1 << bits);
  for (let c = 0; c < values.length; c++) {
    const mag = c & magMask;
    const ef = mag >> mbits;
    const mf = mag & mantMask;
    let v = ef === 0 ? mf * pow2(emin - mbits) : ((1 << mbits) + mf) * pow2(ef - bias - mbits);
    if (special === 'fn' && mag === magMask) v = Number.NaN;
    if (special === 'ieee' && ef === expAllOnes) v = mf === 0 ? Number.POSITIVE_INFINITY : Number.NaN;
    values[c] = c & signBit ? -v : v;
  }
  const invStep = new Float64Array(emax - emin + 1);
  for (let ep = emin; ep <= emax; ep++) invStep[ep - emin] = pow2(mbits - ep);
  const nanCode = special === 'fn' ? magMask : special === 'ieee' ? magMask : -1;
  return { name, bits, ebits, mbits, bias, emin, emax, maxNorm, maxCode, signBit, nanCode, values, invStep };
}

/** OCP FP8 E4M3 (E4M3FN): bias 7, max 448, NaN = 0x7F / 0xFF, no Inf. */
export const E4M3: MiniFloat = makeMiniFloat('e4m3', 4, 3, 448, 'fn');
/** OCP FP8 E5M2: bias 15, max 57344, Inf 0x7C, NaN 0x7D..0x7F (0x7F used here). */
export const E5M2: MiniFloat = makeMiniFloat('e5m2', 5, 2, 57344, 'ieee');
/** OCP MX FP6 E3M2: bias 3, max 28. */
export const E3M2: MiniFloat = makeMiniFloat('e3m2', 3, 2, 28, 'none');
/** OCP MX FP6 E2M3: bias 1, max 7.5. */
export const E2M3: MiniFloat = makeMiniFloat('e2m3', 2, 3, 7.5, 'none');
/** OCP MX FP4 E2M1: bias 1, values 0, 0.5, 1, 1.5, 2, 3, 4, 6. */
export const E2M1: MiniFloat = makeMiniFloat('e2m1', 2, 1, 6, 'none');

/**
 * Magnitude pattern (no sign) of a >= 0 (not NaN): rounded to the grid, saturated at maxNorm.
 * `away` = ties away from zero, otherwise ties to the even mantissa.
 */
export function miniFloatMagCode(a: number, f: MiniFloat, away: boolean): number {
  if (!(a < f.maxNorm)) return f.maxCode;
  // exponent of a; subnormal doubles (field 0) are far below every element grid: emin
  F64[0] = a;
  let ep = ((U32[HI] >>> 20) & 0x7ff) - 1023;
  if (ep < f.emin) ep = f.emin;
  const n = a * f.invStep[ep - f.emin]; // exact: power-of-two scaling
  let r = Math.floor(n);
  const d = n - r;
  if (d > 0.5 || (d === 0.5 && (away || (r & 1) === 1))) r++;
  // r in [0, 2^(mbits+1)]; a carry into the next binade falls out of the addition
  const c = ((ep - f.emin) << f.mbits) + r;
  return Math.min(c, f.maxCode);
}

/**
 * Saturating conversion of v to a bit pattern of f (sign included). NaN gives f.nanCode, which is
 * -1 for formats without NaN (callers handle NaN before).
 */
export function miniFloatEncode(v: number, f: MiniFloat, away: boolean): number {
  if (Number.isNaN(v)) return f.nanCode;
  if (v < 0 || (v === 0 && 1 / v < 0)) return f.signBit | miniFloatMagCode(-v, f, away);
  return miniFloatMagCode(v, f, away);
}

/** Value of a bit pattern. */
export function miniFloatDecode(code: number, f: MiniFloat): number {
  return f.values[code];
}

/** v rounded to f (saturating, sign kept); NaN stays NaN. */
export function miniFloatCast(v: number, f: MiniFloat, away = false): number {
  if (Number.isNaN(v)) return Number.NaN;
  return f.values[miniFloatEncode(v, f, away)];
}

/**
 * Quantize x[start..end) to f after dividing by `div` (rounded to f32, as torch's x / scale):
 * code = encode(fround(x / div)), value = values[code] * div. Writes codes[i] and/or out[i]
 * (value, stored as f32). NaN: out[i] = NaN; when `codes` is given, returns the index of the first
 * NaN without writing further (the caller reports it). Returns -1 otherwise.
 */
export function miniFloatQuantizeRange(
  x: ArrayLike<number>,
  start: number,
  end: number,
  div: number,
  f: MiniFloat,
  away: boolean,
  out: Float32Array | null,
  codes: Uint8Array | null,
): number {
  const { values, invStep, maxNorm, maxCode, emin, mbits, signBit } = f;
  for (let i = start; i < end; i++) {
    const v = x[i];
    if (Number.isNaN(v)) {
      if (codes) return i;
      if (out) out[i] = Number.NaN;
      continue;
    }
    const t = Math.fround(v / div);
    const neg = t < 0 || (t === 0 && 1 / t < 0);
    const a = neg ? -t : t;
    let c = maxCode;
    if (a < maxNorm) {
      F64[0] = a;
      let ep = ((U32[HI] >>> 20) & 0x7ff) - 1023;
      if (ep < emin) ep = emin;
      const n = a * invStep[ep - emin];
      let r = Math.floor(n);
      const d = n - r;
      if (d > 0.5 || (d === 0.5 && (away || (r & 1) === 1))) r++;
      c = Math.min(((ep - emin) << mbits) + r, maxCode);
    }
    if (neg) c |= signBit;
    if (out) out[i] = values[c] * div;
    if (codes) codes[i] = c;
  }
  return -1;
}

/** max |x[i]| over [start, end), ignoring NaN and +-Infinity (0 when there is no finite value) */
export function amaxFinite(x: ArrayLike<number>, start: number, end: number): number {
  let amax = 0;
  for (let i = start; i < end; i++) {
    const a = Math.abs(x[i]);
    if (a > amax && a !== Number.POSITIVE_INFINITY) amax = a;
  }
  return amax;
}
