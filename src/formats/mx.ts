/**
 * OCP Microscaling (MX) v1.0, as microxcaling (github.com/microsoft/microxcaling) emulates it.
 *
 * Each block of k consecutive elements along the row (k = 32 by default, any divisor of the row
 * length) shares one E8M0 scale 2^e:
 *   amax = max |x| over the block's finite elements
 *   e    = floor(log2(amax)) - emax_elem     (amax = 0: floor(log2(2^-126)) = -126, as microxcaling
 *                                             adds FP32_MIN_NORMAL to zero maxima)
 *   e    = clamp(e, -127, 127)               (e > 127 cannot happen for finite f32 inputs)
 *   x'   = Q_elem(x / 2^e) * 2^e
 * emax_elem (exponent of the element format's largest normal): INTd 0, E4M3 8, E5M2 15,
 * E3M2 4, E2M3 2, E2M1 2.
 *
 * Elements:
 * - MXINT-d (d = 2..8): sign-magnitude fixed point with d-2 fraction bits, values
 *   q / 2^(d-2) for integer |q| <= 2^(d-1) - 1 (largest 2 - 2^-(d-2): MXINT8 127/64, MXINT4 1.75,
 *   MXINT2 1); there is no -2. Q rounds x * 2^(d-2) to an integer and clamps.
 * - MXFP (E4M3, E5M2, E3M2, E2M3, E2M1): round to the element grid (subnormals included) and
 *   saturate at the largest normal (448, 57344, 28, 7.5, 6), see minifloat.ts.
 * Rounding: 'nearest' = half away from zero (microxcaling default), 'even' = half to even.
 *
 * Where llmq differs from microxcaling's PyTorch emulation (all on purpose, all rare):
 * - floor(log2) is taken exactly from the exponent bits; microxcaling's f32 torch.log2 can round a
 *   value within an ulp below 2^n up to n and pick a one-too-large exponent;
 * - rounding is exact; microxcaling's f32 floor(|v| + 0.5) rounds v = 0.5 - 2^-25 up;
 * - non-finite inputs: microxcaling turns a block holding NaN or Inf entirely into NaN. Here the
 *   block scale comes from the finite elements, NaN stays NaN (only that element), +-Inf
 *   saturates to +-(largest element) * 2^e. encode() refuses NaN.
 *
 * Codes (encode): MXINT two's complement d-bit patterns (the OCP MXINT8 encoding; -2^(d-1) never
 * occurs), MXFP the OCP bit patterns sign|exponent|mantissa; shared exponents as unbiased e (the
 * E8M0 byte is e + 127). MXFP zero results keep the input's sign (-0 pattern); MXINT zeros are +0.
 */
import { fail } from '../errors.ts';
import {
  E2M1,
  E2M3,
  E3M2,
  E4M3,
  E5M2,
  type MiniFloat,
  miniFloatMagCode,
  miniFloatQuantizeRange,
} from './minifloat.ts';
import { floorLog2, pow2 } from './rounding.ts';
import type { MxElement, MxSpec } from './spec.ts';

export interface MxElementInfo {
  element: MxElement;
  kind: 'int' | 'fp';
  /** bits per element code */
  bits: number;
  /** exponent of the largest normal element value, subtracted from floor(log2(amax)) */
  emax: number;
  /** largest element magnitude */
  maxNorm: number;
  /** MXINT: fraction bits d - 2 */
  fracBits: number;
  /** MXFP: the element format */
  fp: MiniFloat | null;
}

const FP_ELEMENTS: Record<string, MiniFloat> = {
  fp8_e4m3: E4M3,
  fp8_e5m2: E5M2,
  fp6_e3m2: E3M2,
  fp6_e2m3: E2M3,
  fp4_e2m1: E2M1,
};

export const MX_ELEMENTS: readonly MxElement[] = [
  'int8',
  'int7',
  'int6',
  'int5',
  'int4',
  'int3',
  'int2',
  'fp8_e4m3',
  'fp8_e5m2',
  'fp6_e3m2',
  'fp6_e2m3',
  'fp4_e2m1',
];

export function mxElementInfo(element: MxElement): MxElementInfo {
  const fp = FP_ELEMENTS[element];
  if (fp) return { element, kind: 'fp', bits: fp.bits, emax: fp.emax, maxNorm: fp.maxNorm, fracBits: 0, fp };
  const m = /^int([2-8])$/.exec(element);
  if (!m) fail(`unknown MX element format '${element}' (expected one of ${MX_ELEMENTS.join(', ')})`);
  const d = Number(m[1]);
  return { element, kind: 'int', bits: d, emax: 0, maxNorm: 2 - 2 ** (2 - d), fracBits: d - 2, fp: null };
}

/** Shared exponent e of a block whose largest finite magnitude is amax (see the header). */
export function mxSharedExponent(amax: number, emaxElem: number): number {
  const e = (amax > 0 ? floorLog2(amax) : -126) - emaxElem;
  return e < -127 ? -127 : Math.min(e, 127);
}

export function checkMxSpec(cols: number, spec: MxSpec): MxElementInfo {
  const info = mxElementInfo(spec.element);
  const k = spec.block;
  if (!Number.isInteger(k) || k < 1) fail(`MX block size must be a positive integer, got ${k}`);
  if (cols % k !== 0) {
    fail(`MX block size ${k} does not divide the row length (last dimension) ${cols}`);
  }
  if (spec.rounding !== 'nearest' && spec.rounding !== 'even') {
    fail(`MX rounding must be 'nearest' or 'even', got '${spec.rounding}'`);
  }
  return info;
}

