/**
 * llama.cpp's K-quant writers, Q4_K and Q6_K, as its reference quantizers (quantize_row_q4_K_ref,
 * quantize_row_q6_K_ref, without an importance matrix) choose the blocks: what `llama-quantize`
 * writes for Q4_K_M. Reimplemented from ggml/src/ggml-quants.c (ggml-org/llama.cpp, read for the
 * search grids and the operation order); test/fixtures/kquants.json holds that code's own output,
 * which these match byte for byte. Every product and sum is float32 in C's order (Math.fround after
 * each step), with no fused multiply-adds: the output of a llama.cpp build without FMA contraction.
 * Readers of both types are in formats/ggml.ts (unpackQ4_K, unpackQ6_K).
 *
 * Q4_K: super-blocks of 256 = 8 sub-blocks of 32, x = (d * sc) q - (dmin * m), q in 0..15, with
 * 6-bit sc and m per sub-block and fp16 d, dmin per super-block. Each sub-block's scale and min
 * come from a weighted least-squares search over 21 candidate grids (weights rms + |x|).
 * Q6_K: 16 groups of 16, x = (d * sc) (q - 32), q in 0..63, int8 sc per group, fp16 d; each
 * group's scale from a search over 18 grids around amax / 32 weighted by x^2.
 */
import { readF16, writeF16 } from './ggml.ts';

export const QK_K = 256;
export const Q4_K_BLOCK_BYTES = 144;
export const Q6_K_BLOCK_BYTES = 210;

const fr = Math.fround;
/** GROUP_MAX_EPS of ggml-quants.c: a group below this magnitude quantizes to zeros. */
const GROUP_MAX_EPS = fr(1e-15);
const TENTH = fr(0.1);

/** ggml's nearest_int: float32 v to the nearest integer, ties to even (for |v| < 2^22). */
function nearestInt(v: number): number {
  return fr(v + 12582912) - 12582912;
}

const clamp = (v: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, v));

function checkLength(n: number, what: string): void {
  if (n % QK_K !== 0) throw new RangeError(`${what} needs a multiple of ${QK_K} values, got ${n}`);
}

/**
 * make_qkx2_quants: codes L[0..n) in 0..nmax and (scale, min) with x ~ scale L - min, min >= 0,
 * minimising sum w (scale L - min - x)^2 over the grids iscale = (nmax + rmin + rdelta k) / range.
 */
function fitScaleMin(
  x: Float32Array,
  at: number,
  n: number,
  nmax: number,
  w: Float32Array,
  L: Uint8Array,
  lAt: number,
): [scale: number, min: number] {
  let min = x[at];
  let max = x[at];
  let sumW = w[0];
  let sumX = fr(sumW * x[at]);
  for (let i = 1; i < n; i++) {
    const v = x[at + i];
    if (v < min) min = v;
    if (v > max) max = v;
    sumW = fr(sumW + w[i]);
    sumX = fr(sumX + fr(w[i] * v));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0, lAt, lAt + n);
    return [0, -min];
  }
  let iscale = fr(nmax / fr(max - min));
  let scale = fr(1 / iscale);
  let bestErr = 0;
  for (let i = 0; i < n; i++) {
    const l = clamp(nearestInt(fr(iscale * fr(x[at + i] - min))), 0, nmax);
    L[lAt + i] = l;
    const diff = fr(fr(fr(scale * l) + min) - x[at + i]);
    bestErr = fr(bestErr + fr(w[i] * fr(diff * diff)));
  }
  const aux = new Uint8Array(n);
  for (let k = 0; k <= 20; k++) {
    // min is the best fit's so far: later grids span from it (as llama.cpp's loop does)
    iscale = fr(fr(fr(-1 + fr(TENTH * k)) + nmax) / fr(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(nearestInt(fr(iscale * fr(x[at + i] - min))), 0, nmax);
      aux[i] = l;
      const wl = fr(w[i] * l);
      sumL = fr(sumL + wl);
      sumL2 = fr(sumL2 + fr(wl * l));
      sumXL = fr(sumXL + fr(wl * x[at + i]));
    }
    const D = fr(fr(sumW * sumL2) - fr(sumL * sumL));
    if (!(D > 0)) continue;
    let thisScale = fr(fr(fr(sumW * sumXL) - fr(sumX * sumL)) / D);
    let thisMin = fr(fr(fr(sumL2 * sumX) - fr(sumL * sumXL)) / D);
    if (thisMin > 0) {
      thisMin = 0;
      thisScale = fr(sumXL / sumL2);
    }
    let err = 0;
    for (let i = 0; i < n; i++) {
      const diff = fr(fr(fr(thisScale * aux[i]) + thisMin) - x[at + i]);
      err = fr(err + fr(w[i] * fr(diff * diff)));
    }
    if (err < bestErr) {
      L.set(aux, lAt);
      bestErr = err;
      scale = thisScale;
      min = thisMin;
    }
  }
  return [scale, -min];
}

