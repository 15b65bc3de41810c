/**
 * The scale searches of llama.cpp's quantizers (ggml/src/ggml-quants.c, read for the grids and the
 * operation order): make_qkx2/qkx3_quants (scale and min of a sub-block), make_qx_quants (a symmetric
 * scale), make_qp_quants (the 6-bit super-block scales of Q4_K's importance path). Every product and
 * sum is float32 in C's order (Math.fround after each step), without fused multiply-adds.
 */
const fr = Math.fround;
/** GROUP_MAX_EPS of ggml-quants.c: a group below this magnitude quantizes to zeros. */
export const GROUP_MAX_EPS = fr(1e-15);
const TENTH = fr(0.1);

/** ggml's nearest_int: float32 v to the nearest integer, ties to even (for |v| < 2^22). */
export function nearestInt(v: number): number {
  return fr(v + 12582912) - 12582912;
}

export const clamp = (v: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, v));

/** A slice x[at, at + n) and its weights w[wAt, wAt + n). */
export interface Weighted {
  x: Float32Array;
  at: number;
  n: number;
  w: Float32Array;
  wAt: number;
}

/** The candidate grids of fitScaleMin: iscale = (nmax + rmin + rdelta k) / (max - min), k = 0..steps. */
export interface Grid {
  rmin: number;
  rdelta: number;
  steps: number;
}

/**
 * make_qkx2_quants' grids without an importance matrix (Q4_K's and Q5_K's), make_qkx3_quants' with one
 * (Q4_K, Q5_K, Q5_1).
 */
export const QKX2_GRID_Q4_K: Grid = { rmin: -1, rdelta: TENTH, steps: 20 };
export const QKX2_GRID_Q5_K: Grid = { rmin: -0.5, rdelta: TENTH, steps: 15 };
export const QKX3_GRID: Grid = { rmin: fr(-0.9), rdelta: fr(0.05), steps: 36 };

/** Scratch for fitScaleMin (slices are at most a super-block): candidate codes and x - min. */
const AUX = new Uint8Array(256);
const SHIFTED = new Float32Array(256);

function shiftBy(s: Weighted, min: number): Float32Array {
  for (let i = 0; i < s.n; i++) SHIFTED[i] = fr(s.x[s.at + i] - min);
  return SHIFTED;
}

/** sum w diff^2, or sum w |diff| (`mad`), of x against scale codes + min. */
function weightedError(
  s: Weighted,
  scale: number,
  min: number,
  codes: Uint8Array,
  cAt: number,
  mad: boolean,
) {
  const { x, at, n, w, wAt } = s;
  let err = 0;
  for (let i = 0; i < n; i++) {
    const diff = fr(fr(fr(scale * codes[cAt + i]) + min) - x[at + i]);
    err = fr(err + fr(w[wAt + i] * (mad ? Math.abs(diff) : fr(diff * diff))));
  }
  return err;
}

/**
 * make_qkx2_quants / make_qkx3_quants: codes L in 0..nmax and (scale, min) with x ~ scale L - min,
 * min >= 0, minimising sum w (scale L - min - x)^2 over the grid (sum w |scale L - min - x| with `mad`,
 * Q2_K's reference path). Each improvement moves min, and later grids span from the new one, as
 * llama.cpp's loop does.
 */
