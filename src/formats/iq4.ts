/**
 * llama.cpp's 4-bit non-linear types IQ4_NL and IQ4_XS, byte for byte as ggml-quants.c writes them
 * (quantize_iq4_nl / quantize_iq4_xs, which llama-quantize calls, with and without an importance
 * matrix) and reads them (dequantize_row_iq4_nl / _iq4_xs). Sources read (public): ggml/src/
 * ggml-quants.c (quantize_row_iq4_nl_impl, best_index_int8, nearest_int) and ggml-common.h
 * (kvalues_iq4nl, block_iq4_nl, block_iq4_xs) of ggml-org/llama.cpp as node-llama-cpp 3.22.1 bundles it.
 *
 * Each value is a scale times one of 16 fixed levels (IQ4_LEVELS, denser near zero than a uniform
 * grid); a code is the level's index.
 * - IQ4_NL (18 bytes per 32 values): fp16 d, then 16 bytes of nibbles (code j low, j + 16 high);
 *   x = d * level[q].
 * - IQ4_XS (136 bytes per 256): fp16 d, a u16 of the high 2 bits and 4 bytes of the low 4 bits of
 *   eight 6-bit sub-block scales ls, then 8 x 16 bytes of nibbles; x = (d * (ls - 32)) * level[q].
 * The quantizer, per block of 32: weights x^2 (with an importance matrix: importance *
 * sqrt(2 mean x^2 of the block + x^2)); the least-squares scale of the codes nearest to x / d for
 * d = max / -127, then for the 15 reciprocals (k - 127) / max, k = -7..7, keeping the best weighted fit.
 * IQ4_NL stores that scale and re-picks the codes with it; IQ4_XS stores d = (scale of largest
 * magnitude) / -32, rounds each sub-block's scale to a 6-bit multiple of d and re-picks its codes.
 * All arithmetic is float32 in C's order (Math.fround after each operation).
 */
import {
  blockCount,
  GGML_BLOCK,
  type GgmlGroupCodes,
  groupCodes,
  type Importance,
  packNibbles,
  readF16,
  unpackNibbles,
  writeF16,
} from './ggml.ts';
import { GROUP_MAX_EPS, nearestInt } from './ggml-search.ts';

/** kvalues_iq4nl: the 16 levels of IQ4_NL and IQ4_XS, in increasing order. */
export const IQ4_LEVELS = Int8Array.from([
  -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
]);
export const IQ4_NL_BLOCK_BYTES = GGML_BLOCK.IQ4_NL.bytes;
export const IQ4_XS_BLOCK_BYTES = GGML_BLOCK.IQ4_XS.bytes;
const SUB = 32;
const NTRY = 7;
const fr = Math.fround;

/**
 * For each integer k in [-127, 112], the last level <= k: the levels are integers, so for x strictly
 * between the end levels this is the lower neighbour best_index_int8's bisection finds for x in [k, k+1).
 */
const LOWER_LEVEL = Int8Array.from({ length: 240 }, (_, i) => IQ4_LEVELS.findLastIndex((v) => v <= i - 127));

/** best_index_int8: the level nearest to x, the upper one on a tie. */
export function nearestLevel(x: number): number {
  const v = IQ4_LEVELS;
  if (x <= v[0]) return 0;
  if (x >= v[15]) return 15;
  const lo = LOWER_LEVEL[Math.floor(x) + 127];
  return fr(x - v[lo]) < fr(v[lo + 1] - x) ? lo : lo + 1;
}

/** sum w q x and sum w q^2 over the block for codes nearest to x * id. */
function weightedSums(x: Float32Array, at: number, w: Float32Array, id: number): [number, number] {
  let sumqx = 0;
  let sumq2 = 0;
  for (let j = 0; j < SUB; j++) {
    const q = IQ4_LEVELS[nearestLevel(fr(id * x[at + j]))];
    const wq = fr(w[j] * q);
    sumqx = fr(sumqx + fr(wq * x[at + j]));
    sumq2 = fr(sumq2 + fr(wq * q));
  }
  return [sumqx, sumq2];
}

