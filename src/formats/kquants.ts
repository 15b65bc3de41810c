/**
 * llama.cpp's K-quant writers, Q4_K and Q6_K, as its quantizers choose the blocks: without an
 * importance matrix as quantize_row_q4_K_ref / _q6_K_ref (what `llama-quantize` writes for Q4_K_M),
 * with one as quantize_row_q4_K_impl / _q6_K_impl (`llama-quantize --imatrix`). Reimplemented from
 * ggml/src/ggml-quants.c (ggml-org/llama.cpp, read for the search grids and the operation order);
 * test/fixtures/kquants.json and kquants-imatrix.json hold that code's own output, which these match
 * byte for byte. Every product and sum is float32 in C's order (Math.fround after
 * each step), with no fused multiply-adds: the output of a llama.cpp build without FMA contraction.
 * Readers of both types are in formats/ggml.ts (unpackQ4_K, unpackQ6_K).
 *
 * Q4_K: super-blocks of 256 = 8 sub-blocks of 32, x = (d * sc) q - (dmin * m), q in 0..15, with
 * 6-bit sc and m per sub-block and fp16 d, dmin per super-block. Each sub-block's scale and min
 * come from a weighted least-squares search over 21 candidate grids (weights rms + |x|); with an
 * importance matrix over 37 grids (weights importance * sqrt(2 mean x^2 + x^2)), and the 6-bit codes
 * of the scales and mins from their own weighted search (make_qp_quants) instead of max / 63.
 * Q6_K: 16 groups of 16, x = (d * sc) (q - 32), q in 0..63, int8 sc per group, fp16 d; each
 * group's scale from a search over 18 grids around amax / 32 weighted by x^2 (or by the importance).
 */
import { type Importance, readF16, writeF16 } from './ggml.ts';
import {
  clamp,
  fitQuantizedScales,
  fitScale,
  fitScaleByCodeMoves,
  fitScaleMin,
  GROUP_MAX_EPS,
  type Grid,
  nearestInt,
  QKX2_GRID_Q4_K,
  QKX2_GRID_Q5_K,
  QKX3_GRID,
} from './ggml-search.ts';

export const QK_K = 256;
export const Q4_K_BLOCK_BYTES = 144;
export const Q5_K_BLOCK_BYTES = 176;
export const Q6_K_BLOCK_BYTES = 210;
export const Q2_K_BLOCK_BYTES = 84;
export const Q3_K_BLOCK_BYTES = 110;

const fr = Math.fround;

