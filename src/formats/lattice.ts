/**
 * The search llama.cpp's grid ("lattice") quantizers share: IQ3_XXS, IQ3_S (formats/iq3.ts) and IQ2_XXS,
 * IQ2_XS, IQ2_S (formats/iq2.ts). Sources read (public): ggml/src/ggml-quants.c of ggml-org/llama.cpp
 * as node-llama-cpp 3.22.1 bundles it (iq3xs_init_impl, iq2xs_init_impl, iq3_find_best_neighbour,
 * iq2_find_best_neighbour, quantize_row_iq3_xxs_impl, quantize_row_iq3_s_impl, quantize_row_iq2_xxs_impl,
 * quantize_row_iq2_xs_impl, quantize_row_iq2_s_impl).
 *
 * A grid is a fixed set of points, each the levels (0..maxLevel) of a group of 4 or 8 magnitudes, a
 * value being (2 level + 1) times the sub-block's scale; signs are stored apart. Per sub-block (16 or 32
 * values): weights x^2 (IQ2_S: sigma2 / 4 + x^2; with an importance matrix: importance *
 * sqrt(sigma2 + x^2), sigma2 = 2 mean x^2 of the super-block, IQ2_XXS / IQ2_XS: the mean); for trial
 * scales max / (2 maxLevel + 1 + step t) (IQ2_XXS: max from make_qp_quants' scale), each group rounds
 * to its nearest levels or, off the grid, takes the candidate (the grid points at the `distances`
 * smallest squared distances, precomputed) nearest by weighted distance; the best weighted
 * least-squares fit wins, and is refitted after re-picking the groups that were off the grid (IQ3_S:
 * all groups; IQ2_XXS: all groups, always). The super-block's d is the largest sub-block scale / 31 and
 * each sub-block keeps a 4-bit ls, scale ~ d (2 ls + 1). All arithmetic is float32 in C's order
 * (Math.fround after each operation).
 */
import type { Importance } from './ggml.ts';
import { fitQuantizedScales, nearestInt } from './ggml-search.ts';

const QK_K = 256;
const fr = Math.fround;

/** A grid of points and how its off-grid combinations find candidates (IQ1_S's too: formats/iq1.ts). */
export interface GridSpec {
  /** the grid points: `levelBits` bits per level, level i of point p at bits levelBits * i */
  points: Uint16Array;
  group: 4 | 8;
  levelBits: 2 | 3;
  maxLevel: number;
  /** candidates of a combination off the grid: the points at this many smallest distances */
  distances: number;
}

/** What a type's quantizer does; see the file comment. */
export interface LatticeSpec extends GridSpec {
  subBlock: 16 | 32;
  /** trial scales for t = -steps..steps, step t * stepSize */
  steps: number;
  stepSize: number;
  /** largest magnitude below which a sub-block is skipped (0: only an all-zero one) */
  skipBelow: number;
  /** IQ3_XXS: the signs of each 8 have even parity (the least important value's sign flips) */
  paritySigns: boolean;
  /**
   * the refit after the search: of the groups off the grid where there are any ('off-grid'), of every
   * group where any is off the grid and none counts as on it before the search (IQ3_S), of every group
   * whenever the scale is positive (IQ2_XXS)
   */
  refit: 'off-grid' | 'all-if-off-grid' | 'all';
  /** sigma2 = sigmaScale * mean x^2 of the super-block */
  sigmaScale: 1 | 2;
  /**
   * weights without an importance matrix: x^2, (IQ2_S) sigma2 / 4 + x^2, or (IQ2_XXS / IQ2_XS, which
   * llama.cpp quantizes only with one) importance 1 for every column
   */
  plainWeights: 'x2' | 'sigma' | 'unit';
  /** the max the trial scales divide: the largest magnitude, or (IQ2_XXS) make_qp_quants' scale times maxLevel + 1 */
  trialMax: 'max' | 'qp';
  /** the stored d is d times this */
  fudge: number;
  /** the dequantizer's value of code c = level + 8 when negative: +-its grid byte for the level */
  codeLevels: Int8Array;
}

/** The 16 signed code levels of a dequantizer grid's bytes per level (code = level + 8 when negative). */
export function signedCodeLevels(bytes: readonly number[]): Int8Array {
  return Int8Array.from({ length: 16 }, (_, c) => (c < 8 ? 1 : -1) * (bytes[c % 8] ?? 0));
}

