/**
 * GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
 * Transformers"): quantize the columns (input channels) of a weight matrix one at a time and push
 * each column's rounding error onto the columns not quantized yet, weighted by the inverse Hessian
 * of the layer loss, so that the layer output on calibration data moves as little as possible.
 *
 * Runs on the host in float64 (W, H and its inverse factor); the result is f32 fake-quantized
 * weights plus the format's codes/scales. Per call: O(rows cols^2) flops for the column updates and
 * O(cols^3) for the inverse; memory: two cols x cols float64 buffers and a float64 copy of W.
 *
 * Algorithm (IST-DASLab reference behaviour, reimplemented from the math):
 * 1. dead inputs (H[d, d] = 0): H[d, d] = 1 and W[:, d] = 0;
 * 2. parameters that do not follow the error updates are fitted on this W: per-row ('row'),
 *    per-tensor, and with `staticGroups` every group / MX block (on the original column order);
 * 3. actOrder: columns processed by decreasing diag(H) (stable: ties keep column order);
 * 4. damping: H += damp * mean(diag H) * I; Hinv = upper Cholesky factor of H^-1 (hessian.ts);
 * 5. columns left to right in lazy blocks of `blockSize`: for column i, q = Q(w_i),
 *    err = (w_i - q) / Hinv[i, i], w_j -= err * Hinv[i, j] for the later columns of the block;
 *    after the block, W[:, end:] -= Err Hinv[block, end:] (one matmul). Inside a block the same
 *    is done again on sub-blocks of 16 columns, so that nearly all flops are cache-blocked matmuls;
 * 6. dynamic groups (INT granularity 'group' without staticGroups): the (scale, zero) of each row
 *    is fitted when the group starts (position % group == 0 in processing order), on the current,
 *    error-updated weights of the group's columns. MX (MX-aware GPTQ, Algorithm 1 of seed paper
 *    "004"): each block's shared exponent is fixed the same way when its first column comes, then
 *    its columns are quantized one by one with error feedback.
 *
 * Group membership (gIdx). With actOrder and dynamic groups, a group is `group` consecutive columns
 * of the *processing* order (as GPTQ does), so gIdx[c] = (position of column c) / group; the
 * result then carries gIdx and its scales are indexed [row, gIdx[c]] (decode() of formats/ does not
 * apply: use dequantizeGptq). Otherwise the group of column c is c / group (staticGroups: always,
 * the reference's `groups[perm[i] // groupsize]`) and `decode(result.encoded)` equals `dequant`.
 *
 * Where llmq differs from the reference tools, on purpose:
 * - float64 on the CPU instead of fp32 on the GPU (the Cholesky of a damped fp32 Hessian is where
 *   fp32 runs fail and GPTQModel retries with more damping; f64 makes that far rarer);
 * - dynamic group parameters come from the fully updated weights, so the result does not depend on
 *   blockSize (lazy batching is then a pure speed-up, as in the paper). IST-DASLab gptq, AutoGPTQ
 *   and GPTQModel fit a group that starts inside a lazy block on the weights as they were when the
 *   block started (the in-block updates go to a copy); `staleGroupParams: true` reproduces that.
 *   The two agree when group is a multiple of blockSize (e.g. g128 with blocks of 128);
 * - the 'row'/'tensor' parameters are fitted after the dead columns are zeroed (the reference fits
 *   them before, so a dead column's weights can widen a row's range);
 * - the grid is the format's (formats/int.ts): symmetric INT is scale = amax / (2^(b-1) - 1),
 *   q in [-2^(b-1), 2^(b-1) - 1] (AutoAWQ / compressed-tensors), not the reference quantizer's
 *   sym=True grid (scale = 2 amax / (2^b - 1), zero 2^(b-1)); ranges below 1e-5 are floored at 1e-5
 *   (the reference maps an all-zero row to [-1, 1]; the values are 0 either way);
 * - `includeZero` (default true, the GPTQ quantizer) forces 0 into asymmetric ranges:
 *   min(x, 0), max(x, 0). AutoAWQ's RTN does not; set it false to quantize on that grid;
 * - llama.cpp Q4_0 / Q8_0 (GgmlGrid): a block's d is llama.cpp's choice on the weights when the block
 *   is reached; codes follow llama.cpp's rounding, clamped since updated weights may leave the range;
 * - llama.cpp Q5_0, Q5_1 and the K-quants (BlockGrid): a block's header (Q4_K: d, dmin and the 6-bit
 *   sub-block scales and mins) is what llama.cpp's reference quantizer picks for the block's current
 *   weights when the block is reached (the K-quants: a super-block of 256 columns); each value then
 *   takes the nearest code on its sub-block's grid, which for the K-quants is exactly llama.cpp's own
 *   second pass (nearest_int((x + dmin m) / (d sc)), clamped). No llama.cpp tool does GPTQ; the
 *   result is an ordinary GGUF block of the type;
 * - MX (and Q4_0 / Q8_0) with actOrder needs staticGroups (block exponents fixed on the original weights): an MX
 *   block is `block` consecutive original input channels and its shared exponent has to be known
 *   before its first column is quantized, which a reordered walk cannot guarantee.
 */