export function fitScaleMin(
  s: Weighted,
  nmax: number,
  grid: Grid,
  L: Uint8Array,
  lAt: number,
  mad = false,
): [scale: number, min: number] {
  const { x, at, n, w, wAt } = s;
  if (n > AUX.length) throw new RangeError(`fitScaleMin: slices of at most ${AUX.length} values`);
  let min = x[at];
  let max = x[at];
  let sumW = w[wAt];
  let sumX = fr(sumW * x[at]);
  for (let i = 1; i < n; i++) {
    const v = x[at + i];
    if (v < min) min = v;
    if (v > max) max = v;
    sumW = fr(sumW + w[wAt + i]);
    sumX = fr(sumX + fr(w[wAt + i] * v));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0, lAt, lAt + n);
    return [0, -min];
  }
  let iscale = fr(nmax / fr(max - min));
  let scale = fr(1 / iscale);
  let shifted = shiftBy(s, min);
  for (let i = 0; i < n; i++) {
    const l = nearestInt(fr(iscale * shifted[i]));
    L[lAt + i] = clamp(l, 0, nmax);
  }
  let bestErr = weightedError(s, scale, min, L, lAt, mad);
  for (let k = 0; k <= grid.steps; k++) {
    iscale = fr(fr(fr(grid.rmin + fr(grid.rdelta * k)) + nmax) / fr(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(nearestInt(fr(iscale * shifted[i])), 0, nmax);
      AUX[i] = l;
      const wl = fr(w[wAt + i] * l);
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
    const err = weightedError(s, thisScale, thisMin, AUX, 0, mad);
    if (err < bestErr) {
      L.set(AUX.subarray(0, n), lAt);
      bestErr = err;
      scale = thisScale;
      if (thisMin !== min) shifted = shiftBy(s, thisMin);
      min = thisMin;
    }
  }
  return [scale, -min];
}

/** Sums of w x l and w l^2 for the codes of the slice on the grid iscale, into GRID_SUMS. */
const GRID_SUMS = { lx: 0, l2: 0 };
function gridSums(s: Omit<Weighted, 'w' | 'wAt'>, nmax: number, iscale: number, qw?: Float32Array, qwAt = 0) {
  const { x, at, n } = s;
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const v = x[at + i];
    const l = clamp(nearestInt(fr(iscale * v)), -nmax, nmax - 1);
    // the weight: the importance given, else x^2 (make_qx_quants' rmse_type 1)
    const w = qw ? qw[qwAt + i] : fr(v * v);
    sumLX = fr(sumLX + fr(fr(w * v) * l));
    sumL2 = fr(sumL2 + fr(fr(w * l) * l));
  }
  GRID_SUMS.lx = sumLX;
  GRID_SUMS.l2 = sumL2;
}

function gridCodes(s: Omit<Weighted, 'w' | 'wAt'>, nmax: number, iscale: number, L: Uint8Array, lAt: number) {
  for (let i = 0; i < s.n; i++)
    L[lAt + i] = nmax + clamp(nearestInt(fr(iscale * s.x[s.at + i])), -nmax, nmax - 1);
}

/**
 * make_qx_quants with rmse_type 1: codes L (offset by nmax) and the scale of x ~ scale (L - nmax), the
 * best of the grids (nmax + 0.1 k) / max, k = -9..9, by the fit weighted by the importance qw given
 * from qw[qwAt], or by x^2.
 */
export function fitScale(
  s: Omit<Weighted, 'w' | 'wAt'>,
  nmax: number,
  L: Uint8Array,
  lAt: number,
  qw?: Float32Array,
  qwAt = 0,
): number {
  let amax = 0;
  let max = 0;
  for (let i = 0; i < s.n; i++) {
    const ax = Math.abs(s.x[s.at + i]);
    if (ax > amax) {
      amax = ax;
      max = s.x[s.at + i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0, lAt, lAt + s.n);
    return 0;
  }
  let iscale = fr(-nmax / max);
  gridCodes(s, nmax, iscale, L, lAt);
  gridSums(s, nmax, iscale, qw, qwAt);
  let scale = GRID_SUMS.l2 ? fr(GRID_SUMS.lx / GRID_SUMS.l2) : 0;
  let best = fr(scale * GRID_SUMS.lx);
  for (let k = -9; k <= 9; k++) {
    if (k === 0) continue;
    iscale = fr(-fr(nmax + fr(TENTH * k)) / max);
    gridSums(s, nmax, iscale, qw, qwAt);
    const { lx: sumLX, l2: sumL2 } = GRID_SUMS;
    if (sumL2 > 0 && fr(sumLX * sumLX) > fr(best * sumL2)) {
      gridCodes(s, nmax, iscale, L, lAt);
      scale = fr(sumLX / sumL2);
      best = fr(scale * sumLX);
    }
  }
  return scale;
}

/**
 * make_q3_quants with do_rmse (Q3_K's reference path): codes L (offset by nmax) and the scale of
 * x ~ scale (L - nmax), starting from nmax / (value of largest magnitude), then up to five passes moving
 * single codes while the fit weighted by x^2 improves.
 */
export function fitScaleByCodeMoves(
  s: Omit<Weighted, 'w' | 'wAt'>,
  nmax: number,
  L: Uint8Array,
  lAt: number,
): number {
  const { x, at, n } = s;
  let amax = 0;
  let max = 0;
  for (let i = 0; i < n; i++) {
    if (Math.abs(x[at + i]) > amax) {
      amax = Math.abs(x[at + i]);
      max = x[at + i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0, lAt, lAt + n);
    return 0;
  }
  const iscale = fr(-nmax / max);
  const l = new Int8Array(n);
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const v = x[at + i];
    l[i] = clamp(nearestInt(fr(iscale * v)), -nmax, nmax - 1);
    const w = fr(v * v);
    sumLX = fr(sumLX + fr(fr(w * v) * l[i]));
    sumL2 = fr(sumL2 + fr(fr(w * l[i]) * l[i]));
  }
  for (let pass = 0; pass < 5; pass++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const v = x[at + i];
      const w = fr(v * v);
      let slx = fr(sumLX - fr(fr(w * v) * l[i]));
      if (!(slx > 0)) continue;
      let sl2 = fr(sumL2 - fr(fr(w * l[i]) * l[i]));
      const moved = clamp(nearestInt(fr(fr(v * sl2) / slx)), -nmax, nmax - 1);
      if (moved === l[i]) continue;
      slx = fr(slx + fr(fr(w * v) * moved));
      sl2 = fr(sl2 + fr(fr(w * moved) * moved));
      if (sl2 > 0 && fr(fr(slx * slx) * sumL2) > fr(fr(sumLX * sumLX) * sl2)) {
        l[i] = moved;
        sumLX = slx;
        sumL2 = sl2;
        changed++;
      }
    }
    if (!changed) break;
  }
  for (let i = 0; i < n; i++) L[lAt + i] = l[i] + nmax;
  return sumL2 > 0 ? fr(sumLX / sumL2) : 0;
}