/**
 * A grid's tables: each point's levels (`levels[group * j + i]`), the grid index of each level
 * combination (-1 off the grid), and the candidates of those off it that the quantizer can reach
 * (levels <= maxLevel): list[start[key], start[key + 1]).
 */
export interface Grid {
  points: Uint16Array;
  levels: Uint8Array;
  index: Int32Array;
  start: Int32Array;
  list: Uint16Array;
}

const levelOf = (spec: GridSpec, key: number, i: number) =>
  (key >> (spec.levelBits * i)) & ((1 << spec.levelBits) - 1);

/** The points at the `distances` smallest squared distances (units of 2l + 1), nearest first, by index on ties. */
function neighboursOf(spec: GridSpec, key: number, levels: Uint8Array): number[] {
  const { group: n, points } = spec;
  const keyLevels = Int32Array.from({ length: n }, (_, i) => levelOf(spec, key, i));
  const d2 = new Int32Array(points.length);
  const top = (1 << spec.levelBits) - 1;
  const present = new Uint8Array(n * (2 * top) ** 2 + 1);
  for (let j = 0; j < points.length; j++) {
    let d = 0;
    for (let i = 0; i < n; i++) d += (2 * (levels[n * j + i] - keyLevels[i])) ** 2;
    d2[j] = d;
    present[d] = 1;
  }
  const out: number[] = [];
  for (let d = 0, taken = 0; d < present.length && taken < spec.distances; d++) {
    if (!present[d]) continue;
    taken++;
    for (let j = 0; j < points.length; j++) if (d2[j] === d) out.push(j);
  }
  return out;
}

const grids = new Map<GridSpec, Grid>();

/** The spec's grid tables, built on first use (the WebGPU search kernel uploads IQ3's). */
export function gridOf(spec: GridSpec): Readonly<Grid> {
  let g = grids.get(spec);
  if (g) return g;
  const { points, group } = spec;
  const levels = Uint8Array.from({ length: group * points.length }, (_, k) =>
    levelOf(spec, points[Math.floor(k / group)], k % group),
  );
  const keys = 1 << (spec.levelBits * group);
  const index = new Int32Array(keys).fill(-1);
  points.forEach((p, j) => {
    index[p] = j;
  });
  const reachable = (key: number) => {
    for (let i = 0; i < group; i++) if (levelOf(spec, key, i) > spec.maxLevel) return false;
    return true;
  };
  const lists = Array.from(index, (j, key) =>
    j < 0 && reachable(key) ? neighboursOf(spec, key, levels) : [],
  );
  const start = new Int32Array(keys + 1);
  lists.forEach((l, key) => {
    start[key + 1] = start[key] + l.length;
  });
  const list = new Uint16Array(start[keys]);
  lists.forEach((l, key) => {
    list.set(l, start[key]);
  });
  g = { points, levels, index, start, list };
  grids.set(spec, g);
  return g;
}

/** bestNeighbour's scale * (2l + 1) per level l, and value i's weighted distance to level l at 16 i + l (filled per call) */
const scaledLevel = new Float64Array(16);
const levelTerms = new Float64Array(8 * 16);

/** The weighted squared distance waux (scaledLevel[l] - x)^2 in float32, as llama.cpp rounds it. */
function levelTerm(l: number, x: number, waux: number): number {
  const diff = fr(scaledLevel[l] - x);
  return fr(fr(waux * diff) * diff);
}

/** iq*_find_best_neighbour: the candidate nearest to x / scale by weighted distance; its levels into L. */
function bestNeighbour(
  spec: LatticeSpec,
  g: Grid,
  key: number,
  xval: Float32Array,
  waux: Float32Array,
  at: number,
  scale: number,
  L: Int8Array,
): number {
  const { levels: lv, list } = g;
  const n = spec.group;
  const [first, end] = [g.start[key], g.start[key + 1]];
  for (let l = 0; l <= spec.maxLevel; l++) scaledLevel[l] = fr(scale * (2 * l + 1));
  // every value's term at every level, rounded as the candidate loop would: worth it where the
  // candidates outnumber the levels (IQ2's 3 levels, less often IQ3's 8)
  const table = end - first > spec.maxLevel + 1;
  for (let i = 0; i < n && table; i++)
    for (let l = 0; l <= spec.maxLevel; l++)
      levelTerms[16 * i + l] = levelTerm(l, xval[at + i], waux[at + i]);
  let best = Number.POSITIVE_INFINITY;
  let pick = -1;
  for (let c = first; c < end; c++) {
    const p = n * list[c];
    let d2 = 0;
    // the terms are >= 0, so the running sum only grows: once it reaches best this candidate loses
    for (let i = 0; i < n && d2 < best; i++) {
      const l = lv[p + i];
      d2 = fr(d2 + (table ? levelTerms[16 * i + l] : levelTerm(l, xval[at + i], waux[at + i])));
    }
    if (d2 < best) {
      best = d2;
      pick = list[c];
    }
  }
  for (let i = 0; i < n; i++) L[at + i] = lv[n * pick + i];
  return pick;
}

