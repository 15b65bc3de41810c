/**
 * Weight-only integer formats (RTN, AWQ, GPTQ, with act_order's g_idx too) executed from their codes:
 * the GEMM decodes (code - zero) * scale while it loads the weight tile, so the device holds 4-bit
 * (formats of 2-4 bits) or 8-bit codes plus the scales instead of f32 values: 1/8 or 1/4 of the
 * memory, and bit-identical results (the decoded values are exactly the fake-quantized ones).
 * llama.cpp's other block formats (Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K: from GGUF files as
 * `blockCodes`, from llmq checkpoints as their encoded blocks) run the same way; those whose
 * dequantizer adds a min (x = q d + m: Q4_1, Q5_1, Q4_K, Q5_K) are then one rounding away from the
 * dequantized values, since the GEMM evaluates (q - z) d with z = -m / d. IQ4_NL / IQ4_XS, whose codes
 * index a non-linear grid, decode levels[q] d: exactly their dequantized values; IQ3_XXS / IQ3_S the same
 * with a 4-bit code per weight (level and sign) on 16 signed levels and a scale per 32 (IQ2_XXS / IQ2_XS /
 * IQ2_S: 32 / 16 / 16; IQ1_S / IQ1_M: a code per weight for its level and its group's shift).
 * Where every group has the same zero point (symmetric INT, Q4_0 / Q8_0, IQ4 and the IQ grids) it is one
 * number compiled into the kernel, not an f32 a group: a 32-value group then costs 4 bits a weight of codes
 * plus 1 of scale (was 2 with its zero), a 128-value group 4.25. Scales that f16 holds exactly (the fp16 d
 * of Q4_0, Q8_0, IQ4_NL) are stored as f16: those three then take their file's size, 4.5 / 8.5 / 4.5 bits.
 */
import { fail } from '../errors.ts';
import { type GgmlGroupCodes, ggmlCodeOffset } from '../formats/ggml.ts';
import { isBlockFormat, unpackEncodedBlocks } from '../formats/ggml-codes.ts';
import { type Encoded, packCodes } from '../formats/index.ts';
import { f16ToF32, numberToF16Bits } from '../tensor/dtype.ts';
import type { Backend, PackedWeight, Tensor } from '../tensor/tensor.ts';
import { LINEARS, type Linear, type LlamaModel } from './llama.ts';

/**
 * Whether a linear's stored weight can be packed: INT per group (g_idx too) or row, or a llama.cpp
 * block format (codes minus a fixed offset or the block's min, times its scale); no salient columns.
 */
export function packable(lin: Pick<Linear, 'quantized' | 'blockCodes'>): boolean {
  if (lin.blockCodes) return true;
  const q = lin.quantized;
  if (!q || q.salient) return false;
  const spec = q.encoded.spec;
  if (spec.kind === 'ggml') return true;
  if (spec.kind !== 'int') return false;
  if (spec.granularity === 'tensor' || spec.bits > 8) return false;
  if (q.gIdx && spec.granularity !== 'group') return false;
  const per = 32 / (spec.bits <= 4 ? 4 : 8);
  return q.encoded.cols % per === 0;
}

/**
 * Which stored linears may skip their f32 weight on the device because they will run from codes
 * (int8 GEMM, packed GEMM); what `codesOnlyWeight` then stands in for.
 */
export type CodesOnly = (lin: Pick<Linear, 'quantized' | 'inputQuant' | 'blockCodes'>) => boolean;

/** A weight in a block format as codes and per-group scale and zero: x = (code - zero) * scale. */
export interface BlockCodes {
  rows: number;
  cols: number;
  /** one code per value, row-major */
  codes: Uint8Array;
  /** bits a code needs (at most 8) */
  bits: number;
  /** consecutive values of a row sharing a scale and zero */
  group: number;
  scales: Float32Array;
  zeros: Float32Array;
  /** IQ4's non-linear grid: x = levels[code] * scale (zeros 0) */
  levels?: Int8Array;
}

/**
 * Unpacked block data as BlockCodes (undefined when a parameter is not finite). A group whose scale
 * is 0 and min m is not (a K-quant sub-block whose 6-bit scale rounded to 0) holds m everywhere:
 * it becomes codes 1, zero 0, scale m.
 */
export function blockCodes(u: GgmlGroupCodes, rows: number, cols: number): BlockCodes | undefined {
  if (cols % u.group !== 0) return undefined;
  let codes = u.codes;
  const scales = u.scales.slice();
  const zeros = new Float32Array(scales.length).fill(u.zero);
  for (let g = 0; u.mins && g < zeros.length; g++) {
    const min = u.mins[g];
    if (min === 0) zeros[g] = 0;
    else if (scales[g] !== 0) zeros[g] = -min / scales[g];
    else {
      if (codes === u.codes) codes = codes.slice();
      codes.fill(1, g * u.group, (g + 1) * u.group);
      [scales[g], zeros[g]] = [min, 0];
    }
  }
  for (let g = 0; g < zeros.length; g++)
    if (!Number.isFinite(scales[g]) || !Number.isFinite(zeros[g])) return undefined;
  return { rows, cols, codes, bits: u.bits, group: u.group, scales, zeros, levels: u.levels };
}