/** The weighted least-squares scale of a block of 32 (0 when its largest magnitude is below GROUP_MAX_EPS). */
function blockScale(x: Float32Array, at: number, w: Float32Array): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < SUB; j++) {
    const ax = Math.abs(x[at + j]);
    if (ax > amax) [amax, max] = [ax, x[at + j]];
  }
  if (amax < GROUP_MAX_EPS) return 0;
  let [sumqx, sumq2] = weightedSums(x, at, w, fr(1 / fr(-max / IQ4_LEVELS[0])));
  let d = sumq2 > 0 ? fr(sumqx / sumq2) : 0;
  let best = fr(d * sumqx);
  for (let t = -NTRY; t <= NTRY; t++) {
    [sumqx, sumq2] = weightedSums(x, at, w, fr((t + IQ4_LEVELS[0]) / max));
    if (sumq2 > 0 && fr(sumqx * sumqx) > fr(best * sumq2)) {
      d = fr(sumqx / sumq2);
      best = fr(d * sumqx);
    }
  }
  return d;
}

/** The quantizer's weights for the block of 32 at `at` of a super-block with sigma2 = 2 mean x^2. */
function blockWeights(
  x: Float32Array,
  at: number,
  sigma2: number,
  qw: Float32Array | undefined,
  w: Float32Array,
) {
  for (let j = 0; j < SUB; j++) {
    const x2 = fr(x[at + j] * x[at + j]);
    w[j] = qw ? fr(qw[j] * fr(Math.sqrt(fr(sigma2 + x2)))) : x2;
  }
}

/** The scale of each block of 32 in the super-block x[at, at + size). */
function subBlockScales(
  x: Float32Array,
  at: number,
  size: number,
  qw: Float32Array | undefined,
): Float32Array {
  let sum = 0;
  for (let j = 0; j < size; j++) sum = fr(sum + fr(x[at + j] * x[at + j]));
  const sigma2 = fr(sum * fr(2 / size));
  const w = new Float32Array(SUB);
  const scales = new Float32Array(size / SUB);
  for (let ib = 0; ib < size / SUB; ib++) {
    blockWeights(x, at + ib * SUB, sigma2, qw?.subarray(ib * SUB, (ib + 1) * SUB), w);
    scales[ib] = blockScale(x, at + ib * SUB, w);
  }
  return scales;
}

/** The codes of x[at, at + 32) nearest to x * id, packed as nibbles at out[o]. */
function packCodes(x: Float32Array, at: number, id: number, out: Uint8Array, o: number): void {
  const codes = new Uint8Array(SUB);
  for (let j = 0; j < SUB; j++) codes[j] = nearestLevel(fr(id * x[at + j]));
  packNibbles(codes, 0, out, o);
}

function checkRows(x: Float32Array, block: number, imatrix?: Importance): number {
  const cols = imatrix?.cols ?? x.length;
  if (x.length % block !== 0 || cols % block !== 0 || x.length % cols !== 0)
    throw new RangeError(`IQ4 blocks of ${block} do not divide ${x.length} values in rows of ${cols}`);
  if (imatrix && imatrix.importance.length !== cols)
    throw new RangeError(`importance: ${imatrix.importance.length} values for rows of ${cols}`);
  return cols;
}

/** The importance of the block starting at value `at` (rows of `cols`), if any. */
function blockImportance(imatrix: Importance | undefined, at: number, size: number) {
  const c = imatrix ? at % imatrix.cols : 0;
  return imatrix?.importance.subarray(c, c + size);
}