function checkLength(n: number, what: string): void {
  if (n % QK_K !== 0) throw new RangeError(`${what} needs a multiple of ${QK_K} values, got ${n}`);
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

/** The importance of a super-block's values: qw[qwAt, qwAt + 256), or none (the reference path). */
interface BlockImportance {
  qw: Float32Array;
  qwAt: number;
}

/** Q2_K, Q4_K or Q5_K: how a super-block of scale-and-min sub-blocks is fitted and stored. */
interface ScaleMinKind {
  /** values per sub-block (16 or 32) */
  sub: number;
  /** largest code */
  nmax: number;
  /** largest code of the sub-block scales and mins (15 or 63) */
  scaleMax: number;
  /** the reference path's grid, and whether it minimises the weighted |error| (Q2_K) */
  grid: Grid;
  mad: boolean;
  /** the reference path's weights of a sub-block: |x| (Q2_K), or its rms + |x| (Q4_K, Q5_K) */
  rmsInWeights: boolean;
  /** the importance path's sigma^2: this times the super-block's mean x^2 (1 for Q2_K, else 2) */
  sigmaScale: number;
  /** byte offset of the fp16 d (dmin follows) */
  dAt: number;
  packScales(out: Uint8Array, o: number, sc: Uint8Array, m: Uint8Array): void;
  packCodes(L: Uint8Array, at: number, out: Uint8Array, o: number): void;
}

/** The reference path's weights of the sub-block x[sub, sub + n): |x|, plus the sub-block's rms if asked. */
function referenceWeights(x: Float32Array, sub: number, weights: Float32Array, withRms: boolean): void {
  let rms = 0;
  if (withRms) {
    let sumX2 = 0;
    for (let l = 0; l < weights.length; l++) sumX2 = fr(sumX2 + fr(x[sub + l] * x[sub + l]));
    rms = fr(Math.sqrt(fr(sumX2 / weights.length)));
  }
  for (let l = 0; l < weights.length; l++)
    weights[l] = withRms ? fr(rms + Math.abs(x[sub + l])) : Math.abs(x[sub + l]);
}

/**
 * Each sub-block's (scale, min) fit and its codes into L, with the weights of the path (reference, or
 * importance * sqrt(sigma^2 + x^2) with the importance matrix).
 */
function fitSubBlocks(x: Float32Array, at: number, L: Uint8Array, kind: ScaleMinKind, imp?: BlockImportance) {
  const count = QK_K / kind.sub;
  const scales = new Float32Array(count);
  const mins = new Float32Array(count);
  const weightSums = new Float32Array(count);
  const weights = new Float32Array(kind.sub);
  let sigma2 = 0;
  if (imp) {
    let sumX2 = 0;
    for (let l = 0; l < QK_K; l++) sumX2 = fr(sumX2 + fr(x[at + l] * x[at + l]));
    sigma2 = fr(fr(kind.sigmaScale * sumX2) / QK_K);
  }
  for (let j = 0; j < count; j++) {
    const sub = at + kind.sub * j;
    if (imp) {
      const qwAt = imp.qwAt + kind.sub * j;
      for (let l = 0; l < kind.sub; l++)
        weights[l] = fr(imp.qw[qwAt + l] * fr(Math.sqrt(fr(sigma2 + fr(x[sub + l] * x[sub + l])))));
    } else referenceWeights(x, sub, weights, kind.rmsInWeights);
    for (let l = 0; l < kind.sub; l++) weightSums[j] = fr(weightSums[j] + weights[l]);
    const slice = { x, at: sub, n: kind.sub, w: weights, wAt: 0 };
    const grid = imp ? QKX3_GRID : kind.grid;
    [scales[j], mins[j]] = fitScaleMin(slice, kind.nmax, grid, L, kind.sub * j, !imp && kind.mad);
  }
  return { scales, mins, weightSums };
}

/** Reference path: codes 0..nmax of the sub-block scales (or mins) against their largest, d = max / nmax. */
function scaleCodesToMax(v: Float32Array, nmax: number, codes: Uint8Array): number {
  let max = 0;
  for (const x of v) if (x > max) max = x;
  const inv = max > 0 ? fr(nmax / max) : 0;
  for (let j = 0; j < v.length; j++) codes[j] = Math.min(nmax, nearestInt(fr(inv * v[j])) & 0xff);
  return fr(max / nmax);
}

/** One Q2_K / Q4_K / Q5_K super-block: header (d, dmin, sub-block scales and mins), then the codes refitted to them. */
function quantizeScaleMinBlock(kind: ScaleMinKind): BlockQuantizer {
  const count = QK_K / kind.sub;
  return (x, at, out, o, imp) => {
    const L = new Uint8Array(QK_K);
    const { scales, mins, weightSums } = fitSubBlocks(x, at, L, kind, imp);
    const sc = new Uint8Array(count);
    const m = new Uint8Array(count);
    const fit = (v: Float32Array, codes: Uint8Array) =>
      imp
        ? fitQuantizedScales(v, kind.scaleMax, weightSums, codes)
        : scaleCodesToMax(v, kind.scaleMax, codes);
    const dBlock = fit(scales, sc);
    const mBlock = fit(mins, m);
    kind.packScales(out, o, sc, m);
    writeF16(out, o + kind.dAt, dBlock);
    writeF16(out, o + kind.dAt + 2, mBlock);
    const d = readF16(out, o + kind.dAt);
    const dmin = readF16(out, o + kind.dAt + 2);
    for (let j = 0; j < count; j++) {
      const dj = fr(d * sc[j]);
      if (dj === 0) continue; // the search's codes stay
      const mj = fr(dmin * m[j]);
      for (let l = 0; l < kind.sub; l++) {
        const i = kind.sub * j + l;
        L[i] = clamp(nearestInt(fr(fr(x[at + i] + mj) / dj)), 0, kind.nmax);
      }
    }
    kind.packCodes(L, 0, out, o);
  };
}

/** Q4_K's and Q5_K's 12 bytes of 6-bit scales and mins (after d and dmin). */
function packScaleMins(out: Uint8Array, o: number, sc: Uint8Array, m: Uint8Array): void {
  for (let j = 0; j < 8; j++) packScaleMin(out, o + 4, j, sc[j], m[j]);
}

const K4_OR_5 = { sub: 32, scaleMax: 63, mad: false, rmsInWeights: true, sigmaScale: 2, dAt: 0 } as const;

const quantizeBlockQ4_K = quantizeScaleMinBlock({
  ...K4_OR_5,
  nmax: 15,
  grid: QKX2_GRID_Q4_K,
  packScales: packScaleMins,
  packCodes: packQ4_KCodes,
});

/** The nibbles of one Q4_K super-block (bytes 16..144) from its 256 codes at L[at]. */
export function packQ4_KCodes(L: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let half = 0; half < 4; half++)
    for (let l = 0; l < 32; l++)
      out[o + 16 + 32 * half + l] = L[at + 64 * half + l] | (L[at + 64 * half + 32 + l] << 4);
}

