/**
 * llama.cpp's Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS,
 * IQ2_S, IQ1_S and IQ1_M blocks as an Encoded
 * weight: one code per value plus each block's remaining bytes (`headers`: Q5_0's and IQ4_NL's fp16 d;
 * Q4_1's and Q5_1's d and m; IQ4_XS's d and packed 6-bit sub-block scales; Q2_K's 16 bytes
 * of 4-bit scales and mins, d and dmin; Q3_K's 12 bytes of 6-bit scales and d; Q4_K's and Q5_K's d,
 * dmin and 12 bytes of 6-bit scales and mins; Q6_K's 16 int8 scales and fp16 d; IQ3_XXS's d and its
 * u32s of signs and 4-bit scales; IQ2_XXS's d and u32s of signs and scales; IQ3_S's, IQ2_XS's and
 * IQ2_S's d and 4-bit scales; IQ1_S's d and u16s of scales and shifts; IQ1_M's
 * index high bits and shifts, and scales and d), so the GGUF blocks
 * are rebuilt byte for byte from a checkpoint. Codes as the dequantizers read them: Q5_0 0..31
 * (x = (q - 16) d), Q4_1 0..15 and Q5_1 0..31 (x = q d + m), IQ4 0..15 (x = d level[q]), IQ3 / IQ2 0..15 (level l, +8 when negative: x = d level[q]), IQ1_S / IQ1_M 0..5 (level, +3 for the
 * downward shift), Q2_K 0..3, Q4_K 0..15 and Q5_K 0..31
 * (x = (d sc) q - dmin m), Q3_K 0..7 (x = (d sc) (q - 4)), Q6_K 0..63 (x = (d sc) (q - 32)). Rows must
 * hold whole blocks (32 or 256 values).
 */
import { fail } from '../errors.ts';
import {
  dequantizeQ2_K,
  dequantizeQ3_K,
  dequantizeQ4_1,
  dequantizeQ4_K,
  dequantizeQ5_0,
  dequantizeQ5_1,
  dequantizeQ5_K,
  dequantizeQ6_K,
  type GgmlGroupCodes,
  ggmlGroupValues,
  ggmlValues,
  packNibbles,
  packQ4_1Codes,
  packQ5_0Codes,
  packQ5_1Codes,
  Q4_1_BLOCK_BYTES,
  Q5_0_BLOCK_BYTES,
  Q5_1_BLOCK_BYTES,
  quantizeQ4_1,
  quantizeQ5_0,
  quantizeQ5_1,
  unpackQ2_K,
  unpackQ3_K,
  unpackQ4_1,
  unpackQ4_K,
  unpackQ5_0,
  unpackQ5_1,
  unpackQ5_K,
  unpackQ6_K,
} from './ggml.ts';
import {
  IQ1_M_BLOCK_BYTES,
  IQ1_S_BLOCK_BYTES,
  packIq1MCodes,
  packIq1SCodes,
  quantizeIq1M,
  quantizeIq1S,
  unpackIq1M,
  unpackIq1S,
} from './iq1.ts';
import {
  IQ2_S_BLOCK_BYTES,
  IQ2_XS_BLOCK_BYTES,
  IQ2_XXS_BLOCK_BYTES,
  packIq2SCodes,
  packIq2XsCodes,
  packIq2XxsCodes,
  quantizeIq2S,
  quantizeIq2Xs,
  quantizeIq2Xxs,
  unpackIq2S,
  unpackIq2Xs,
  unpackIq2Xxs,
} from './iq2.ts';
import {
  IQ3_S_BLOCK_BYTES,
  IQ3_XXS_BLOCK_BYTES,
  packIq3SCodes,
  packIq3XxsCodes,
  quantizeIq3S,
  quantizeIq3Xxs,
  unpackIq3S,
  unpackIq3Xxs,
} from './iq3.ts';
import {
  IQ4_NL_BLOCK_BYTES,
  IQ4_XS_BLOCK_BYTES,
  quantizeIq4Nl,
  quantizeIq4Xs,
  unpackIq4Nl,
  unpackIq4Xs,
} from './iq4.ts';
import {
  packQ2_KCodes,
  packQ3_KCodes,
  packQ4_KCodes,
  packQ5_KCodes,
  packQ6_KCodes,
  Q2_K_BLOCK_BYTES,
  Q3_K_BLOCK_BYTES,
  Q4_K_BLOCK_BYTES,
  Q5_K_BLOCK_BYTES,
  Q6_K_BLOCK_BYTES,
  QK_K,
  quantizeQ2_K,
  quantizeQ3_K,
  quantizeQ4_K,
  quantizeQ5_K,
  quantizeQ6_K,
} from './kquants.ts';
import { isLlamaMix } from './llama-mix.ts';
import type { FormatSpec, GgmlSpec } from './spec.ts';

