/**
 * b-bit integer quantization (b = 2..8), asymmetric (zero point) or symmetric, with one scale per
 * tensor, per row (output channel of a weight / token of an activation) or per group of `group`
 * consecutive elements along the row.
 *
 * Arithmetic follows the PyTorch tools on f32 tensors step by step: every intermediate that torch
 * would hold in an f32 tensor is rounded to f32 (Math.fround), rounding is half to even
 * (torch.round), so results are bit-identical to AutoAWQ / GPTQ run in fp32.
 *
 * Asymmetric (AutoAWQ / llm-awq `pseudo_quantize_tensor`; GPTQ `Quantizer` with includeZero):
 *   min, max      over the finite elements of the group (0, 0 if there are none)
 *   includeZero:  min = min(min, 0), max = max(max, 0); an all-zero group gets [-1, 1]   (GPTQ)
 *   clip c:       min *= c, max *= c                                 (GPTQ's mse grid search)
 *   scale = max(max - min, 1e-5) / (2^b - 1)
 *   zero  = clamp(-round(min / scale), 0, 2^b - 1)
 *   q     = clamp(round(x / scale) + zero, 0, 2^b - 1),  x' = (q - zero) * scale
 * Symmetric (AutoAWQ zero_point=False; SmoothQuant per-channel / per-token absmax):
 *   amax = max |x| (finite) * c;  scale = max(amax, 1e-5) / (2^(b-1) - 1)
 *   q = clamp(round(x / scale), -2^(b-1), 2^(b-1) - 1),  x' = q * scale
 * SmoothQuant (int8: scale = amax / 127, then round, no clamp) gives the same values: without
 * clipping |x / scale| <= 2^(b-1) - 1, so the clamp never acts and q stays in [-127, 127]. With
 * clip < 1 the clamp is AutoAWQ's, asymmetric by one step: -2^(b-1) (e.g. -128) is reachable.
 * AWQ's clip search is not `clip`: it clamps the weights to [-c * amax, c * amax] (amax of |x|
 * over the group) and quantizes the clamped weights with c = 1. For symmetric formats the two
 * agree; for asymmetric ones they differ whenever min != -max.
 *
 * Consequences kept on purpose (they are what AutoAWQ does):
 * - the 1e-5 floor: a group whose range (or amax) is below 1e-5 is quantized as if it were 1e-5
 *   (an all-zero group gives zeros and scale 1e-5 / (2^b - 1)). GPTQ has no floor: with
 *   includeZero, llmq and GPTQ differ only for ranges in (0, 1e-5). GPTQ's sym=True (a fixed
 *   zero point 2^(b-1) on the asymmetric grid) is not the symmetric format here;
 * - without includeZero, a group of one repeated non-zero value v gets range 1e-5 and comes back
 *   as +-1e-5 (sign of v); a negative-only group has its zero clamped at 2^b - 1, so its grid is
 *   [-(max - min), 0] and values below -(max - min) saturate there; likewise a positive-only
 *   group's grid is [0, max - min]. includeZero avoids all three.
 * Non-finite inputs: NaN -> NaN (encode refuses it); +-Infinity does not enter the range and
 * saturates to the ends of the group's grid. Zero results are +0.
 *
 * Codes (encode): asymmetric q in [0, 2^b - 1] with zero points in [0, 2^b - 1]; symmetric stored
 * offset-binary, code = q + 2^(b-1) (as compressed-tensors / ONNX MatMulNBits / MLC store them).
 */
import { fail } from '../errors.ts';
import { rneInt } from './rounding.ts';
import type { IntSpec } from './spec.ts';

const fround = Math.fround;
/** torch compares against the scalar 1e-5 as an f32 */
export const INT_RANGE_FLOOR: number = fround(1e-5);

export interface IntOptions {
  /** shrink factor in (0, 1] applied to min/max (or amax) before the scale is computed */
  clip?: number;
  /** force the range to contain 0 (GPTQ quantizer: min(x, 0), max(x, 0)); asymmetric only matters */
  includeZero?: boolean;
  /** a fixed scale (static activation quantization) instead of one from the data */
  staticScale?: number;
}