/** The levels of group k nearest to xval / scale (id = 1 / scale), into L, as a grid key. */
function nearestKey(spec: LatticeSpec, xval: Float32Array, k: number, id: number, L: Int8Array): number {
  let key = 0;
  for (let i = 0; i < spec.group; i++) {
    const at = spec.group * k + i;
    const l = Math.max(0, Math.min(spec.maxLevel, nearestInt(fr(0.5 * fr(fr(id * xval[at]) - 1)))));
    L[at] = l;
    key |= l << (spec.levelBits * i);
  }
  return key;
}

/** The group's levels at this key, or its best neighbour's (writing them into L either way); the grid index. */
function onGrid(
  spec: LatticeSpec,
  g: Grid,
  key: number,
  xval: Float32Array,
  waux: Float32Array,
  k: number,
  scale: number,
  L: Int8Array,
): number {
  const j = g.index[key];
  return j >= 0 ? j : bestNeighbour(spec, g, key, xval, waux, spec.group * k, scale, L);
}

/** sum w x q and sum w q^2 with q = 2L + 1. */
function fitSums(xval: Float32Array, w: Float32Array, L: Int8Array): [number, number] {
  let sumqx = 0;
  let sumq2 = 0;
  for (let i = 0; i < L.length; i++) {
    const q = 2 * L[i] + 1;
    sumqx = fr(sumqx + fr(fr(w[i] * xval[i]) * q));
    sumq2 = fr(sumq2 + fr(fr(w[i] * q) * q));
  }
  return [sumqx, sumq2];
}

/** One sub-block's result: its scale, the grid index of each group, and a sign mask per 8 values. */
export interface SubBlock {
  scale: number;
  grid: Uint16Array;
  signs: Uint8Array;
}

/** Magnitudes into xval and sign masks per 8 (with parity: the least important value flipped, 7 bits kept). */
function splitSigns(spec: LatticeSpec, x: Float32Array, at: number, w: Float32Array, xval: Float32Array) {
  const signs = new Uint8Array(spec.subBlock / 8);
  for (let k = 0; k < signs.length; k++) {
    let s = 0;
    let flips = 0;
    for (let i = 0; i < 8; i++) {
      const xi = x[at + 8 * k + i];
      xval[8 * k + i] = Math.abs(xi);
      if (xi < 0) {
        s |= 1 << i;
        flips++;
      }
    }
    if (spec.paritySigns && flips % 2) {
      let imin = 0;
      let min = fr(fr(w[8 * k] * x[at + 8 * k]) * x[at + 8 * k]);
      for (let i = 1; i < 8; i++) {
        const ax = fr(fr(w[8 * k + i] * x[at + 8 * k + i]) * x[at + 8 * k + i]);
        if (ax < min) [min, imin] = [ax, i];
      }
      xval[8 * k + imin] = -xval[8 * k + imin];
      s ^= 1 << imin;
    }
    signs[k] = spec.paritySigns ? s & 127 : s;
  }
  return signs;
}