import { fail } from '../errors.ts';
import {
  type GgmlGroupCodes,
  ggmlBlockScale,
  ggmlCode,
  ggmlCodeOffset,
  QK,
  quantizeQ4_0,
  readF16,
} from '../formats/ggml.ts';
import {
  encodeGgmlBlocks,
  type GgmlBlockType,
  ggmlBlockLayout,
  isBlockFormat,
  isLatticeType,
} from '../formats/ggml-codes.ts';
import { clamp, nearestInt } from '../formats/ggml-search.ts';
import {
  checkMxSpec,
  codeBits,
  decode,
  type Encoded,
  type FormatSpec,
  finiteRange,
  formatName,
  type IntParams,
  type IntSpec,
  intDequantize,
  intLayout,
  intParams,
  intParamsFromRange,
  intQuantizeCode,
  intQuantizeValue,
  type MxElementInfo,
  type MxSpec,
  miniFloatEncode,
  mxQuantizeValue,
  mxSharedExponent,
  pow2,
} from '../formats/index.ts';
import { nearestLevel } from '../formats/iq4.ts';
import type { GgmlSpec } from '../formats/spec.ts';
import { f16BitsToNumber, numberToF16Bits } from '../tensor/dtype.ts';
import { addMatmulNT, choleskyInverseUpper } from './hessian.ts';

export interface GptqOptions {
  /** damping as a fraction of mean(diag H), added to the diagonal (reference percdamp 0.01) */
  damp: number;
  /** columns per lazy batch update (128) */
  blockSize: number;
  /** process columns by decreasing diag(H) ("act_order" / desc_act) */
  actOrder: boolean;
  /** fit group parameters / MX block exponents up front on the original weights */
  staticGroups: boolean;
  /** INT asymmetric: force 0 into every range (GPTQ quantizer; AutoAWQ RTN does not). Default true. */
  includeZero: boolean;
  /**
   * Fit a group that starts inside a lazy block on the weights as they were at the block start,
   * like IST-DASLab gptq / AutoGPTQ / GPTQModel (results then depend on blockSize). Default false.
   */
  staleGroupParams: boolean;
  /**
   * INT: fit each scale by the GPTQ quantizer's grid search (its `mse=True`) instead of min/max:
   * shrink the range by p = 1, 0.99, ..., 0.21 and keep the p whose grid gives the least
   * sum |q - w|^2.4 over the group (or row). Default false, as the reference.
   */
  mse: boolean;
  /**
   * llama.cpp types: fit each block's scale (Q4_0) or header (Q5_0, Q5_1, K-quants) with llama.cpp's
   * importance (imatrix) path, the importance of input channel c being diag(H)_c / 2, the layer inputs'
   * mean x^2 that llama-imatrix collects. The fit sees the block's current weights only (llama.cpp's
   * sigma2 is then over the block, not the row). Default false: llama.cpp's reference fit.
   */
  importance: boolean;
}

export const GPTQ_DEFAULTS: Readonly<GptqOptions> = {
  damp: 0.01,
  blockSize: 128,
  actOrder: false,
  staticGroups: false,
  includeZero: true,
  staleGroupParams: false,
  importance: false,
  mse: false,
};

export interface GptqTimings {
  /** dead columns, static parameters, ordering, damping, Cholesky and inverse (ms) */
  inverse: number;
  /** quantizing columns and updating the rest of their lazy block (ms) */
  columns: number;
  /** propagating each block's errors to the later columns (ms) */
  updates: number;
}

export interface GptqResult {
  /** rows x cols fake-quantized weights (f32 values of the format), original column order */
  dequant: Float32Array;
  /**
   * Codes, scales (INT zeros, MX exponents) of `dequant` in the formats/ Encoded layout. When gIdx
   * is set, scale index [row, gIdx[c]] applies to column c instead of [row, c / block].
   */
  encoded: Encoded;
  /** group of each original column, only when it is not c / group (actOrder, dynamic groups) */
  gIdx?: Int32Array;
  /** processing order (position -> original column), only with actOrder */
  perm?: Int32Array;
  /**
   * GPTQ's loss: sum over columns of (w - q)^2 / (2 Hinv[i, i]^2), which equals
   * tr((W - Q) H_damped (W - Q)^T) / 2, i.e. for H = 2/N X^T X the mean over calibration tokens of
   * ||(W - Q) x||^2 (plus the damping term), W being the weights with dead columns zeroed.
   */
  loss: number;
  /** inputs whose Hessian diagonal was 0 (their weights were zeroed) */
  deadColumns: number;
  timings: GptqTimings;
}

/** How one format's parameters are fitted, stored and applied during the column walk. */
interface Grid {
  /** processing positions where a row's parameters are refitted every `span` columns; 0: never */
  readonly span: number;
  /** fits the parameters of row r that apply at processing position p from vals[off, off + len) */
  fit(r: number, p: number, vals: ArrayLike<number>, off: number, len: number): void;
  /** fits everything that does not follow the updates, on the original-order weights */
  fitStatic(w: Float64Array): void;
  /** quantized value of w for row r at position p (original column c); records its code */
  quantize(r: number, c: number, p: number, w: number): number;
  encoded(): Encoded;
  gIdx(): Int32Array | undefined;
}

