/**
 * FP8 (OCP FP8 E4M3 "E4M3FN" and E5M2) casts and scaled fake quantization.
 *
 * Scalar cast: round to nearest, ties to even mantissa (as cvt.rn.satfinite / torch casts), with
 * saturation: magnitudes above the largest normal (E4M3 448, E5M2 57344) and +-Infinity become
 * +-max; NaN stays NaN (pattern 0x7F / 0xFF). Subnormals are kept (E4M3 m * 2^-9, E5M2 m * 2^-16).
 *
 * Fake quantization with an f32 scale per tensor or per row:
 *   amax  = max |x| over the finite elements (of the tensor or of the row)
 *   scale = amax / fmax as f32 (fmax = 448 or 57344); scale = 1 when that is 0 (all-zero input)
 *   x'    = fp8(x / scale) * scale, each product/quotient rounded to f32 as torch does.
 * Inf saturates to +-fmax * scale; NaN -> NaN (encode refuses NaN).
 */
import { fail } from '../errors.ts';
import {
  amaxFinite,
  E4M3,
  E5M2,
  type MiniFloat,
  miniFloatEncode,
  miniFloatQuantizeRange,
} from './minifloat.ts';
import type { Fp8Spec } from './spec.ts';

const fround = Math.fround;

export function fp8Format(element: 'e4m3' | 'e5m2'): MiniFloat {
  if (element === 'e4m3') return E4M3;
  if (element === 'e5m2') return E5M2;
  return fail(`unknown FP8 element '${element}' (expected e4m3 or e5m2)`);
}

/** E4M3 bit pattern of x (round half even, saturating; NaN -> 0x7F, sign kept). */
export function e4m3Code(x: number): number {
  return miniFloatEncode(x, E4M3, false);
}

/** Value of an E4M3 bit pattern (0x7F / 0xFF are NaN). */
export function e4m3Value(code: number): number {
  return E4M3.values[code & 0xff];
}

/** x cast to E4M3 and back (round half even, saturating at +-448). */
export function castE4M3(x: number): number {
  return E4M3.values[miniFloatEncode(x, E4M3, false)];
}

/** E5M2 bit pattern of x (round half even, saturating at +-57344; NaN -> 0x7F). */
export function e5m2Code(x: number): number {
  return miniFloatEncode(x, E5M2, false);
}

export function e5m2Value(code: number): number {
  return E5M2.values[code & 0xff];
}

/** x cast to E5M2 and back (round half even, saturating at +-57344). */
export function castE5M2(x: number): number {
  return E5M2.values[miniFloatEncode(x, E5M2, false)];
}

/** f32 scale amax / fmax (1 when that is 0). */
export function fp8Scale(amax: number, element: 'e4m3' | 'e5m2'): number {
  const s = fround(amax / fp8Format(element).maxNorm);
  return s > 0 ? s : 1;
}

function checkFp8(spec: Fp8Spec): MiniFloat {
  const f = fp8Format(spec.element);
  if (spec.granularity !== 'tensor' && spec.granularity !== 'row') {
    fail(`FP8 granularity must be 'tensor' or 'row', got '${spec.granularity}'`);
  }
  return f;
}

function runFp8(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: Fp8Spec,
  out: Float32Array | null,
  codes: Uint8Array | null,
  scales: Float32Array | null,
): void {
  const f = checkFp8(spec);
  const n = rows * cols;
  const block = spec.granularity === 'tensor' ? n : cols;
  for (let s = 0, p = 0; s < n; s += block, p++) {
    const end = s + block;
    const scale = fp8Scale(amaxFinite(x, s, end), spec.element);
    if (scales) scales[p] = scale;
    const bad = miniFloatQuantizeRange(x, s, end, scale, f, false, out, codes);
    if (bad >= 0) fail(`cannot encode NaN at row ${Math.floor(bad / cols)}, column ${bad % cols} as fp8`);
  }
}

export function fakeQuantFp8(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: Fp8Spec,
  out: Float32Array = new Float32Array(rows * cols),
): Float32Array {
  runFp8(x, rows, cols, spec, out, null, null);
  return out;
}

export interface Fp8Encoded {
  /** FP8 bit patterns */
  codes: Uint8Array;
  /** one f32 scale for 'tensor', one per row for 'row' */
  scales: Float32Array;
}

export function encodeFp8(x: ArrayLike<number>, rows: number, cols: number, spec: Fp8Spec): Fp8Encoded {
  checkFp8(spec);
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(spec.granularity === 'tensor' ? 1 : rows);
  runFp8(x, rows, cols, spec, null, codes, scales);
  return { codes, scales };
}

export function decodeFp8(
  enc: Fp8Encoded,
  rows: number,
  cols: number,
  spec: Fp8Spec,
  out: Float32Array = new Float32Array(rows * cols),
): Float32Array {
  const values = checkFp8(spec).values;
  const n = rows * cols;
  const block = spec.granularity === 'tensor' ? n : cols;
  for (let s = 0, p = 0; s < n; s += block, p++) {
    const scale = enc.scales[p];
    for (let i = s; i < s + block; i++) out[i] = values[enc.codes[i]] * scale;
  }
  return out;
}