/** The quantizer's search over the sub-block at x[at] with weights w; undefined where it skips it. */
function searchSubBlock(
  spec: LatticeSpec,
  x: Float32Array,
  at: number,
  w: Float32Array,
): SubBlock | undefined {
  const g = gridOf(spec);
  const n = spec.subBlock;
  const groups = n / spec.group;
  const waux = w.map((wi) => fr(Math.sqrt(wi)));
  const xval = new Float32Array(n);
  const signs = splitSigns(spec, x, at, w, xval);
  let max = xval[0];
  for (let i = 1; i < n; i++) max = Math.max(max, xval[i]);
  if (spec.skipBelow ? max < spec.skipBelow : !max) return undefined;
  const L = new Int8Array(n);
  const Laux = new Int8Array(n);
  const grid = new Uint8Array(groups).fill(spec.refit === 'off-grid' ? 1 : 0);
  const gridAux = new Uint8Array(groups);
  const top = 2 * spec.maxLevel + 1;
  let best = 0;
  let scale = fr(max / top);
  if (spec.trialMax === 'qp') {
    scale = fitQuantizedScales(xval, spec.maxLevel + 2, w, new Uint8Array(n));
    max = fr(scale * (spec.maxLevel + 1));
    if (!(max > 0)) return undefined;
  }
  for (let t = -spec.steps; t <= spec.steps; t++) {
    const id = fr(fr(top + fr(t * fr(spec.stepSize))) / max);
    const trial = fr(1 / id);
    for (let k = 0; k < groups; k++) {
      const key = nearestKey(spec, xval, k, id, Laux);
      gridAux[k] = g.index[key] >= 0 ? 1 : 0;
      if (!gridAux[k]) bestNeighbour(spec, g, key, xval, waux, spec.group * k, trial, Laux);
    }
    const [sumqx, sumq2] = fitSums(xval, w, Laux);
    if (sumq2 > 0 && fr(sumqx * sumqx) > fr(best * sumq2)) {
      scale = fr(sumqx / sumq2);
      best = fr(scale * sumqx);
      L.set(Laux);
      grid.set(gridAux);
    }
  }
  if ((spec.refit === 'all' || grid.includes(0)) && scale > 0)
    scale = refit(spec, g, xval, w, waux, L, grid, scale);
  if (scale < 0) {
    scale = -scale;
    for (let k = 0; k < signs.length; k++) signs[k] = ~signs[k] & (spec.paritySigns ? 127 : 255);
  }
  const indices = Uint16Array.from({ length: groups }, (_, k) => {
    let key = 0;
    for (let i = 0; i < spec.group; i++) key |= L[spec.group * k + i] << (spec.levelBits * i);
    return g.index[key];
  });
  return { scale, grid: indices, signs };
}

/** Re-picks the groups off the grid (or every group, as spec.refit says) at the found scale and refits it. */
function refit(
  spec: LatticeSpec,
  g: Grid,
  xval: Float32Array,
  w: Float32Array,
  waux: Float32Array,
  L: Int8Array,
  grid: Uint8Array,
  scale: number,
): number {
  const id = fr(1 / scale);
  const tmp = new Int8Array(L.length);
  for (let k = 0; k < grid.length; k++) {
    if (spec.refit === 'off-grid' && grid[k]) continue;
    const j = onGrid(spec, g, nearestKey(spec, xval, k, id, tmp), xval, waux, k, scale, tmp);
    for (let i = 0; i < spec.group; i++) L[spec.group * k + i] = g.levels[spec.group * j + i];
  }
  const [sumqx, sumq2] = fitSums(xval, w, L);
  return sumq2 > 0 ? fr(sumqx / sumq2) : scale;
}

/**
 * The weights of n values at x[at] in a super-block with the given sigma2: importance * sqrt(sigma2 +
 * x^2), or without importance as `plain` says (see LatticeSpec; IQ1_S and IQ1_M use 'unit' and 'x2').
 */
export function valueWeights(
  x: Float32Array,
  at: number,
  n: number,
  sigma2: number,
  qw: Float32Array | undefined,
  plain: LatticeSpec['plainWeights'],
) {
  const w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x2 = fr(x[at + i] * x[at + i]);
    if (qw) w[i] = fr(qw[i] * fr(Math.sqrt(fr(sigma2 + x2))));
    else if (plain === 'unit') w[i] = fr(Math.sqrt(fr(sigma2 + x2)));
    else w[i] = plain === 'x2' ? x2 : fr(fr(0.25 * sigma2) + x2);
  }
  return w;
}

/** sigma2 = sigmaScale * mean x^2 of the super-block at x[at]. */
export function superBlockSigma2(x: Float32Array, at: number, sigmaScale: 1 | 2): number {
  let sum = 0;
  for (let i = 0; i < QK_K; i++) sum = fr(sum + fr(x[at + i] * x[at + i]));
  return fr(fr(sigmaScale * sum) / QK_K);
}

/** The importance of super-block b's 256 columns (rows repeat the importance row). */
export function superBlockImportance(imatrix: Importance | undefined, b: number) {
  const c = imatrix ? (b * QK_K) % imatrix.cols : 0;
  return imatrix?.importance.subarray(c, c + QK_K);
}