export type GgmlBlockType =
  | 'q4_1'
  | 'q5_0'
  | 'q5_1'
  | 'q2_k'
  | 'q3_k'
  | 'q4_k'
  | 'q5_k'
  | 'q6_k'
  | 'iq4_nl'
  | 'iq4_xs'
  | 'iq3_xxs'
  | 'iq3_s'
  | 'iq2_xxs'
  | 'iq2_xs'
  | 'iq2_s'
  | 'iq1_s'
  | 'iq1_m';

interface Layout {
  /** values per block */
  values: number;
  bytes: number;
  /** [start, end) of each run of header bytes within a block */
  header: [number, number][];
  /** values sharing one scale */
  group: number;
  bits: number;
  /** llama.cpp's quantizer; with `importance` (one weight per column of rows of `cols`), its imatrix path */
  quantize(x: Float32Array, cols: number, importance?: Float32Array): Uint8Array;
  dequantize(bytes: Uint8Array): Float32Array;
  unpack(bytes: Uint8Array): GgmlGroupCodes;
  /** writes one block's code bytes from its codes at codes[at] */
  packCodes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void;
}

const LAYOUTS: Record<GgmlBlockType, Layout> = {
  q4_1: {
    values: 32,
    bytes: Q4_1_BLOCK_BYTES,
    header: [[0, 4]],
    group: 32,
    bits: 4,
    quantize: (x, cols, importance) => quantizeQ4_1(x, importance && { importance, cols }),
    dequantize: (b) => dequantizeQ4_1(b),
    unpack: (b) => unpackQ4_1(b),
    packCodes: packQ4_1Codes,
  },
  q5_0: {
    values: 32,
    bytes: Q5_0_BLOCK_BYTES,
    header: [[0, 2]],
    group: 32,
    bits: 5,
    quantize: (x, cols, importance) => quantizeQ5_0(x, importance && { importance, cols }),
    dequantize: (b) => dequantizeQ5_0(b),
    unpack: (b) => unpackQ5_0(b),
    packCodes: packQ5_0Codes,
  },
  q5_1: {
    values: 32,
    bytes: Q5_1_BLOCK_BYTES,
    header: [[0, 4]],
    group: 32,
    bits: 5,
    quantize: (x, cols, importance) => quantizeQ5_1(x, importance && { importance, cols }),
    dequantize: (b) => dequantizeQ5_1(b),
    unpack: (b) => unpackQ5_1(b),
    packCodes: packQ5_1Codes,
  },
  q2_k: {
    values: QK_K,
    bytes: Q2_K_BLOCK_BYTES,
    header: [
      [0, 16],
      [80, 84],
    ],
    group: 16,
    bits: 2,
    quantize: (x, cols, importance) => quantizeQ2_K(x, importance && { importance, cols }),
    dequantize: (b) => dequantizeQ2_K(b),
    unpack: (b) => unpackQ2_K(b),
    packCodes: packQ2_KCodes,
  },
  q3_k: {
    values: QK_K,
    bytes: Q3_K_BLOCK_BYTES,
    header: [[96, 110]],
    group: 16,
    bits: 3,
    quantize: (x, cols, importance) => quantizeQ3_K(x, importance && { importance, cols }),
    dequantize: (b) => dequantizeQ3_K(b),
    unpack: (b) => unpackQ3_K(b),
    packCodes: packQ3_KCodes,
  },
  q4_k: {
    values: QK_K,
    bytes: Q4_K_BLOCK_BYTES,
    header: [[0, 16]],
    group: 32,
    bits: 4,
    quantize: (x, cols, importance) => quantizeQ4_K(x, importance && { importance, cols }),
    dequantize: (b) => dequantizeQ4_K(b),
    unpack: (b) => unpackQ4_K(b),
    packCodes: packQ4_KCodes,
  },
  q5_k: {
    values: QK_K,
    bytes: Q5_K_BLOCK_BYTES,
    header: [[0, 16]],
    group: 32,
    bits: 5,
    quantize: (x, cols, importance) => quantizeQ5_K(x, importance && { importance, cols }),
    dequantize: (b) => dequantizeQ5_K(b),
    unpack: (b) => unpackQ5_K(b),
    packCodes: packQ5_KCodes,
  },
  q6_k: {
    values: QK_K,
    bytes: Q6_K_BLOCK_BYTES,
    header: [[192, 210]],
    group: 16,
    bits: 6,
    quantize: (x, cols, importance) => quantizeQ6_K(x, importance && { importance, cols }),
    dequantize: (b) => dequantizeQ6_K(b),
    unpack: (b) => unpackQ6_K(b),
    packCodes: packQ6_KCodes,
  },
  iq4_nl: {
    values: 32,
    bytes: IQ4_NL_BLOCK_BYTES,
    header: [[0, 2]],
    group: 32,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq4Nl(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq4Nl(b)),
    unpack: (b) => unpackIq4Nl(b),
    packCodes: (codes, at, out, o) => packNibbles(codes, at, out, o + 2),
  },
  iq4_xs: {
    values: QK_K,
    bytes: IQ4_XS_BLOCK_BYTES,
    header: [[0, 8]],
    group: 32,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq4Xs(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq4Xs(b)),
    unpack: (b) => unpackIq4Xs(b),
    packCodes: (codes, at, out, o) => {
      for (let s = 0; s < QK_K / 32; s++) packNibbles(codes, at + 32 * s, out, o + 8 + 16 * s);
    },
  },
  iq3_xxs: {
    values: QK_K,
    bytes: IQ3_XXS_BLOCK_BYTES,
    // d, and the u32s of sign masks and 4-bit scales (packCodes rewrites their sign bits)
    header: [
      [0, 2],
      [66, 98],
    ],
    group: 32,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq3Xxs(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq3Xxs(b)),
    unpack: (b) => unpackIq3Xxs(b),
    packCodes: packIq3XxsCodes,
  },
  iq3_s: {
    values: QK_K,
    bytes: IQ3_S_BLOCK_BYTES,
    header: [
      [0, 2],
      [106, 110],
    ],
    group: 32,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq3S(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq3S(b)),
    unpack: (b) => unpackIq3S(b),
    packCodes: packIq3SCodes,
  },
  iq2_xxs: {
    values: QK_K,
    bytes: IQ2_XXS_BLOCK_BYTES,
    // d, and each 32's u32 of sign masks and 4-bit scale (packCodes rewrites its sign bits)
    header: [[0, 2], ...Array.from({ length: 8 }, (_, ib): [number, number] => [6 + 8 * ib, 10 + 8 * ib])],
    group: 32,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq2Xxs(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq2Xxs(b)),
    unpack: (b) => unpackIq2Xxs(b),
    packCodes: packIq2XxsCodes,
  },
  iq2_xs: {
    values: QK_K,
    bytes: IQ2_XS_BLOCK_BYTES,
    header: [
      [0, 2],
      [66, 74],
    ],
    group: 16,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq2Xs(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq2Xs(b)),
    unpack: (b) => unpackIq2Xs(b),
    packCodes: packIq2XsCodes,
  },
  iq2_s: {
    values: QK_K,
    bytes: IQ2_S_BLOCK_BYTES,
    header: [
      [0, 2],
      [74, 82],
    ],
    group: 16,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq2S(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq2S(b)),
    unpack: (b) => unpackIq2S(b),
    packCodes: packIq2SCodes,
  },
  iq1_s: {
    values: QK_K,
    bytes: IQ1_S_BLOCK_BYTES,
    // d, and each 32's u16 of index high bits, 3-bit scale and shift (packCodes rewrites the index bits)
    header: [
      [0, 2],
      [34, 50],
    ],
    group: 32,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq1S(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq1S(b)),
    unpack: (b) => unpackIq1S(b),
    packCodes: packIq1SCodes,
  },
  iq1_m: {
    values: QK_K,
    bytes: IQ1_M_BLOCK_BYTES,
    // the index high bits' bytes (with the shift bits) and the scales with d
    header: [[32, 56]],
    group: 16,
    bits: 4,
    quantize: (x, cols, importance) => quantizeIq1M(x, importance && { importance, cols }),
    dequantize: (b) => ggmlGroupValues(unpackIq1M(b)),
    unpack: (b) => unpackIq1M(b),
    packCodes: packIq1MCodes,
  },
};