export interface IntParams {
  scale: number;
  /** zero point (asymmetric); 0 for symmetric */
  zero: number;
}

/** Smallest and largest integer q of the format. */
export function intRange(bits: number, symmetric: boolean): { qmin: number; qmax: number } {
  return symmetric
    ? { qmin: -(2 ** (bits - 1)), qmax: 2 ** (bits - 1) - 1 }
    : { qmin: 0, qmax: 2 ** bits - 1 };
}

export function checkIntBits(bits: number, where = 'int format'): void {
  if (!Number.isInteger(bits) || bits < 2 || bits > 8)
    fail(`${where}: bits must be an integer 2..8, got ${bits}`);
}

export function checkClip(clip: number | undefined, where = 'int format'): void {
  if (clip !== undefined && !(clip > 0 && clip <= 1)) fail(`${where}: clip must be in (0, 1], got ${clip}`);
}

/**
 * 1 / n as an f32. PyTorch on CUDA divides a tensor by a Python number as a multiplication by the
 * number's f32 reciprocal, so AutoAWQ / SmoothQuant's `range / (2^b - 1)` is range * f32(1 / 15) on
 * the GPUs they run on (checked on an H100: true division changes 1 in 60 group scales of
 * llama-small and with them 7 M codes). llmq computes scales the same way.
 */
export function reciprocal(n: number): number {
  return fround(1 / n);
}

/**
 * Quantization parameters from a range [min, max] (for symmetric formats amax = max(|min|, |max|)).
 * Pass the min/max of the finite values of the group.
 */
export function intParamsFromRange(
  min: number,
  max: number,
  bits: number,
  symmetric: boolean,
  opts: IntOptions = {},
): IntParams {
  const clip = opts.clip === undefined || opts.clip === 1 ? 1 : fround(opts.clip);
  if (opts.includeZero) {
    if (min > 0) min = 0;
    if (max < 0) max = 0;
    if (min === 0 && max === 0 && !symmetric) {
      min = -1; // GPTQ Quantizer.find_params: an all-zero row gets the range [-1, 1]
      max = 1;
    }
  }
  if (symmetric) {
    let amax = Math.max(-min, max);
    if (clip !== 1) amax = fround(amax * clip);
    if (!(amax >= INT_RANGE_FLOOR)) amax = INT_RANGE_FLOOR;
    return { scale: fround(amax * reciprocal(2 ** (bits - 1) - 1)), zero: 0 };
  }
  if (clip !== 1) {
    min = fround(min * clip);
    max = fround(max * clip);
  }
  let range = fround(max - min);
  if (!(range >= INT_RANGE_FLOOR)) range = INT_RANGE_FLOOR;
  const qmax = 2 ** bits - 1;
  const scale = fround(range * reciprocal(qmax));
  let zero = 0 - rneInt(fround(min / scale));
  if (zero < 0) zero = 0;
  else if (zero > qmax) zero = qmax;
  return { scale, zero };
}

/**
 * Quantization parameters of one group vector: x[offset + i * stride] for i < length (finite values
 * only enter the range). GPTQ calls this when a group starts, on the error-updated weights.
 */
export function intParams(
  x: ArrayLike<number>,
  bits: number,
  symmetric: boolean,
  opts: IntOptions = {},
  offset = 0,
  length: number = x.length - offset,
  stride = 1,
): IntParams {
  const { min, max } = finiteRange(x, offset, length, stride);
  return intParamsFromRange(min, max, bits, symmetric, opts);
}

/** min and max of the finite values among x[offset + i * stride], i < length; 0, 0 if there are none. */
export function finiteRange(
  x: ArrayLike<number>,
  offset = 0,
  length: number = x.length - offset,
  stride = 1,
): { min: number; max: number } {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0, j = offset; i < length; i++, j += stride) {
    const v = x[j];
    if (v < min && v !== Number.NEGATIVE_INFINITY) min = v;
    if (v > max && v !== Number.POSITIVE_INFINITY) max = v;
  }
  return min > max ? { min: 0, max: 0 } : { min, max };
}