function now(): number {
  return performance.now();
}

/** groupOf[p] for positions p of the processing order: the parameter slot of the column there */
function slotsByPosition(cols: number, order: Int32Array | null, size: number, byPosition: boolean) {
  const slots = new Int32Array(cols);
  for (let p = 0; p < cols; p++) slots[p] = Math.floor((byPosition || !order ? p : order[p]) / size);
  return slots;
}

/** GPTQ quantizer grid (IST-DASLab quant.py, mse=True): 80 shrink steps of 0.01, error norm 2.4. */
const MSE_GRID = 100;
const MSE_STEPS = 80;
const MSE_NORM = 2.4;

/** (scale, zero) of vals[off, off + len) minimising sum |q - x|^2.4 over shrunk ranges. */
function mseParams(
  vals: ArrayLike<number>,
  off: number,
  len: number,
  bits: number,
  symmetric: boolean,
  includeZero: boolean,
): IntParams {
  const { min, max } = finiteRange(vals, off, len);
  let best = intParamsFromRange(min, max, bits, symmetric, { includeZero });
  let bestErr = Number.POSITIVE_INFINITY;
  for (let i = 0; i < MSE_STEPS; i++) {
    const p = intParamsFromRange(min, max, bits, symmetric, { includeZero, clip: 1 - i / MSE_GRID });
    let err = 0;
    for (let k = off; k < off + len; k++) {
      const x = vals[k];
      err += Math.abs(intQuantizeValue(x, p.scale, p.zero, bits, symmetric) - x) ** MSE_NORM;
    }
    if (err < bestErr) {
      bestErr = err;
      best = p;
    }
  }
  return best;
}

class IntGrid implements Grid {
  readonly span: number;
  private readonly bits: number;
  private readonly symmetric: boolean;
  private readonly opts: { clip?: number; includeZero: boolean };
  private readonly block: number;
  private readonly perRow: number;
  /** parameter slot of each processing position, within a row */
  private readonly slot: Int32Array;
  private readonly scales: Float32Array;
  private readonly zeros: Float32Array;
  private readonly codes: Uint8Array;
  private readonly offset: number;
  private readonly dynamicGroups: boolean;
  private readonly mse: boolean;

  constructor(
    private readonly spec: IntSpec,
    private readonly rows: number,
    private readonly cols: number,
    private readonly order: Int32Array | null,
    opts: GptqOptions,
  ) {
    const { block, perRow } = intLayout(rows, cols, spec);
    this.bits = spec.bits;
    this.symmetric = spec.symmetric;
    this.opts = { clip: spec.clip, includeZero: opts.includeZero };
    this.mse = opts.mse;
    this.block = block;
    this.dynamicGroups = spec.granularity === 'group' && !opts.staticGroups;
    this.span = this.dynamicGroups ? block : 0;
    this.perRow = spec.granularity === 'tensor' ? 0 : perRow;
    this.slot =
      spec.granularity === 'group'
        ? slotsByPosition(cols, order, block, this.dynamicGroups)
        : new Int32Array(cols);
    const n = spec.granularity === 'tensor' ? 1 : rows * perRow;
    this.scales = new Float32Array(n);
    this.zeros = new Float32Array(n);
    this.codes = new Uint8Array(rows * cols);
    this.offset = spec.symmetric ? 2 ** (spec.bits - 1) : 0;
  }

  private store(index: number, vals: ArrayLike<number>, off: number, len: number): void {
    const p = this.mse
      ? mseParams(vals, off, len, this.bits, this.symmetric, this.opts.includeZero)
      : intParams(vals, this.bits, this.symmetric, this.opts, off, len);
    this.scales[index] = p.scale;
    this.zeros[index] = p.zero;
  }

  fit(r: number, p: number, vals: ArrayLike<number>, off: number, len: number): void {
    this.store(r * this.perRow + this.slot[p], vals, off, len);
  }

  fitStatic(w: Float64Array): void {
    if (this.dynamicGroups) return;
    const { rows, cols, block } = this;
    if (this.spec.granularity === 'tensor') {
      this.store(0, w, 0, rows * cols);
      return;
    }
    for (let r = 0; r < rows; r++)
      for (let g = 0; g < this.perRow; g++) this.store(r * this.perRow + g, w, r * cols + g * block, block);
  }

  quantize(r: number, c: number, p: number, w: number): number {
    const i = r * this.perRow + this.slot[p];
    const scale = this.scales[i];
    const zero = this.zeros[i];
    const q = intQuantizeCode(w, scale, zero, this.bits, this.symmetric);
    this.codes[r * this.cols + c] = q + this.offset;
    return intDequantize(q, scale, zero);
  }