/** x (a multiple of 256 values) -> Q4_K super-blocks of 144 bytes. */
export function quantizeQ4_K(x: Float32Array, imatrix?: Importance): Uint8Array {
  return quantizeSuperBlocks(x, 'Q4_K', Q4_K_BLOCK_BYTES, quantizeBlockQ4_K, imatrix);
}

/** The fifth bits (bytes 16..48) and nibbles (48..176) of one Q5_K super-block from its 256 codes at L[at]. */
export function packQ5_KCodes(L: Uint8Array, at: number, out: Uint8Array, o: number): void {
  out.fill(0, o + 16, o + 48);
  for (let half = 0; half < 4; half++)
    for (let l = 0; l < 32; l++) {
      const [lo, hi] = [L[at + 64 * half + l], L[at + 64 * half + 32 + l]];
      out[o + 48 + 32 * half + l] = (lo & 0x0f) | ((hi & 0x0f) << 4);
      out[o + 16 + l] |= ((lo >> 4) << (2 * half)) | ((hi >> 4) << (2 * half + 1));
    }
}

const quantizeBlockQ5_K = quantizeScaleMinBlock({
  ...K4_OR_5,
  nmax: 31,
  grid: QKX2_GRID_Q5_K,
  packScales: packScaleMins,
  packCodes: packQ5_KCodes,
});

/** x (a multiple of 256 values) -> Q5_K super-blocks of 176 bytes. */
export function quantizeQ5_K(x: Float32Array, imatrix?: Importance): Uint8Array {
  return quantizeSuperBlocks(x, 'Q5_K', Q5_K_BLOCK_BYTES, quantizeBlockQ5_K, imatrix);
}

type BlockQuantizer = (
  x: Float32Array,
  at: number,
  out: Uint8Array,
  o: number,
  imp?: BlockImportance,
) => void;

/** Every super-block of x through `quantizeBlock`, with its slice of the importance row if one is given. */
function quantizeSuperBlocks(
  x: Float32Array,
  what: string,
  blockBytes: number,
  quantizeBlock: BlockQuantizer,
  imatrix?: Importance,
): Uint8Array {
  checkLength(x.length, what);
  const out = new Uint8Array((x.length / QK_K) * blockBytes);
  for (let b = 0; b < x.length / QK_K; b++)
    quantizeBlock(x, b * QK_K, out, b * blockBytes, blockImportance(imatrix, b));
  return out;
}