/**
 * Parameters for columns [start, start + length) of every row of a rows x cols matrix, written to
 * scales[r] / zeros[r] (fresh arrays when not given). GPTQ uses this at each group boundary.
 */
export function intParamsRows(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  start: number,
  length: number,
  bits: number,
  symmetric: boolean,
  opts: IntOptions = {},
  scales: Float32Array = new Float32Array(rows),
  zeros: Float32Array = new Float32Array(rows),
): { scales: Float32Array; zeros: Float32Array } {
  for (let r = 0; r < rows; r++) {
    const p = intParams(x, bits, symmetric, opts, r * cols + start, length, 1);
    scales[r] = p.scale;
    zeros[r] = p.zero;
  }
  return { scales, zeros };
}

/**
 * Integer q of x for the given scale / zero: asymmetric in [0, 2^b - 1], symmetric in
 * [-2^(b-1), 2^(b-1) - 1]. NaN gives NaN.
 */
export function intQuantizeCode(
  x: number,
  scale: number,
  zero: number,
  bits: number,
  symmetric: boolean,
): number {
  const t = rneInt(fround(x / scale));
  if (symmetric) {
    const lim = 2 ** (bits - 1);
    return t < -lim ? -lim : Math.min(t, lim - 1);
  }
  const q = t + zero;
  const qmax = 2 ** bits - 1;
  return q < 0 ? 0 : Math.min(q, qmax);
}

/** Value of an integer q: (q - zero) * scale as f32 (zero = 0 for symmetric). */
export function intDequantize(q: number, scale: number, zero: number): number {
  return fround((q - zero) * scale);
}

/** x quantized and dequantized with the given scale / zero (one GPTQ column step). */
export function intQuantizeValue(
  x: number,
  scale: number,
  zero: number,
  bits: number,
  symmetric: boolean,
): number {
  if (Number.isNaN(x)) return Number.NaN;
  return fround((intQuantizeCode(x, scale, zero, bits, symmetric) - zero) * scale);
}

/** Elements per scale along a row and number of scales per row; validates the spec. */
export function intLayout(rows: number, cols: number, spec: IntSpec): { block: number; perRow: number } {
  checkIntBits(spec.bits);
  checkClip(spec.clip);
  if (spec.granularity === 'tensor') return { block: rows * cols, perRow: 0 };
  if (spec.granularity === 'row') return { block: cols, perRow: 1 };
  if (spec.granularity !== 'group') fail(`int format: unknown granularity '${spec.granularity}'`);
  const g = spec.group;
  if (g === undefined || !Number.isInteger(g) || g < 1) {
    fail(`int${spec.bits} group quantization needs a positive integer group size, got ${g}`);
  }
  if (cols % g !== 0) {
    fail(`int${spec.bits} group size ${g} does not divide the row length (last dimension) ${cols}`);
  }
  return { block: g, perRow: cols / g };
}

interface Sink {
  out: Float32Array | null;
  codes: Uint8Array | null;
  scales: Float32Array | null;
  zeros: Uint8Array | null;
}