  encoded(): Encoded {
    const { spec, rows, cols } = this;
    return {
      spec,
      rows,
      cols,
      bits: codeBits(spec),
      codes: this.codes,
      block: this.block,
      scales: this.scales,
      ...(spec.symmetric ? {} : { zeros: Uint8Array.from(this.zeros) }),
    };
  }

  gIdx(): Int32Array | undefined {
    if (!this.dynamicGroups || !this.order) return undefined;
    const g = new Int32Array(this.cols);
    for (let p = 0; p < this.cols; p++) g[this.order[p]] = this.slot[p];
    return g;
  }
}

/** Block formats fix a block's scale before its first column: a reordered walk needs them fitted up front. */
function requireStaticBlocks(
  spec: FormatSpec,
  block: string,
  scale: string,
  order: Int32Array | null,
  opts: GptqOptions,
): void {
  if (order && !opts.staticGroups)
    fail(
      `GPTQ with ${formatName(spec)}: actOrder needs staticGroups (${block} consecutive input channels, ` +
        `so ${scale} must be fixed on the original weights before the columns are reordered)`,
    );
}

class MxGrid implements Grid {
  readonly span: number;
  private readonly info: MxElementInfo;
  private readonly k: number;
  private readonly perRow: number;
  /** block of the original column at each processing position */
  private readonly slot: Int32Array;
  private readonly exponents: Int16Array;
  private readonly codes: Uint8Array;

  constructor(
    private readonly spec: MxSpec,
    private readonly rows: number,
    private readonly cols: number,
    order: Int32Array | null,
    opts: GptqOptions,
  ) {
    this.info = checkMxSpec(cols, spec);
    requireStaticBlocks(spec, `an MX block is ${spec.block}`, 'its shared exponent', order, opts);
    this.k = spec.block;
    this.perRow = cols / spec.block;
    this.span = opts.staticGroups ? 0 : spec.block;
    this.slot = slotsByPosition(cols, order, spec.block, false);
    this.exponents = new Int16Array(rows * this.perRow);
    this.codes = new Uint8Array(rows * cols);
  }

  private store(index: number, vals: ArrayLike<number>, off: number, len: number): void {
    let amax = 0;
    for (let i = off; i < off + len; i++) {
      const a = Math.abs(vals[i]);
      if (a > amax) amax = a;
    }
    this.exponents[index] = mxSharedExponent(amax, this.info.emax);
  }

  fit(r: number, p: number, vals: ArrayLike<number>, off: number, len: number): void {
    this.store(r * this.perRow + this.slot[p], vals, off, len);
  }

  fitStatic(w: Float64Array): void {
    if (this.span) return;
    for (let r = 0; r < this.rows; r++)
      for (let b = 0; b < this.perRow; b++)
        this.store(r * this.perRow + b, w, r * this.cols + b * this.k, this.k);
  }

  quantize(r: number, c: number, p: number, w: number): number {
    const e = this.exponents[r * this.perRow + this.slot[p]];
    const { info } = this;
    const v = mxQuantizeValue(w, e, info, this.spec.rounding);
    // the value is on the element grid scaled by 2^e, so its code follows exactly
    this.codes[r * this.cols + c] = info.fp
      ? miniFloatEncode(v * pow2(-e), info.fp, this.spec.rounding === 'nearest')
      : (v * pow2(info.fracBits - e)) & ((1 << info.bits) - 1);
    return v;
  }

  encoded(): Encoded {
    const { spec, rows, cols } = this;
    const scales = new Float32Array(this.exponents.length);
    for (let b = 0; b < scales.length; b++) scales[b] = pow2(this.exponents[b]);
    return {
      spec,
      rows,
      cols,
      bits: codeBits(spec),
      codes: this.codes,
      block: this.k,
      scales,
      exponents: this.exponents,
    };
  }

  gIdx(): undefined {
    return undefined;
  }
}

/**
 * llama.cpp Q4_0 / Q8_0: each block of 32 input channels gets llama.cpp's float32 d when its first
 * column comes (or up front with staticGroups); values are the codes times d rounded to fp16, so
 * decode(encoded) equals dequant and the blocks export to GGUF unchanged.
 */
class GgmlGrid implements Grid {
  readonly span: number;
  private readonly perRow: number;
  private readonly slot: Int32Array;
  /** float32 d of each block: codes are rounded with it, values use its fp16 rounding */
  private readonly d: Float32Array;
  private readonly d16: Float32Array;
  private readonly codes: Uint8Array;
  private readonly offset: number;

  constructor(
    private readonly spec: GgmlSpec,
    private readonly rows: number,
    private readonly cols: number,
    order: Int32Array | null,
    opts: GptqOptions,
    /** Q4_0: fit each block's d by llama.cpp's importance path (Q8_0 has none, as in llama.cpp) */
    private readonly importance?: Float32Array,
  ) {
    if (cols % QK !== 0) fail(`GPTQ with ${spec.type}: blocks of ${QK} do not divide the row length ${cols}`);
    requireStaticBlocks(spec, `a block is ${QK}`, 'its scale', order, opts);
    this.span = opts.staticGroups ? 0 : QK;
    this.perRow = cols / QK;
    this.slot = slotsByPosition(cols, order, QK, false);
    this.d = new Float32Array(rows * this.perRow);
    this.d16 = new Float32Array(rows * this.perRow);
    this.codes = new Uint8Array(rows * cols);
    this.offset = ggmlCodeOffset(spec);
  }