const LATTICE_TYPES: readonly string[] = ['iq3_xxs', 'iq3_s', 'iq2_xxs', 'iq2_xs', 'iq2_s', 'iq1_s', 'iq1_m'];

/** The types whose codes are grid points of 4 or 8 values (IQ3, IQ2, IQ1), not one rounding per value. */
export function isLatticeType(type: string): boolean {
  return LATTICE_TYPES.includes(type);
}

export function isGgmlBlockType(type: string): type is GgmlBlockType {
  return type in LAYOUTS;
}

/** A llama.cpp format kept as codes plus block bytes: Q5_0, Q5_1 or a K-quant (not Q4_0 / Q8_0). */
export function isBlockFormat(spec: FormatSpec): spec is GgmlSpec & { type: GgmlBlockType } {
  return spec.kind === 'ggml' && isGgmlBlockType(spec.type);
}

/** A block format, or a llama-quantize mix (q4_k_m ...) that resolves to block formats per tensor. */
export function isBlockFormatOrMix(spec: FormatSpec): spec is GgmlSpec {
  return isBlockFormat(spec) || (spec.kind === 'ggml' && isLlamaMix(spec.type));
}

/** Values per block of a type (rows must be a multiple), bytes per block, values per scale, bits per code. */
export function ggmlBlockLayout(type: GgmlBlockType): {
  values: number;
  bytes: number;
  group: number;
  bits: number;
} {
  const { values, bytes, group, bits } = LAYOUTS[type];
  return { values, bytes, group, bits };
}