/**
 * A weight that exists only as codes: the shape, no data. Loading a quantized checkpoint this way never
 * materializes f32 copies (an 8B W4 model: ~4.5 GB on the GPU instead of 32 GB); the model may then
 * only run its forward pass from the codes (int8/packed paths), and any op on this tensor fails.
 */
export function codesOnlyWeight(backend: Backend, rows: number, cols: number): Tensor {
  return { backend, shape: [rows, cols], dtype: 'f32', dispose: () => {} };
}

/** The stored code bits and the zero point of every scale group of a packable weight. */
function codeLayout(enc: Encoded): { codeBits: 4 | 8; zeros: Float32Array } {
  const spec = enc.spec;
  const groups = enc.scales.length;
  const codeBits = enc.bits <= 4 ? 4 : 8;
  if (spec.kind === 'ggml') return { codeBits, zeros: new Float32Array(groups).fill(ggmlCodeOffset(spec)) };
  if (spec.kind !== 'int') return fail(`packed weights: ${spec.kind} codes cannot be packed`);
  const zeros = spec.symmetric
    ? new Float32Array(groups).fill(2 ** (spec.bits - 1))
    : Float32Array.from(enc.zeros as Uint8Array);
  return { codeBits, zeros };
}

function packOne(model: LlamaModel, enc: Encoded, gIdx: Int32Array | undefined): PackedWeight {
  const { codeBits, zeros } = codeLayout(enc);
  return upload(model.backend, { ...enc, zeros }, codeBits, gIdx);
}

function upload(
  b: Backend,
  w: Pick<BlockCodes, 'rows' | 'cols' | 'codes' | 'scales' | 'zeros' | 'levels'>,
  codeBits: 4 | 8,
  gIdx?: Int32Array,
): PackedWeight {
  const groups = w.scales.length;
  return {
    // the little-endian bit stream of packCodes, read as 32-bit words: code k at bits (k % per) * codeBits
    codes: b.upload(
      new Int32Array(packCodes(w.codes, codeBits).buffer),
      [w.rows, (w.cols * codeBits) / 32],
      'i32',
    ),
    scales: uploadScales(b, w.scales),
    zeros: sameValue(w.zeros) ?? b.upload(w.zeros, [groups], 'f32'),
    rows: w.rows,
    cols: w.cols,
    codeBits,
    group: (w.rows * w.cols) / groups,
    ...(gIdx ? { groupOf: b.upload(gIdx, [gIdx.length], 'i32') } : {}),
    ...(w.levels ? { levels: w.levels } : {}),
  };
}

/** Scales as f16 where f16 holds every one exactly (llama.cpp's fp16 d: Q4_0, Q8_0, IQ4_NL), else f32. */
function uploadScales(b: Backend, scales: Float32Array): Tensor {
  const bits = Uint16Array.from(scales, numberToF16Bits);
  return f16ToF32(bits).every((v, i) => Object.is(v, scales[i]))
    ? b.upload(bits, [scales.length], 'f16')
    : b.upload(scales, [scales.length], 'f32');
}

/** The value every element of `v` holds, or undefined where they differ. */
function sameValue(v: Float32Array): number | undefined {
  return v.every((z) => z === v[0]) ? v[0] : undefined;
}

/** A checkpoint's Q4_1 / Q5_0 / Q5_1 / K-quant / IQ4 weight as BlockCodes; undefined for other formats. */
function encodedBlockCodes(enc: Encoded): BlockCodes | undefined {
  const spec = enc.spec;
  if (!isBlockFormat(spec)) return undefined;
  const u = unpackEncodedBlocks(enc.codes, enc.scaleCodes ?? new Uint8Array(0), spec.type);
  const rows = enc.codes.length / enc.cols;
  return (
    blockCodes(u, rows, enc.cols) ?? fail(`packed weights: a ${spec.type} weight has a non-finite scale`)
  );
}

/**
 * Packs every packable linear that is not already on the int8 path; with `dropDense` the f32 weights
 * are freed (then only the forward pass without hooks may use the model). Returns how many.
 */
export function usePackedWeights(model: LlamaModel, dropDense: boolean): number {
  let count = 0;
  for (const layer of model.layers)
    for (const name of LINEARS) {
      const lin = layer.linears[name];
      if (!lin.packed && !lin.int8 && packable(lin)) {
        const bc = lin.blockCodes ?? encodedBlockCodes(lin.quantized!.encoded);
        lin.packed = bc
          ? upload(model.backend, bc, bc.bits <= 4 ? 4 : 8)
          : packOne(model, lin.quantized!.encoded, lin.quantized!.gIdx);
        lin.blockCodes = undefined;
        count++;
      }
      if (dropDense && (lin.packed || lin.int8)) lin.weight.dispose();
    }
  return count;
}