  private store(index: number, vals: ArrayLike<number>, off: number): void {
    const d =
      this.importance && this.spec.type === 'q4_0'
        ? this.weightedScale(index, vals, off)
        : ggmlBlockScale(this.spec, vals, off);
    this.d[index] = d;
    this.d16[index] = f16BitsToNumber(numberToF16Bits(d));
  }

  /** The fp16 d of quantize_row_q4_0_impl for the block's current values under the importance. */
  private weightedScale(index: number, vals: ArrayLike<number>, off: number): number {
    const at = (index % this.perRow) * QK;
    const importance = (this.importance as Float32Array).subarray(at, at + QK);
    return readF16(quantizeQ4_0(blockValues(vals, off, QK), { importance, cols: QK }), 0);
  }

  fit(r: number, p: number, vals: ArrayLike<number>, off: number): void {
    this.store(r * this.perRow + this.slot[p], vals, off);
  }

  fitStatic(w: Float64Array): void {
    if (this.span) return;
    for (let r = 0; r < this.rows; r++)
      for (let b = 0; b < this.perRow; b++) this.store(r * this.perRow + b, w, r * this.cols + b * QK);
  }

  quantize(r: number, c: number, p: number, w: number): number {
    const i = r * this.perRow + this.slot[p];
    const code = ggmlCode(this.spec, w, this.d[i]);
    this.codes[r * this.cols + c] = code;
    return (code - this.offset) * this.d16[i];
  }

  encoded(): Encoded {
    const { spec, rows, cols } = this;
    return { spec, rows, cols, bits: codeBits(spec), codes: this.codes, block: QK, scales: this.d16 };
  }

  gIdx(): undefined {
    return undefined;
  }
}

const fr = Math.fround;

/** The n values of one block from a row being quantized, as float32 for llama.cpp's quantizers. */
function blockValues(vals: ArrayLike<number>, off: number, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, k) => vals[off + k]);
}

/**
 * llama.cpp's Q5_0, Q5_1 and K-quant blocks: each block (32 or 256 input channels) gets the header
 * llama.cpp's reference quantizer picks for its weights when its first column comes (or up front with
 * staticGroups); each value then takes the nearest code on its sub-block's grid (see the file comment).
 * The stored codes and headers are the GGUF blocks, and decode(encoded) equals dequant.
 */
class BlockGrid implements Grid {
  readonly span: number;
  private readonly perRow: number;
  private readonly slot: Int32Array;
  private readonly layout: { values: number; bytes: number; group: number; bits: number };
  private readonly codes: Uint8Array;
  /** each block's bytes other than its codes (formats/ggml-codes.ts headers) */
  private readonly headerBytes: number;
  private readonly headers: Uint8Array;
  /** the current block's sub-block parameters, per block index */
  private readonly params: (GgmlGroupCodes | undefined)[];

  constructor(
    private readonly spec: GgmlSpec & { type: GgmlBlockType },
    private readonly rows: number,
    private readonly cols: number,
    order: Int32Array | null,
    opts: GptqOptions,
    /** fit each header by llama.cpp's importance path with these per-column weights */
    private readonly importance?: Float32Array,
  ) {
    this.layout = ggmlBlockLayout(spec.type);
    const { values } = this.layout;
    if (cols % values !== 0)
      fail(`GPTQ with ${spec.type}: blocks of ${values} do not divide the row length ${cols}`);
    if (isLatticeType(spec.type))
      fail(`GPTQ with ${spec.type}: its codes are grid points of 4 weights, not one rounding per weight`);
    requireStaticBlocks(spec, `a block is ${values}`, 'its scales', order, opts);
    this.span = opts.staticGroups ? 0 : values;
    this.perRow = cols / values;
    this.slot = slotsByPosition(cols, order, values, false);
    this.codes = new Uint8Array(rows * cols);
    this.headerBytes = this.layout.bytes - (values * this.layout.bits) / 8;
    this.headers = new Uint8Array(rows * this.perRow * this.headerBytes);
    this.params = new Array(rows * this.perRow);
  }

  private store(index: number, vals: ArrayLike<number>, off: number): void {
    const n = this.layout.values;
    const at = (index % this.perRow) * n;
    const importance = this.importance?.subarray(at, at + n);
    const block = encodeGgmlBlocks(blockValues(vals, off, n), n, this.spec.type, importance);
    this.headers.set(block.headers, index * this.headerBytes);
    this.params[index] = block.groups;
  }

  fit(r: number, p: number, vals: ArrayLike<number>, off: number): void {
    this.store(r * this.perRow + this.slot[p], vals, off);
  }