interface MxSink {
  out: Float32Array | null;
  codes: Uint8Array | null;
  exponents: Int16Array | null;
}

function runMx(x: ArrayLike<number>, rows: number, cols: number, spec: MxSpec, sink: MxSink): void {
  const info = checkMxSpec(cols, spec);
  const k = spec.block;
  const n = rows * cols;
  const away = spec.rounding === 'nearest';
  const { out, codes, exponents } = sink;
  for (let s = 0, b = 0; s < n; s += k, b++) {
    const end = s + k;
    let amax = 0;
    for (let i = s; i < end; i++) {
      const a = Math.abs(x[i]);
      if (a > amax && a !== Number.POSITIVE_INFINITY) amax = a;
    }
    const e = mxSharedExponent(amax, info.emax);
    if (exponents) exponents[b] = e;
    const down = pow2(-e);
    if (info.fp) {
      // x / 2^e is exact (rounding to f32 only touches values far below the element grid)
      const bad = miniFloatQuantizeRange(x, s, end, pow2(e), info.fp, away, out, codes);
      if (bad >= 0) fail(`cannot encode NaN at row ${Math.floor(bad / cols)}, column ${bad % cols} as MX`);
    } else {
      const unit = pow2(info.fracBits); // v * 2^(d-2) in integer units
      const inv = down * unit;
      const step = pow2(e - info.fracBits);
      const qmax = 2 ** (info.bits - 1) - 1;
      const mask = (1 << info.bits) - 1;
      for (let i = s; i < end; i++) {
        const v = x[i];
        if (Number.isNaN(v)) {
          if (codes) fail(`cannot encode NaN at row ${Math.floor(i / cols)}, column ${i % cols} as MX`);
          if (out) out[i] = Number.NaN;
          continue;
        }
        const t = (v < 0 ? -v : v) * inv; // exact: power-of-two scaling
        let r = Math.floor(t);
        const d = t - r;
        if (d > 0.5 || (d === 0.5 && (away || (r & 1) === 1))) r++;
        if (r > qmax) r = qmax; // also catches +-Infinity
        const q = v < 0 ? -r : r;
        if (out) out[i] = q * step + 0;
        if (codes) codes[i] = q & mask;
      }
    }
  }
}

/** Fake-quantize a rows x cols matrix to MX (blocks along the row). */
export function fakeQuantMx(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: MxSpec,
  out: Float32Array = new Float32Array(rows * cols),
): Float32Array {
  runMx(x, rows, cols, spec, { out, codes: null, exponents: null });
  return out;
}

export interface MxEncoded {
  /** element bit patterns, one per element */
  codes: Uint8Array;
  /** unbiased shared exponent per block (row-major, cols / block per row); E8M0 byte = e + 127 */
  exponents: Int16Array;
}

export function encodeMx(x: ArrayLike<number>, rows: number, cols: number, spec: MxSpec): MxEncoded {
  checkMxSpec(cols, spec);
  const codes = new Uint8Array(rows * cols);
  const exponents = new Int16Array((rows * cols) / spec.block);
  runMx(x, rows, cols, spec, { out: null, codes, exponents });
  return { codes, exponents };
}

export function decodeMx(
  enc: MxEncoded,
  spec: MxSpec,
  out: Float32Array = new Float32Array(enc.codes.length),
): Float32Array {
  const info = mxElementInfo(spec.element);
  const { codes, exponents } = enc;
  const k = spec.block;
  const n = codes.length;
  if (info.fp) {
    const values = info.fp.values;
    for (let s = 0, b = 0; s < n; s += k, b++) {
      const up = pow2(exponents[b]);
      for (let i = s; i < s + k; i++) out[i] = values[codes[i]] * up;
    }
  } else {
    const half = 1 << (info.bits - 1);
    const full = 1 << info.bits;
    for (let s = 0, b = 0; s < n; s += k, b++) {
      const step = pow2(exponents[b] - info.fracBits);
      for (let i = s; i < s + k; i++) {
        const c = codes[i];
        out[i] = (c >= half ? c - full : c) * step;
      }
    }
  }
  return out;
}

/** One element value quantized with a known shared exponent (for tests and kernels' references). */
export function mxQuantizeValue(
  v: number,
  e: number,
  info: MxElementInfo,
  rounding: 'nearest' | 'even',
): number {
  if (Number.isNaN(v)) return Number.NaN;
  const away = rounding === 'nearest';
  if (info.fp) {
    const f = info.fp;
    const neg = v < 0 || (v === 0 && 1 / v < 0);
    const c = miniFloatMagCode(Math.abs(v) * pow2(-e), f, away);
    return Math.fround((neg ? -1 : 1) * f.values[c] * pow2(e));
  }
  const t = Math.abs(v) * pow2(info.fracBits - e);
  let r = Math.floor(t);
  const d = t - r;
  if (d > 0.5 || (d === 0.5 && (away || (r & 1) === 1))) r++;
  const qmax = 2 ** (info.bits - 1) - 1;
  if (r > qmax) r = qmax;
  return Math.fround((v < 0 ? -r : r) * pow2(e - info.fracBits) + 0);
}