/** Packs sub-block j's 6-bit scale and min into the 12 bytes at `at` (get_scale_min_k4 inverted). */
function packScaleMin(out: Uint8Array, at: number, j: number, sc: number, m: number): void {
  if (j < 4) {
    out[at + j] = sc;
    out[at + j + 4] = m;
    return;
  }
  out[at + j + 4] = (sc & 0x0f) | ((m & 0x0f) << 4);
  out[at + j - 4] |= (sc >> 4) << 6;
  out[at + j] |= (m >> 4) << 6;
}

function quantizeBlockQ4_K(x: Float32Array, at: number, out: Uint8Array, o: number): void {
  const L = new Uint8Array(QK_K);
  const weights = new Float32Array(32);
  const scales = new Float32Array(8);
  const mins = new Float32Array(8);
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 8; j++) {
    const sub = at + 32 * j;
    let sumX2 = 0;
    for (let l = 0; l < 32; l++) sumX2 = fr(sumX2 + fr(x[sub + l] * x[sub + l]));
    const rms = fr(Math.sqrt(fr(sumX2 / 32)));
    for (let l = 0; l < 32; l++) weights[l] = fr(rms + Math.abs(x[sub + l]));
    [scales[j], mins[j]] = fitScaleMin(x, sub, 32, 15, weights, L, 32 * j);
    if (scales[j] > maxScale) maxScale = scales[j];
    if (mins[j] > maxMin) maxMin = mins[j];
  }
  const invScale = maxScale > 0 ? fr(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? fr(63 / maxMin) : 0;
  const sc = new Uint8Array(8);
  const m = new Uint8Array(8);
  for (let j = 0; j < 8; j++) {
    sc[j] = Math.min(63, nearestInt(fr(invScale * scales[j])) & 0xff);
    m[j] = Math.min(63, nearestInt(fr(invMin * mins[j])) & 0xff);
    packScaleMin(out, o + 4, j, sc[j], m[j]);
  }
  writeF16(out, o, fr(maxScale / 63));
  writeF16(out, o + 2, fr(maxMin / 63));
  const d = readF16(out, o);
  const dmin = readF16(out, o + 2);
  for (let j = 0; j < 8; j++) {
    const dj = fr(d * sc[j]);
    if (dj === 0) continue; // the search's codes stay
    const mj = fr(dmin * m[j]);
    for (let l = 0; l < 32; l++)
      L[32 * j + l] = clamp(nearestInt(fr(fr(x[at + 32 * j + l] + mj) / dj)), 0, 15);
  }
  packQ4_KCodes(L, 0, out, o);
}

/** The nibbles of one Q4_K super-block (bytes 16..144) from its 256 codes at L[at]. */
export function packQ4_KCodes(L: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let half = 0; half < 4; half++)
    for (let l = 0; l < 32; l++)
      out[o + 16 + 32 * half + l] = L[at + 64 * half + l] | (L[at + 64 * half + 32 + l] << 4);
}

/** x (a multiple of 256 values) -> Q4_K super-blocks of 144 bytes. */
export function quantizeQ4_K(x: Float32Array): Uint8Array {
  checkLength(x.length, 'Q4_K');
  const out = new Uint8Array((x.length / QK_K) * Q4_K_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) quantizeBlockQ4_K(x, b * QK_K, out, b * Q4_K_BLOCK_BYTES);
  return out;
}

/** Sums of w x l and w l^2 (w = x^2) for the codes of x[at, at + n) on the grid iscale. */
function gridSums(x: Float32Array, at: number, n: number, nmax: number, iscale: number): [number, number] {
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const v = x[at + i];
    const l = clamp(nearestInt(fr(iscale * v)), -nmax, nmax - 1);
    const w = fr(v * v);
    sumLX = fr(sumLX + fr(fr(w * v) * l));
    sumL2 = fr(sumL2 + fr(fr(w * l) * l));
  }
  return [sumLX, sumL2];
}