/** sum w (x - scale l)^2 over x[0..n) with l = min(nmax, nearest(iscale x)) (or the codes given). */
function quantizedError(
  x: Float32Array,
  w: Float32Array,
  scale: number,
  code: (i: number) => number,
): number {
  let err = 0;
  for (let i = 0; i < x.length; i++) {
    const diff = fr(x[i] - fr(scale * code(i)));
    err = fr(err + fr(fr(w[i] * diff) * diff));
  }
  return err;
}

/**
 * make_qp_quants: codes L in 0..nmax and the scale of non-negative x (Q4_K's sub-block scales and
 * mins) under weights w: the best of the grids (nmax + 0.1 k) / max, k = -4..4, then up to five
 * passes moving single codes while the weighted fit improves.
 */
export function fitQuantizedScales(x: Float32Array, nmax: number, w: Float32Array, L: Uint8Array): number {
  let max = 0;
  for (const v of x) if (v > max) max = v;
  if (max < GROUP_MAX_EPS) {
    L.fill(0);
    return 0;
  }
  let iscale = fr(nmax / max);
  for (let i = 0; i < x.length; i++) L[i] = nearestInt(fr(iscale * x[i]));
  let best = quantizedError(x, w, fr(1 / iscale), (i) => L[i]);
  for (let k = -4; k <= 4; k++) {
    if (k === 0) continue;
    const candidate = fr(fr(fr(TENTH * k) + nmax) / max);
    const code = (i: number) => Math.min(nmax, nearestInt(fr(candidate * x[i])));
    const err = quantizedError(x, w, fr(1 / candidate), code);
    if (err < best) {
      best = err;
      iscale = candidate;
    }
  }
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < x.length; i++) {
    // C stores l in a uint8_t but sums the int: a negative x (IQ2_XXS's parity flip) sums l < 0
    const l = Math.min(nmax, nearestInt(fr(iscale * x[i])));
    L[i] = l;
    sumLX = fr(sumLX + fr(fr(w[i] * x[i]) * l));
    sumL2 = fr(sumL2 + fr(fr(w[i] * l) * l));
  }
  for (let pass = 0; pass < 5; pass++) {
    let changed = 0;
    for (let i = 0; i < x.length; i++) {
      let slx = fr(sumLX - fr(fr(w[i] * x[i]) * L[i]));
      let sl2 = fr(sumL2 - fr(fr(w[i] * L[i]) * L[i]));
      if (!(slx > 0 && sl2 > 0)) continue;
      const l = Math.min(nmax, nearestInt(fr(fr(x[i] * sl2) / slx)));
      if (l === L[i]) continue;
      slx = fr(slx + fr(fr(w[i] * x[i]) * l));
      sl2 = fr(sl2 + fr(fr(w[i] * l) * l));
      if (fr(fr(slx * slx) * sumL2) > fr(fr(sumLX * sumLX) * sl2)) {
        L[i] = l;
        sumLX = slx;
        sumL2 = sl2;
        changed++;
      }
    }
    if (!changed) break;
  }
  return sumL2 > 0 ? fr(sumLX / sumL2) : 0;
}