/** Every sub-block of the super-block at x[at] (importance qw of its 256 columns), searched. */
function searchSuperBlock(
  spec: LatticeSpec,
  x: Float32Array,
  at: number,
  qw: Float32Array | undefined,
): (SubBlock | undefined)[] {
  const sigma2 = superBlockSigma2(x, at, spec.sigmaScale);
  const n = spec.subBlock;
  return Array.from({ length: QK_K / n }, (_, ib) => {
    const w = valueWeights(x, at + ib * n, n, sigma2, qw?.subarray(ib * n, (ib + 1) * n), spec.plainWeights);
    return searchSubBlock(spec, x, at + ib * n, w);
  });
}

/**
 * d (before the type's fudge factor) and each sub-block's 4-bit scale ls, nearest to scale = d (2 ls + 1);
 * undefined when every scale is 0.
 */
export function superScales(subs: (SubBlock | undefined)[]): { d: number; ls: number[] } | undefined {
  let maxScale = 0;
  for (const s of subs) if (s) maxScale = Math.max(maxScale, s.scale);
  if (!maxScale) return undefined;
  const d = fr(maxScale / 31);
  const id = fr(1 / d);
  const ls = subs.map((s) =>
    Math.max(0, Math.min(15, nearestInt(fr(0.5 * fr(fr(id * (s?.scale ?? 0)) - 1))))),
  );
  return { d, ls };
}

/** Checks rows of a multiple of 256 (and an importance row of their length), naming the type. */
export function checkSuperBlockRows(x: Float32Array, imatrix: Importance | undefined, what: string): void {
  const cols = imatrix?.cols ?? x.length;
  if (x.length % QK_K !== 0 || cols % QK_K !== 0 || x.length % cols !== 0)
    throw new RangeError(`${what} super-blocks of 256 do not divide ${x.length} values in rows of ${cols}`);
  if (imatrix && imatrix.importance.length !== cols)
    throw new RangeError(`importance: ${imatrix.importance.length} values for rows of ${cols}`);
}

/** Super-block b of x (rows of a multiple of 256), searched with its columns' importance. */
export function searchSuperBlockAt(spec: LatticeSpec, x: Float32Array, b: number, imatrix?: Importance) {
  return searchSuperBlock(spec, x, b * QK_K, superBlockImportance(imatrix, b));
}

/** Codes (level, +8 when negative) of grid point j's values at codes[at]; bit i of `signs` negates value i. */
export function pointCodes(spec: LatticeSpec, j: number, signs: number, codes: Uint8Array, at: number): void {
  const lv = gridOf(spec).levels;
  for (let i = 0; i < spec.group; i++) codes[at + i] = lv[spec.group * j + i] | (((signs >> i) & 1) << 3);
}

/** The grid index of the group of codes at codes[at] (their levels must be a grid point). */
export function pointOf(spec: LatticeSpec, codes: Uint8Array, at: number, what: string): number {
  let key = 0;
  for (let i = 0; i < spec.group; i++) key |= (codes[at + i] & 7) << (spec.levelBits * i);
  const j = gridOf(spec).index[key] ?? -1;
  if (j < 0) throw new RangeError(`${what}: the levels of the codes at ${at} are not a grid point`);
  return j;
}

/** The sign bits of the 8 codes at codes[at]. */
export function signBits(codes: Uint8Array, at: number): number {
  let s = 0;
  for (let i = 0; i < 8; i++) s |= ((codes[at + i] >> 3) & 1) << i;
  return s;
}

/** The 7 stored sign bits plus their parity as the 8th, as ksigns_iq2xs expands them. */
export function withParity(signs7: number): number {
  let bits = signs7;
  bits ^= bits >> 4;
  bits ^= bits >> 2;
  bits ^= bits >> 1;
  return signs7 | ((bits & 1) << 7);
}

export const readU16 = (src: Uint8Array, at: number) => src[at] | (src[at + 1] << 8);

export function writeU16(out: Uint8Array, at: number, v: number): void {
  out[at] = v & 255;
  out[at + 1] = v >> 8;
}

export function readU32(src: Uint8Array, at: number): number {
  return (src[at] | (src[at + 1] << 8) | (src[at + 2] << 16) | (src[at + 3] << 24)) >>> 0;
}

export function writeU32(out: Uint8Array, at: number, v: number): void {
  for (let b = 0; b < 4; b++) out[at + b] = (v >>> (8 * b)) & 0xff;
}