/** Quantize x[start .. start+len) with one scale; writes values and/or codes. */
function quantSegment(
  x: ArrayLike<number>,
  start: number,
  len: number,
  bits: number,
  symmetric: boolean,
  opts: IntOptions,
  sink: Sink,
  paramIndex: number,
  cols: number,
): void {
  const { scale, zero } =
    opts.staticScale === undefined
      ? intParams(x, bits, symmetric, opts, start, len, 1)
      : { scale: fround(opts.staticScale), zero: 0 };
  if (sink.scales) sink.scales[paramIndex] = scale;
  if (sink.zeros) sink.zeros[paramIndex] = zero;
  const out = sink.out;
  const codes = sink.codes;
  const end = start + len;
  if (symmetric) {
    const lim = 2 ** (bits - 1);
    const hi = lim - 1;
    for (let i = start; i < end; i++) {
      const v = x[i];
      if (Number.isNaN(v)) {
        if (codes) fail(`cannot encode NaN at row ${Math.floor(i / cols)}, column ${i % cols} as int${bits}`);
        if (out) out[i] = Number.NaN;
        continue;
      }
      // round half to even, inlined (hot loop); -0 cannot survive the + 0 below
      const t = fround(v / scale);
      const f = Math.floor(t);
      const d = t - f;
      let q = (d > 0.5 || (d === 0.5 && (f & 1) !== 0) ? f + 1 : f) + 0;
      q = q < -lim ? -lim : Math.min(q, hi);
      if (out) out[i] = q * scale;
      if (codes) codes[i] = q + lim;
    }
  } else {
    const qmax = 2 ** bits - 1;
    for (let i = start; i < end; i++) {
      const v = x[i];
      if (Number.isNaN(v)) {
        if (codes) fail(`cannot encode NaN at row ${Math.floor(i / cols)}, column ${i % cols} as int${bits}`);
        if (out) out[i] = Number.NaN;
        continue;
      }
      const t = fround(v / scale);
      const f = Math.floor(t);
      const d = t - f;
      let q = (d > 0.5 || (d === 0.5 && (f & 1) !== 0) ? f + 1 : f) + zero;
      q = q < 0 ? 0 : Math.min(q, qmax);
      if (out) out[i] = (q - zero) * scale;
      if (codes) codes[i] = q;
    }
  }
}

function runInt(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: IntSpec,
  opts: IntOptions,
  sink: Sink,
): void {
  const { block } = intLayout(rows, cols, spec);
  const o: IntOptions = {
    clip: opts.clip ?? spec.clip,
    includeZero: opts.includeZero,
    staticScale: opts.staticScale ?? spec.staticScale,
  };
  checkClip(o.clip);
  const n = rows * cols;
  for (let s = 0, p = 0; s < n; s += block, p++)
    quantSegment(x, s, block, spec.bits, spec.symmetric, o, sink, p, cols);
}

/** Fake-quantize a rows x cols matrix (row-major). Returns `out` (a new array when not given). */
export function fakeQuantInt(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: IntSpec,
  opts: IntOptions = {},
  out: Float32Array = new Float32Array(rows * cols),
): Float32Array {
  runInt(x, rows, cols, spec, opts, { out, codes: null, scales: null, zeros: null });
  return out;
}

export interface IntEncoded {
  codes: Uint8Array;
  scales: Float32Array;
  /** asymmetric only */
  zeros?: Uint8Array;
  /** elements per scale (group, cols for 'row', rows * cols for 'tensor') */
  block: number;
}

/** Integer codes + scales (+ zero points) of x; NaN inputs are refused with a one-line error. */
export function encodeInt(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: IntSpec,
  opts: IntOptions = {},
): IntEncoded {
  const { block } = intLayout(rows, cols, spec);
  const nScales = (rows * cols) / block;
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(nScales);
  const zeros = spec.symmetric ? null : new Uint8Array(nScales);
  runInt(x, rows, cols, spec, opts, { out: null, codes, scales, zeros });
  return zeros ? { codes, scales, zeros, block } : { codes, scales, block };
}

/** Values of encoded INT data: (code - zero) * scale, symmetric codes offset by 2^(bits-1). */
export function decodeInt(
  enc: IntEncoded,
  bits: number,
  symmetric: boolean,
  out: Float32Array = new Float32Array(enc.codes.length),
): Float32Array {
  const { codes, scales, zeros, block } = enc;
  const n = codes.length;
  const off = 2 ** (bits - 1);
  for (let s = 0, p = 0; s < n; s += block, p++) {
    const scale = scales[p];
    const zero = symmetric ? off : zeros ? zeros[p] : 0;
    const end = s + block;
    for (let i = s; i < end; i++) out[i] = (codes[i] - zero) * scale;
  }
  return out;
}
