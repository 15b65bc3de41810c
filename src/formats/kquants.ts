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

/**
 * Each sub-block's (scale, min) fit and its codes into L, with the weights of the path: rms + |x|
 * (reference), or importance * sqrt(2 mean x^2 of the super-block + x^2) (importance matrix).
 */
function fitSubBlocks(x: Float32Array, at: number, L: Uint8Array, kind: ScaleMinKind, imp?: BlockImportance) {
  const scales = new Float32Array(8);
  const mins = new Float32Array(8);
  const weightSums = new Float32Array(8);
  const weights = new Float32Array(32);
  let sigma2 = 0;
  if (imp) {
    let sumX2 = 0;
    for (let l = 0; l < QK_K; l++) sumX2 = fr(sumX2 + fr(x[at + l] * x[at + l]));
    sigma2 = fr(fr(2 * sumX2) / QK_K);
  }
  for (let j = 0; j < 8; j++) {
    const sub = at + 32 * j;
    if (imp) {
      for (let l = 0; l < 32; l++)
        weights[l] = fr(
          imp.qw[imp.qwAt + 32 * j + l] * fr(Math.sqrt(fr(sigma2 + fr(x[sub + l] * x[sub + l])))),
        );
    } else {
      let sumX2 = 0;
      for (let l = 0; l < 32; l++) sumX2 = fr(sumX2 + fr(x[sub + l] * x[sub + l]));
      const rms = fr(Math.sqrt(fr(sumX2 / 32)));
      for (let l = 0; l < 32; l++) weights[l] = fr(rms + Math.abs(x[sub + l]));
    }
    for (let l = 0; l < 32; l++) weightSums[j] = fr(weightSums[j] + weights[l]);
    const slice = { x, at: sub, n: 32, w: weights, wAt: 0 };
    [scales[j], mins[j]] = fitScaleMin(slice, kind.nmax, imp ? QKX3_GRID : kind.grid, L, 32 * j);
  }
  return { scales, mins, weightSums };
}

/** Reference path: 6-bit codes of the sub-block scales (and mins) against their largest, d = max / 63. */
function sixBitScales(v: Float32Array, codes: Uint8Array): number {
  let max = 0;
  for (const x of v) if (x > max) max = x;
  const inv = max > 0 ? fr(63 / max) : 0;
  for (let j = 0; j < v.length; j++) codes[j] = Math.min(63, nearestInt(fr(inv * v[j])) & 0xff);
  return fr(max / 63);
}

/** Q4_K or Q5_K: the code range, the reference path's grid, and how a super-block's codes are stored. */
interface ScaleMinKind {
  nmax: number;
  grid: Grid;
  packCodes(L: Uint8Array, at: number, out: Uint8Array, o: number): void;
}

/** One Q4_K / Q5_K super-block: header (d, dmin, 6-bit scales and mins), then the codes refitted to them. */
function quantizeScaleMinBlock(kind: ScaleMinKind): BlockQuantizer {
  return (x, at, out, o, imp) => {
    const L = new Uint8Array(QK_K);
    const { scales, mins, weightSums } = fitSubBlocks(x, at, L, kind, imp);
    const sc = new Uint8Array(8);
    const m = new Uint8Array(8);
    const dBlock = imp ? fitQuantizedScales(scales, 63, weightSums, sc) : sixBitScales(scales, sc);
    const mBlock = imp ? fitQuantizedScales(mins, 63, weightSums, m) : sixBitScales(mins, m);
    for (let j = 0; j < 8; j++) packScaleMin(out, o + 4, j, sc[j], m[j]);
    writeF16(out, o, dBlock);
    writeF16(out, o + 2, mBlock);
    const d = readF16(out, o);
    const dmin = readF16(out, o + 2);
    for (let j = 0; j < 8; j++) {
      const dj = fr(d * sc[j]);
      if (dj === 0) continue; // the search's codes stay
      const mj = fr(dmin * m[j]);
      for (let l = 0; l < 32; l++)
        L[32 * j + l] = clamp(nearestInt(fr(fr(x[at + 32 * j + l] + mj) / dj)), 0, kind.nmax);
    }
    kind.packCodes(L, 0, out, o);
  };
}

const quantizeBlockQ4_K = quantizeScaleMinBlock({ nmax: 15, grid: QKX2_GRID_Q4_K, packCodes: packQ4_KCodes });

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

const quantizeBlockQ5_K = quantizeScaleMinBlock({ nmax: 31, grid: QKX2_GRID_Q5_K, packCodes: packQ5_KCodes });

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