  fitStatic(w: Float64Array): void {
    if (this.span) return;
    const { values } = this.layout;
    for (let r = 0; r < this.rows; r++)
      for (let b = 0; b < this.perRow; b++) this.store(r * this.perRow + b, w, r * this.cols + b * values);
  }

  quantize(r: number, c: number, p: number, w: number): number {
    const u = this.params[r * this.perRow + this.slot[p]] as GgmlGroupCodes;
    const g = Math.floor((c % this.layout.values) / u.group);
    const [scale, top, x] = [u.scales[g], (1 << u.bits) - 1, fr(w)];
    if (u.levels) return this.quantizeOnLevels(r * this.cols + c, x, scale, u.levels);
    const min = u.mins?.[g];
    let code: number;
    if (scale === 0) code = min === undefined ? u.zero : 0;
    else if (min === undefined) code = clamp(nearestInt(fr(x / scale)) + u.zero, 0, top);
    else code = clamp(nearestInt(fr(fr(x - min) / scale)), 0, top);
    this.codes[r * this.cols + c] = code;
    return min === undefined ? fr((code - u.zero) * scale) : fr(fr(code * scale) + min);
  }

  /** IQ4: the level nearest to x / scale (llama.cpp's best_index_int8 on x times 1/scale). */
  private quantizeOnLevels(at: number, x: number, scale: number, levels: Int8Array): number {
    const code = nearestLevel(scale !== 0 ? fr(x * fr(1 / scale)) : 0);
    this.codes[at] = code;
    return fr(scale * levels[code]);
  }

  encoded(): Encoded {
    const { spec, rows, cols, layout } = this;
    const perBlock = layout.values / layout.group;
    const scales = new Float32Array(rows * this.perRow * perBlock);
    this.params.forEach((u, i) => u && scales.set(u.scales, i * perBlock));
    const bits = codeBits(spec);
    return {
      spec,
      rows,
      cols,
      bits,
      codes: this.codes,
      block: layout.group,
      scales,
      scaleCodes: this.headers,
    };
  }

  gIdx(): undefined {
    return undefined;
  }
}

function makeGrid(
  spec: FormatSpec,
  rows: number,
  cols: number,
  order: Int32Array | null,
  opts: GptqOptions,
  importance?: Float32Array,
) {
  if (importance && spec.kind !== 'ggml')
    fail(`GPTQ importance fits llama.cpp's block scales, not ${formatName(spec)}`);
  if (spec.kind === 'int') return new IntGrid(spec, rows, cols, order, opts);
  if (spec.kind === 'mx') return new MxGrid(spec, rows, cols, order, opts);
  if (isBlockFormat(spec)) return new BlockGrid(spec, rows, cols, order, opts, importance);
  if (spec.kind === 'ggml') return new GgmlGrid(spec, rows, cols, order, opts, importance);
  return fail(`GPTQ quantizes to INT, MX and llama.cpp formats, not ${formatName(spec)}`);
}

/** diag(H) / 2: each input channel's mean x^2 over the calibration tokens (H = 2/N sum x x^T). */
function channelImportance(H: ArrayLike<number>, cols: number): Float32Array {
  return Float32Array.from({ length: cols }, (_, c) => H[c * cols + c] / 2);
}

function resolveOptions(options: Partial<GptqOptions>): GptqOptions {
  const o: GptqOptions = { ...GPTQ_DEFAULTS };
  for (const key of Object.keys(GPTQ_DEFAULTS) as (keyof GptqOptions)[])
    if (options[key] !== undefined) (o as unknown as Record<string, unknown>)[key] = options[key];
  if (!(o.damp >= 0 && Number.isFinite(o.damp)))
    fail(`GPTQ damp must be a finite number >= 0, got ${o.damp}`);
  if (!Number.isInteger(o.blockSize) || o.blockSize < 1)
    fail(`GPTQ blockSize must be a positive integer, got ${o.blockSize}`);
  return o;
}

function checkInputs(weight: ArrayLike<number>, rows: number, cols: number, H: ArrayLike<number>): void {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1)
    fail(`GPTQ: rows and cols must be positive integers, got ${rows} x ${cols}`);
  if (weight.length !== rows * cols)
    fail(`GPTQ: got ${weight.length} weights for a ${rows} x ${cols} matrix`);
  if (H.length !== cols * cols)
    fail(`GPTQ: the Hessian must be ${cols} x ${cols} (one row per input channel), got ${H.length} values`);
  for (let i = 0; i < weight.length; i++)
    if (!Number.isFinite(weight[i]))
      fail(`GPTQ: non-finite weight ${weight[i]} at row ${Math.floor(i / cols)}, column ${i % cols}`);
  for (let i = 0; i < H.length; i++)
    if (!Number.isFinite(H[i]))
      fail(`GPTQ: non-finite Hessian entry ${H[i]} at (${Math.floor(i / cols)}, ${i % cols})`);
}

/** Columns by decreasing value, ties in column order. */
function orderByDecreasing(values: Float64Array): Int32Array {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => values[b] - values[a] || a - b);
  return Int32Array.from(idx);
}