/** Header bytes per block: the lengths of its runs. */
function headerBytes(lay: Layout): number {
  return lay.header.reduce((sum, [h0, h1]) => sum + h1 - h0, 0);
}

/** A block's header runs, packed one after another at `at`, copied out of its block at `o` or into it. */
function copyHeader(
  lay: Layout,
  headers: Uint8Array,
  at: number,
  block: Uint8Array,
  o: number,
  way: 'in' | 'out',
) {
  let h = at;
  for (const [h0, h1] of lay.header) {
    if (way === 'out') headers.set(block.subarray(o + h0, o + h1), h);
    else block.set(headers.subarray(h, h + h1 - h0), o + h0);
    h += h1 - h0;
  }
}

/** x (rows of `cols`) as the type's GGUF blocks, by llama.cpp's quantizer (its imatrix path with `importance`). */
export function quantizeGgmlBlocks(
  x: ArrayLike<number>,
  cols: number,
  type: GgmlBlockType,
  importance?: Float32Array,
  where = 'encode',
): Uint8Array {
  const lay = LAYOUTS[type];
  return lay.quantize(ggmlValues(x, cols, type, where, lay.values), cols, importance);
}

/**
 * Codes and group parameters (as the dequantizer forms them) and header bytes of x quantized as
 * llama.cpp does; `blocks`: those bytes already made from x (block-workers.ts).
 */
export function encodeGgmlBlocks(
  x: ArrayLike<number>,
  cols: number,
  type: GgmlBlockType,
  importance?: Float32Array,
  blocks?: Uint8Array,
): { groups: GgmlGroupCodes; headers: Uint8Array } {
  const lay = LAYOUTS[type];
  const bytes = blocks ?? quantizeGgmlBlocks(x, cols, type, importance);
  const per = headerBytes(lay);
  const count = bytes.length / lay.bytes;
  const headers = new Uint8Array(count * per);
  for (let b = 0; b < count; b++) copyHeader(lay, headers, b * per, bytes, b * lay.bytes, 'out');
  return { groups: lay.unpack(bytes), headers };
}

/** The GGUF blocks of codes and headers as encodeGgmlBlocks gives them. */
export function ggmlBlockBytes(codes: Uint8Array, headers: Uint8Array, type: GgmlBlockType): Uint8Array {
  const lay = LAYOUTS[type];
  const blocks = codes.length / lay.values;
  const per = headerBytes(lay);
  if (!Number.isInteger(blocks) || headers.length !== blocks * per)
    fail(`${type}: ${codes.length} codes and ${headers.length} header bytes are not whole blocks`);
  const out = new Uint8Array(blocks * lay.bytes);
  for (let b = 0; b < blocks; b++) {
    copyHeader(lay, headers, b * per, out, b * lay.bytes, 'in');
    lay.packCodes(codes, b * lay.values, out, b * lay.bytes);
  }
  return out;
}

/** Encoded blocks as one code per value plus the group parameters their dequantizer forms. */
export function unpackEncodedBlocks(
  codes: Uint8Array,
  headers: Uint8Array,
  type: GgmlBlockType,
): GgmlGroupCodes {
  return LAYOUTS[type].unpack(ggmlBlockBytes(codes, headers, type));
}

/** Values of encoded blocks: bit-identical to fakeQuantGgmlBlocks of the encoded input. */
export function decodeGgmlBlocks(codes: Uint8Array, headers: Uint8Array, type: GgmlBlockType): Float32Array {
  return LAYOUTS[type].dequantize(ggmlBlockBytes(codes, headers, type));
}

/** Quantize-dequantize with llama.cpp's reference quantizer of the type; `blocks` as in encodeGgmlBlocks. */
export function fakeQuantGgmlBlocks(
  x: ArrayLike<number>,
  cols: number,
  type: GgmlBlockType,
  blocks?: Uint8Array,
): Float32Array {
  return LAYOUTS[type].dequantize(blocks ?? quantizeGgmlBlocks(x, cols, type, undefined, 'fakeQuant'));
}