/** Super-block b's importance: the row's (the same importance row serves every row). */
function blockImportance(imatrix: Importance | undefined, b: number): BlockImportance | undefined {
  if (!imatrix) return undefined;
  if (imatrix.cols % QK_K !== 0 || imatrix.importance.length !== imatrix.cols)
    throw new RangeError(`importance: ${imatrix.importance.length} values for rows of ${imatrix.cols}`);
  return { qw: imatrix.importance, qwAt: (b * QK_K) % imatrix.cols };
}

const quantizeBlockQ6_K: BlockQuantizer = (x, at, out, o, imp) => {
  const L = new Uint8Array(QK_K);
  const scales = new Float32Array(16);
  let maxScale = 0;
  let maxAbsScale = 0;
  for (let g = 0; g < 16; g++) {
    const slice = { x, at: at + 16 * g, n: 16 };
    scales[g] = fitScale(slice, 32, L, 16 * g, imp?.qw, (imp?.qwAt ?? 0) + 16 * g);
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
};

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
export function quantizeQ6_K(x: Float32Array, imatrix?: Importance): Uint8Array {
  return quantizeSuperBlocks(x, 'Q6_K', Q6_K_BLOCK_BYTES, quantizeBlockQ6_K, imatrix);
}

/**
 * Two bits of each code into the 64 bytes at qsAt: per half of 128 values, byte l holds values l, l + 32,
 * l + 64 and l + 96, lowest bits first (Q2_K's codes, Q3_K's low bits).
 */
function packTwoBitPlanes(L: Uint8Array, at: number, out: Uint8Array, qsAt: number): void {
  for (let half = 0; half < 2; half++)
    for (let l = 0; l < 32; l++) {
      const q = (k: number) => L[at + 128 * half + 32 * k + l] & 3;
      out[qsAt + 32 * half + l] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
    }
}

/** The codes (bytes 16..80) of one Q2_K super-block from its 256 codes at L[at]. */
export function packQ2_KCodes(L: Uint8Array, at: number, out: Uint8Array, o: number): void {
  packTwoBitPlanes(L, at, out, o + 16);
}

/**
 * Q2_K: 16 sub-blocks of 16, x = (d sc) q - (dmin m), q in 0..3, 4-bit sc and m per sub-block (one byte,
 * m in the high nibble) before the codes, fp16 d and dmin last. The reference path fits each sub-block
 * over make_qkx2_quants' grids minimising sum |x| |error|; the importance path as Q4_K's.
 */
const quantizeBlockQ2_K = quantizeScaleMinBlock({
  sub: 16,
  nmax: 3,
  scaleMax: 15,
  grid: QKX2_GRID_Q5_K,
  mad: true,
  rmsInWeights: false,
  sigmaScale: 1,
  dAt: 80,
  packScales: (out, o, sc, m) => {
    for (let j = 0; j < 16; j++) out[o + j] = sc[j] | (m[j] << 4);
  },
  packCodes: packQ2_KCodes,
});

/** x (a multiple of 256 values) -> Q2_K super-blocks of 84 bytes. */
export function quantizeQ2_K(x: Float32Array, imatrix?: Importance): Uint8Array {
  return quantizeSuperBlocks(x, 'Q2_K', Q2_K_BLOCK_BYTES, quantizeBlockQ2_K, imatrix);
}

/** The high bits (bytes 0..32: bit k of byte l for value 32 k + l) and low bits (32..96) of one Q3_K super-block. */
export function packQ3_KCodes(L: Uint8Array, at: number, out: Uint8Array, o: number): void {
  out.fill(0, o, o + 32);
  for (let i = 0; i < QK_K; i++) if (L[at + i] > 3) out[o + (i & 31)] |= 1 << (i >> 5);
  packTwoBitPlanes(L, at, out, o + 32);
}

/** Q3_K's 16 six-bit scale codes (the scale + 32) into its 12 scale bytes at `at`. */
function packQ3_KScales(out: Uint8Array, at: number, codes: Uint8Array): void {
  out.fill(0, at, at + 12);
  for (let j = 0; j < 16; j++) {
    const l = codes[j];
    if (j < 8) out[at + j] = l & 0x0f;
    else out[at + j - 8] |= (l & 0x0f) << 4;
    out[at + 8 + (j % 4)] |= (l >> 4) << (2 * (j >> 2));
  }
}

/** Reference path: each group's make_q3_quants scale, coded against the largest in magnitude as d (code - 32). */
function q3_KReferenceScales(x: Float32Array, at: number, L: Uint8Array, codes: Uint8Array): number {
  const scales = new Float32Array(16);
  let maxScale = 0;
  let amax = 0;
  for (let j = 0; j < 16; j++) {
    scales[j] = fitScaleByCodeMoves({ x, at: at + 16 * j, n: 16 }, 4, L, 16 * j);
    if (Math.abs(scales[j]) > amax) {
      amax = Math.abs(scales[j]);
      maxScale = scales[j];
    }
  }
  codes.fill(0);
  if (maxScale === 0) return 0;
  const iscale = fr(-32 / maxScale);
  for (let j = 0; j < 16; j++) codes[j] = clamp(nearestInt(fr(iscale * scales[j])), -32, 31) + 32;
  return fr(1 / iscale);
}

/** Importance path: each group's make_qx_quants scale, then make_qx_quants over the scales (weights their sums). */
function q3_KImportanceScales(
  x: Float32Array,
  at: number,
  L: Uint8Array,
  codes: Uint8Array,
  imp: BlockImportance,
) {
  let sumX2 = 0;
  for (let l = 0; l < QK_K; l++) sumX2 = fr(sumX2 + fr(x[at + l] * x[at + l]));
  const sigma2 = fr(fr(2 * sumX2) / QK_K);
  const scales = new Float32Array(16);
  const weightSums = new Float32Array(16);
  const weights = new Float32Array(16);
  for (let j = 0; j < 16; j++) {
    const g = at + 16 * j;
    for (let l = 0; l < 16; l++) {
      weights[l] = fr(imp.qw[imp.qwAt + 16 * j + l] * fr(Math.sqrt(fr(sigma2 + fr(x[g + l] * x[g + l])))));
      weightSums[j] = fr(weightSums[j] + weights[l]);
    }
    scales[j] = fitScale({ x, at: g, n: 16 }, 4, L, 16 * j, weights, 0);
  }
  return fitScale({ x: scales, at: 0, n: 16 }, 32, codes, 0, weightSums, 0);
}

/**
 * Q3_K: 16 groups of 16, x = (d (sc - 32)) (q - 4), q in 0..7 (its high bit in the hmask bytes), 6-bit
 * sc per group, fp16 d last. The reference path fits each group by make_q3_quants; the importance path
 * by make_qx_quants under importance * sqrt(2 mean x^2 + x^2).
 */
const quantizeBlockQ3_K: BlockQuantizer = (x, at, out, o, imp) => {
  const L = new Uint8Array(QK_K);
  const codes = new Uint8Array(16);
  const dBlock = imp ? q3_KImportanceScales(x, at, L, codes, imp) : q3_KReferenceScales(x, at, L, codes);
  packQ3_KScales(out, o + 96, codes);
  writeF16(out, o + 108, dBlock);
  const d = readF16(out, o + 108);
  for (let j = 0; j < 16; j++) {
    const dj = fr(d * (codes[j] - 32));
    if (dj === 0) continue; // the search's codes stay
    for (let l = 0; l < 16; l++) L[16 * j + l] = clamp(nearestInt(fr(x[at + 16 * j + l] / dj)), -4, 3) + 4;
  }
  packQ3_KCodes(L, 0, out, o);
};

/** x (a multiple of 256 values) -> Q3_K super-blocks of 110 bytes. */
export function quantizeQ3_K(x: Float32Array, imatrix?: Importance): Uint8Array {
  return quantizeSuperBlocks(x, 'Q3_K', Q3_K_BLOCK_BYTES, quantizeBlockQ3_K, imatrix);
}