/** Damped Hessian in processing order: h[o[a], o[b]], dead diagonals set to 1, plus damp on the diagonal. */
function dampedHessian(
  H: ArrayLike<number>,
  cols: number,
  order: Int32Array | null,
  diag: Float64Array,
  damp: number,
) {
  let mean = 0;
  for (let i = 0; i < cols; i++) mean += diag[i];
  const lambda = (damp * mean) / cols;
  const h = new Float64Array(cols * cols);
  for (let a = 0; a < cols; a++) {
    const src = (order ? order[a] : a) * cols;
    const dst = a * cols;
    if (order) for (let b = 0; b < cols; b++) h[dst + b] = H[src + order[b]];
    else for (let b = 0; b < cols; b++) h[dst + b] = H[src + b];
    h[dst + a] = diag[order ? order[a] : a] + lambda;
  }
  return h;
}

/**
 * Lazy-batch size: with dynamic groups (and exact parameters) a group must not straddle a block
 * end, since the later columns of the group would miss the block's pending updates when it is fitted.
 */
function lazyBlockSize(blockSize: number, span: number, stale: boolean): number {
  if (!span || stale) return blockSize;
  return span >= blockSize ? span : Math.floor(blockSize / span) * span;
}

/** What GPTQ derives from H alone: shared by every linear that reads the same input. */
export interface HessianFactor {
  cols: number;
  /** diag(H) with dead inputs (H[d, d] = 0) set to 1 */
  diag: Float64Array;
  deadColumns: number;
  /** processing order with actOrder, else null */
  order: Int32Array | null;
  /** upper Cholesky factor of the damped H^-1, in processing order */
  Hinv: Float64Array;
  /** options it was made with (damp, actOrder) */
  damp: number;
  actOrder: boolean;
  /** milliseconds it took */
  ms: number;
}

/** Dead columns, ordering, damping and the inverse factor of H (O(cols^3)). */
export function factorHessian(
  H: ArrayLike<number>,
  cols: number,
  options: Partial<GptqOptions> = {},
): HessianFactor {
  const opts = resolveOptions(options);
  const t0 = now();
  const diag = new Float64Array(cols);
  let deadColumns = 0;
  for (let c = 0; c < cols; c++) {
    diag[c] = H[c * cols + c];
    if (diag[c] !== 0) continue;
    diag[c] = 1;
    deadColumns++;
  }
  const order = opts.actOrder ? orderByDecreasing(diag) : null;
  const Hinv = choleskyInverseUpper(dampedHessian(H, cols, order, diag, opts.damp), cols, (p) =>
    fail(
      `GPTQ: the damped Hessian is not positive definite at input channel ${order ? order[p] : p}; ` +
        `raise damp (now ${opts.damp})`,
    ),
  );
  return { cols, diag, deadColumns, order, Hinv, damp: opts.damp, actOrder: opts.actOrder, ms: now() - t0 };
}

/**
 * GPTQ-quantizes a rows x cols (out x in, row-major) weight to `spec` given the layer Hessian H
 * (cols x cols, e.g. HessianAccumulator.finish()); neither input is modified. `factor` (from factorHessian on the same H with
 * the same damp and actOrder) skips the O(cols^3) part, e.g. for q/k/v, which share their input.
 */
export function gptq(
  weight: ArrayLike<number>,
  rows: number,
  cols: number,
  H: ArrayLike<number>,
  spec: FormatSpec,
  options: Partial<GptqOptions> = {},
  factor?: HessianFactor,
): GptqResult {
  const opts = resolveOptions(options);
  checkInputs(weight, rows, cols, H);
  if (factor && (factor.cols !== cols || factor.damp !== opts.damp || factor.actOrder !== opts.actOrder))
    throw new Error('gptq: the Hessian factor was made for other options');
  const f = factor ?? factorHessian(H, cols, opts);
  const t0 = now();
  const W = Float64Array.from(weight);
  for (let c = 0; c < cols; c++) {
    if (H[c * cols + c] !== 0) continue;
    for (let r = 0; r < rows; r++) W[r * cols + c] = 0;
  }
  const { order, Hinv } = f;
  const importance = opts.importance ? channelImportance(H, cols) : undefined;
  const grid = makeGrid(spec, rows, cols, order, opts, importance);
  grid.fitStatic(W);
  if (order) permuteColumns(W, rows, cols, order);
  const timings: GptqTimings = { inverse: (factor ? 0 : f.ms) + now() - t0, columns: 0, updates: 0 };

  const dequant = new Float32Array(rows * cols);
  const loss = walkColumns(W, rows, cols, Hinv, grid, order, dequant, opts, timings);
  const gIdx = grid.gIdx();
  return {
    dequant,
    encoded: grid.encoded(),
    ...(gIdx ? { gIdx } : {}),
    ...(order ? { perm: order } : {}),
    loss,
    deadColumns: f.deadColumns,
    timings,
  };
}

function permuteColumns(W: Float64Array, rows: number, cols: number, order: Int32Array): void {
  const tmp = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const ro = r * cols;
    for (let p = 0; p < cols; p++) tmp[p] = W[ro + order[p]];
    W.set(tmp, ro);
  }
}