/** x (rows of a multiple of 32) -> IQ4_NL blocks, as llama.cpp's quantize_iq4_nl (imatrix: its quant_weights). */
export function quantizeIq4Nl(x: Float32Array, imatrix?: Importance): Uint8Array {
  checkRows(x, SUB, imatrix);
  const out = new Uint8Array((x.length / SUB) * IQ4_NL_BLOCK_BYTES);
  for (let b = 0; b < x.length / SUB; b++) {
    const o = b * IQ4_NL_BLOCK_BYTES;
    const [d] = subBlockScales(x, b * SUB, SUB, blockImportance(imatrix, b * SUB, SUB));
    writeF16(out, o, d);
    packCodes(x, b * SUB, d !== 0 ? fr(1 / d) : 0, out, o + 2);
  }
  return out;
}

/** x (rows of a multiple of 256) -> IQ4_XS blocks, as llama.cpp's quantize_iq4_xs (imatrix: its quant_weights). */
export function quantizeIq4Xs(x: Float32Array, imatrix?: Importance): Uint8Array {
  const size = 256;
  checkRows(x, size, imatrix);
  const out = new Uint8Array((x.length / size) * IQ4_XS_BLOCK_BYTES);
  for (let b = 0; b < x.length / size; b++) {
    const [at, o] = [b * size, b * IQ4_XS_BLOCK_BYTES];
    const scales = subBlockScales(x, at, size, blockImportance(imatrix, at, size));
    let maxScale = 0;
    for (const s of scales) if (Math.abs(s) > Math.abs(maxScale)) maxScale = s;
    const d = fr(-maxScale / 32);
    const id = d !== 0 ? fr(1 / d) : 0;
    writeF16(out, o, d);
    let high = 0;
    for (let ib = 0; ib < size / SUB; ib++) {
      const l = Math.max(-32, Math.min(31, nearestInt(fr(id * scales[ib]))));
      const dl = fr(d * l);
      packCodes(x, at + ib * SUB, dl !== 0 ? fr(1 / dl) : 0, out, o + 8 + 16 * ib);
      out[o + 4 + (ib >> 1)] |= ((l + 32) & 0x0f) << (4 * (ib % 2));
      high |= ((l + 32) >> 4) << (2 * ib);
    }
    out[o + 2] = high & 0xff;
    out[o + 3] = high >>> 8;
  }
  return out;
}

/** Codes and one scale per 32 on the IQ4 levels, for n values. */
function levelCodes(n: number): GgmlGroupCodes {
  return { ...groupCodes(n, SUB, 4, false), levels: IQ4_LEVELS };
}

/** IQ4_NL blocks as codes and per-block scale d: x = d * level[q]. */
export function unpackIq4Nl(
  bytes: Uint8Array,
  n = (bytes.length / IQ4_NL_BLOCK_BYTES) * SUB,
): GgmlGroupCodes {
  const u = levelCodes(n);
  for (let b = 0; b < blockCount(bytes, 'IQ4_NL', n); b++) {
    u.scales[b] = readF16(bytes, b * IQ4_NL_BLOCK_BYTES);
    unpackNibbles(bytes, b * IQ4_NL_BLOCK_BYTES + 2, u.codes, b * SUB);
  }
  return u;
}

/** IQ4_XS blocks as codes and per-sub-block scale d (ls - 32): x = scale * level[q]. */
export function unpackIq4Xs(
  bytes: Uint8Array,
  n = (bytes.length / IQ4_XS_BLOCK_BYTES) * 256,
): GgmlGroupCodes {
  const u = levelCodes(n);
  for (let b = 0; b < blockCount(bytes, 'IQ4_XS', n); b++) {
    const o = b * IQ4_XS_BLOCK_BYTES;
    const d = readF16(bytes, o);
    const high = bytes[o + 2] | (bytes[o + 3] << 8);
    for (let ib = 0; ib < 8; ib++) {
      const ls = ((bytes[o + 4 + (ib >> 1)] >> (4 * (ib % 2))) & 0x0f) | (((high >> (2 * ib)) & 3) << 4);
      u.scales[b * 8 + ib] = fr(d * (ls - 32));
      unpackNibbles(bytes, o + 8 + 16 * ib, u.codes, b * 256 + ib * SUB);
    }
  }
  return u;
}
