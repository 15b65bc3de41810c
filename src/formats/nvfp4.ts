/**
 * NVFP4: FP4 E2M1 elements in blocks of 16 along the row, one FP8 E4M3 scale per block and one
 * f32 scale for the whole tensor (NVIDIA Blackwell; TensorRT-Model-Optimizer's weight recipe).
 *
 * Exact behaviour (every step rounded to f32 as torch would on f32 tensors):
 *   amaxT  = max |x| over the finite elements of the tensor
 *   global = amaxT / (6 * 448)                  ; if that is 0 or f32-subnormal: global = 1
 *   for each block of 16:
 *     amaxB = max |x| over the block's finite elements
 *     sB    = e4m3(amaxB / 6 / global)           (round half even, saturating at 448)
 *     if sB == 0: sB = 1                         (TensorRT-Model-Optimizer sets a zero block scale
 *                                                 to 1 before the FP8 cast; here also a scale that
 *                                                 underflows E4M3, so no 0/0 arises. Either way the
 *                                                 block's elements lie below half the smallest E2M1
 *                                                 step relative to d and all quantize to +-0)
 *     d     = sB * global
 *     x'    = e2m1(x / d) * d                    (round half even, saturating at +-6, sign of zero kept)
 * Non-finite inputs: NaN -> NaN (encode refuses it); +-Inf -> +-6 * d.
 * The row length must be a multiple of 16.
 *
 * Codes (encode): 4-bit E2M1 patterns per element, E4M3 patterns per block (scaleCodes), their
 * values (scales) and the f32 global scale.
 */
import { fail } from '../errors.ts';
import { e4m3Code, e4m3Value } from './fp8.ts';
import { amaxFinite, E2M1, miniFloatQuantizeRange } from './minifloat.ts';

const fround = Math.fround;
export const NVFP4_BLOCK = 16;
/** 6 (E2M1 max) * 448 (E4M3 max) */
const RANGE = 6 * 448;
const E4M3_ONE = 0x38;
const F32_MIN_NORMAL = 2 ** -126;

/** f32 per-tensor scale for a tensor amax (see the header). */
export function nvfp4GlobalScale(amax: number): number {
  const g = fround(amax / RANGE);
  return g >= F32_MIN_NORMAL ? g : 1;
}

/** E4M3 pattern of the block scale for a block amax and the global scale. */
export function nvfp4BlockScaleCode(amaxBlock: number, global: number): number {
  const c = e4m3Code(fround(fround(amaxBlock / 6) / global));
  return c === 0 ? E4M3_ONE : c;
}

function checkCols(cols: number): void {
  if (cols % NVFP4_BLOCK !== 0) {
    fail(`nvfp4 block size ${NVFP4_BLOCK} does not divide the row length (last dimension) ${cols}`);
  }
}

function runNvfp4(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  out: Float32Array | null,
  codes: Uint8Array | null,
  scaleCodes: Uint8Array | null,
): number {
  checkCols(cols);
  const n = rows * cols;
  const global = nvfp4GlobalScale(amaxFinite(x, 0, n));
  for (let s = 0, b = 0; s < n; s += NVFP4_BLOCK, b++) {
    const end = s + NVFP4_BLOCK;
    const sc = nvfp4BlockScaleCode(amaxFinite(x, s, end), global);
    if (scaleCodes) scaleCodes[b] = sc;
    const d = fround(e4m3Value(sc) * global);
    const bad = miniFloatQuantizeRange(x, s, end, d, E2M1, false, out, codes);
    if (bad >= 0) fail(`cannot encode NaN at row ${Math.floor(bad / cols)}, column ${bad % cols} as nvfp4`);
  }
  return global;
}

export function fakeQuantNvfp4(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  out: Float32Array = new Float32Array(rows * cols),
): Float32Array {
  runNvfp4(x, rows, cols, out, null, null);
  return out;
}

export interface Nvfp4Encoded {
  /** E2M1 patterns (4 bits), one per element */
  codes: Uint8Array;
  /** E4M3 patterns of the block scales, one per 16 elements */
  scaleCodes: Uint8Array;
  /** values of the block scales */
  scales: Float32Array;
  /** f32 per-tensor scale */
  globalScale: number;
}

export function encodeNvfp4(x: ArrayLike<number>, rows: number, cols: number): Nvfp4Encoded {
  checkCols(cols);
  const codes = new Uint8Array(rows * cols);
  const scaleCodes = new Uint8Array((rows * cols) / NVFP4_BLOCK);
  const globalScale = runNvfp4(x, rows, cols, null, codes, scaleCodes);
  const scales = new Float32Array(scaleCodes.length);
  for (let b = 0; b < scales.length; b++) scales[b] = e4m3Value(scaleCodes[b]);
  return { codes, scaleCodes, scales, globalScale };
}

export function decodeNvfp4(
  enc: Nvfp4Encoded,
  out: Float32Array = new Float32Array(enc.codes.length),
): Float32Array {
  const { codes, scaleCodes, globalScale } = enc;
  const values = E2M1.values;
  for (let s = 0, b = 0; s < codes.length; s += NVFP4_BLOCK, b++) {
    const d = fround(e4m3Value(scaleCodes[b]) * globalScale);
    for (let i = s; i < s + NVFP4_BLOCK; i++) out[i] = values[codes[i]] * d;
  }
  return out;
}