function gridCodes(
  x: Float32Array,
  at: number,
  n: number,
  nmax: number,
  iscale: number,
  L: Uint8Array,
  lAt: number,
) {
  for (let i = 0; i < n; i++) L[lAt + i] = nmax + clamp(nearestInt(fr(iscale * x[at + i])), -nmax, nmax - 1);
}

/**
 * make_qx_quants with rmse_type 1: codes L (offset by nmax) and the scale of x ~ scale (L - nmax),
 * the best of the grids (nmax + 0.1 k) / amax, k = -9..9, by the x^2-weighted fit.
 */
function fitScale(x: Float32Array, at: number, n: number, nmax: number, L: Uint8Array, lAt: number): number {
  let amax = 0;
  let max = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[at + i]);
    if (ax > amax) {
      amax = ax;
      max = x[at + i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0, lAt, lAt + n);
    return 0;
  }
  let iscale = fr(-nmax / max);
  gridCodes(x, at, n, nmax, iscale, L, lAt);
  let [sumLX, sumL2] = gridSums(x, at, n, nmax, iscale);
  let scale = sumL2 ? fr(sumLX / sumL2) : 0;
  let best = fr(scale * sumLX);
  for (let k = -9; k <= 9; k++) {
    if (k === 0) continue;
    iscale = fr(-fr(nmax + fr(TENTH * k)) / max);
    [sumLX, sumL2] = gridSums(x, at, n, nmax, iscale);
    if (sumL2 > 0 && fr(sumLX * sumLX) > fr(best * sumL2)) {
      gridCodes(x, at, n, nmax, iscale, L, lAt);
      scale = fr(sumLX / sumL2);
      best = fr(scale * sumLX);
    }
  }
  return scale;
}

function quantizeBlockQ6_K(x: Float32Array, at: number, out: Uint8Array, o: number): void {
  const L = new Uint8Array(QK_K);
  const scales = new Float32Array(16);
  let maxScale = 0;
  let maxAbsScale = 0;
  for (let g = 0; g < 16; g++) {
    scales[g] = fitScale(x, at + 16 * g, 16, 32, L, 16 * g);
    if (Math.abs(scales[g]) > maxAbsScale) {
      maxAbsScale = Math.abs(scales[g]);
      maxScale = scales[g];
    }
  }
  if (maxAbsScale < GROUP_MAX_EPS) return; // all zeros, d = 0
  const iscale = fr(-128 / maxScale);
  writeF16(out, o + 208, fr(1 / iscale));
  const d = readF16(out, o + 208);
  for (let g = 0; g < 16; g++) {
    const sc = Math.min(127, nearestInt(fr(iscale * scales[g])));
    out[o + 192 + g] = sc & 0xff;
    const dg = fr(d * sc);
    if (dg === 0) continue; // the search's codes stay
    for (let l = 0; l < 16; l++) L[16 * g + l] = clamp(nearestInt(fr(x[at + 16 * g + l] / dg)), -32, 31) + 32;
  }
  packQ6_KCodes(L, 0, out, o);
}

/** The low nibbles and high bit pairs of one Q6_K super-block (bytes 0..192) from its 256 codes at L[at]. */
export function packQ6_KCodes(L: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let half = 0; half < 2; half++) {
    const ql = o + 64 * half;
    const qh = o + 128 + 32 * half;
    const q = (k: number, l: number) => L[at + 128 * half + 32 * k + l];
    for (let l = 0; l < 32; l++) {
      out[ql + l] = (q(0, l) & 0x0f) | ((q(2, l) & 0x0f) << 4);
      out[ql + 32 + l] = (q(1, l) & 0x0f) | ((q(3, l) & 0x0f) << 4);
      out[qh + l] = (q(0, l) >> 4) | ((q(1, l) >> 4) << 2) | ((q(2, l) >> 4) << 4) | ((q(3, l) >> 4) << 6);
    }
  }
}

/** x (a multiple of 256 values) -> Q6_K super-blocks of 210 bytes. */
export function quantizeQ6_K(x: Float32Array): Uint8Array {
  checkLength(x.length, 'Q6_K');
  const out = new Uint8Array((x.length / QK_K) * Q6_K_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) quantizeBlockQ6_K(x, b * QK_K, out, b * Q6_K_BLOCK_BYTES);
  return out;
}