/**
 * Columns quantized one by one inside a lazy block before their errors reach the rest of the block
 * through a matmul (a second level of lazy batching); B itself when groups would straddle sub-blocks.
 */
function subBlockSize(B: number, span: number, stale: boolean): number {
  const S = SUB_BLOCK;
  const aligned = stale || !span || span % S === 0 || S % span === 0;
  return B % S === 0 && aligned ? S : B;
}

const SUB_BLOCK = 16;

/** W[:, c0:c1] -= err[:, k0:k0+K] Hinv[h0:h0+K, c0:c1] (err has ldErr columns), via a transposed slab */
function propagate(
  W: Float64Array,
  rows: number,
  cols: number,
  Hinv: Float64Array,
  err: Float64Array,
  ldErr: number,
  k0: number,
  h0: number,
  K: number,
  c0: number,
  c1: number,
  slab: Float64Array,
): void {
  const m = c1 - c0;
  if (m <= 0) return;
  for (let k = 0; k < K; k++) {
    const ho = (h0 + k) * cols + c0;
    for (let j = 0; j < m; j++) slab[j * K + k] = Hinv[ho + j];
  }
  addMatmulNT(-1, W, c0, cols, err, k0, ldErr, slab, 0, K, rows, m, K);
}

/** Steps 5 and 6 of the header; returns the loss. W is in processing order and is consumed. */
function walkColumns(
  W: Float64Array,
  rows: number,
  cols: number,
  Hinv: Float64Array,
  grid: Grid,
  order: Int32Array | null,
  dequant: Float32Array,
  opts: GptqOptions,
  timings: GptqTimings,
): number {
  const span = grid.span;
  const stale = opts.staleGroupParams;
  const B = Math.min(cols, lazyBlockSize(opts.blockSize, span, stale));
  const S = subBlockSize(B, span, stale);
  const err = new Float64Array(rows * B);
  const slab = new Float64Array(Math.max(0, cols - S) * B);
  const snap = new Float64Array(stale ? rows * B : 0);
  const groupVals = new Float64Array(span);
  let loss = 0;
  for (let b0 = 0; b0 < cols; b0 += B) {
    const b1 = Math.min(cols, b0 + B);
    const bc = b1 - b0;
    const tc = now();
    if (stale) for (let r = 0; r < rows; r++) snap.set(W.subarray(r * cols + b0, r * cols + b1), r * bc);
    for (let s0 = b0; s0 < b1; s0 += S) {
      const s1 = Math.min(b1, s0 + S);
      for (let r = 0; r < rows; r++) {
        const ro = r * cols;
        const eo = r * bc - b0;
        for (let p = s0; p < s1; p++) {
          if (span && p % span === 0) {
            if (stale) {
              // the reference fits on W, whose columns of the current block lag behind its copy
              for (let t = 0; t < span; t++) groupVals[t] = p + t < b1 ? snap[eo + p + t] : W[ro + p + t];
              grid.fit(r, p, groupVals, 0, span);
            } else grid.fit(r, p, W, ro + p, span);
          }
          const w = W[ro + p];
          const c = order ? order[p] : p;
          const q = grid.quantize(r, c, p, w);
          dequant[r * cols + c] = q;
          const ho = p * cols;
          const e = (w - q) / Hinv[ho + p];
          loss += e * e;
          err[eo + p] = e;
          for (let j = p + 1; j < s1; j++) W[ro + j] -= e * Hinv[ho + j];
        }
      }
      propagate(W, rows, cols, Hinv, err, bc, s0 - b0, s0, s1 - s0, s1, b1, slab);
    }
    const tu = now();
    timings.columns += tu - tc;
    propagate(W, rows, cols, Hinv, err, bc, 0, b0, bc, b1, cols, slab);
    timings.updates += now() - tu;
  }
  return loss / 2;
}

/**
 * Dequantized weights of a GPTQ result from its codes alone (what a checkpoint stores): decode()
 * of formats/ when there is no gIdx, otherwise INT values with the scale/zero of [row, gIdx[c]].
 */
export function dequantizeGptq(encoded: Encoded, gIdx?: Int32Array): Float32Array {
  if (!gIdx) return decode(encoded);
  const { spec, rows, cols, codes, scales, zeros } = encoded;
  if (spec.kind !== 'int') fail(`dequantizeGptq: gIdx applies to INT groups only, not ${formatName(spec)}`);
  if (gIdx.length !== cols) fail(`dequantizeGptq: gIdx has ${gIdx.length} entries for ${cols} columns`);
  const groups = cols / encoded.block;
  const offset = spec.symmetric ? 2 ** (spec.bits - 1) : 0;
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const g = gIdx[c];
      if (!(g >= 0 && g < groups))
        fail(`dequantizeGptq: gIdx[${c}] = ${g} is not a group of 0..${groups - 1}`);
      const s = r * groups + g;
      out[r * cols + c] = intDequantize(codes[r * cols + c] - offset, scales[s], zeros ? zeros[s] : 0);
    }
  }
  return out;
}
