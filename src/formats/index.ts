/**
 * Number formats: fake quantization, encoding to integer codes + scales, decoding, bit packing,
 * short names. One file per family: int.ts, mx.ts, fp8.ts, nvfp4.ts (element casts in
 * minifloat.ts, rounding in rounding.ts); this file dispatches on FormatSpec.kind.
 *
 * Matrices are row-major rows x cols Float32Arrays; scales / blocks / groups run along the last
 * dimension (cols). Rows are independent except where a scale spans the tensor (INT 'tensor',
 * FP8 'tensor', the NVFP4 global scale).
 *
 * Behaviour shared by every format:
 * - NaN inputs give NaN outputs for that element only; scales ignore NaN and +-Infinity;
 *   +-Infinity saturates to the largest magnitude of its group/block grid (with its sign).
 * - encode() refuses NaN with a one-line error (integer codes cannot hold it); everything else,
 *   Infinity included, round-trips: decode(encode(x)) is bit-identical to fakeQuantRows(x).
 * - Zeros: INT and MXINT results are +0; FP element formats (MXFP, FP8, NVFP4) keep the sign of
 *   zero (a tiny negative value becomes -0, as a hardware cast does).
 */
import { fail } from '../errors.ts';
import { quantizeBlocksInParallel } from './block-workers.ts';
import { decodeFp8, encodeFp8, fakeQuantFp8 } from './fp8.ts';
import { decodeGgml, encodeGgml, fakeQuantGgml, QK } from './ggml.ts';
import {
  decodeGgmlBlocks,
  encodeGgmlBlocks,
  fakeQuantGgmlBlocks,
  ggmlBlockLayout,
  isGgmlBlockType,
} from './ggml-codes.ts';
import { checkIntBits, decodeInt, encodeInt, fakeQuantInt, intLayout } from './int.ts';
import { isLlamaMix, LLAMA_MIXES } from './llama-mix.ts';
import { checkMxSpec, decodeMx, encodeMx, fakeQuantMx, mxElementInfo } from './mx.ts';
import { decodeNvfp4, encodeNvfp4, fakeQuantNvfp4, NVFP4_BLOCK } from './nvfp4.ts';
import { pow2 } from './rounding.ts';
import type { FormatSpec, GgmlSpec, IntSpec, MxElement, MxSpec } from './spec.ts';

export * from './fp8.ts';
export * from './int.ts';
export * from './minifloat.ts';
export * from './mx.ts';
export * from './nvfp4.ts';
export * from './rounding.ts';
export type {
  FormatSpec,
  Fp8Spec,
  GgmlSpec,
  Granularity,
  IntSpec,
  MxElement,
  MxSpec,
  Nvfp4Spec,
} from './spec.ts';

function checkShape(x: ArrayLike<number>, rows: number, cols: number, where: string): void {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 0 || cols < 0) {
    fail(`${where}: rows and cols must be non-negative integers, got ${rows} x ${cols}`);
  }
  if (x.length !== rows * cols) fail(`${where}: got ${x.length} values for a ${rows} x ${cols} matrix`);
}

/**
 * Quantize then dequantize a rows x cols row-major matrix with `spec`; returns a new array.
 * For INT formats, spec.clip shrinks the range (AWQ clip search); GPTQ's include-zero range is
 * available through fakeQuantInt(..., { includeZero: true }).
 */
export function fakeQuantRows(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: FormatSpec,
): Float32Array {
  checkShape(x, rows, cols, 'fakeQuantRows');
  switch (spec.kind) {
    case 'int':
      return fakeQuantInt(x, rows, cols, spec);
    case 'mx':
      return fakeQuantMx(x, rows, cols, spec);
    case 'fp8':
      return fakeQuantFp8(x, rows, cols, spec);
    case 'nvfp4':
      return fakeQuantNvfp4(x, rows, cols);
    case 'ggml': {
      const type = concreteGgml(spec, 'fakeQuant').type;
      return isGgmlBlockType(type) ? fakeQuantGgmlBlocks(x, cols, type) : fakeQuantGgml(x, cols, spec);
    }
    default:
      return fail(`unknown format kind '${(spec as { kind: string }).kind}'`);
  }
}

/**
 * fakeQuantRows, with llama.cpp's block quantizers spread over worker threads where there are some
 * (block-workers.ts; the same values).
 */
export async function fakeQuantRowsAsync(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: FormatSpec,
): Promise<Float32Array> {
  checkShape(x, rows, cols, 'fakeQuantRows');
  if (spec.kind !== 'ggml' || !isGgmlBlockType(spec.type)) return fakeQuantRows(x, rows, cols, spec);
  const blocks = await quantizeBlocksInParallel(spec.type, x, cols);
  return fakeQuantGgmlBlocks(x, cols, spec.type, blocks);
}

/** encode, with llama.cpp's block quantizers spread over worker threads as fakeQuantRowsAsync. */
export async function encodeAsync(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: FormatSpec,
  importance?: Float32Array,
): Promise<Encoded> {
  checkShape(x, rows, cols, 'encode');
  const blocks =
    spec.kind === 'ggml' && isGgmlBlockType(spec.type)
      ? await quantizeBlocksInParallel(spec.type, x, cols, importance)
      : undefined;
  return encode(x, rows, cols, spec, importance, blocks);
}

/** Whether llama.cpp's quantizer of this type has an importance (imatrix) path: every type but Q8_0. */
export function takesImportance(spec: FormatSpec): spec is GgmlSpec {
  return spec.kind === 'ggml' && (isGgmlBlockType(spec.type) || spec.type === 'q4_0');
}

/** Bits of one element code. */
export function codeBits(spec: FormatSpec): number {
  switch (spec.kind) {
    case 'int':
      return spec.bits;
    case 'mx':
      return mxElementInfo(spec.element).bits;
    case 'fp8':
      return 8;
    case 'nvfp4':
      return 4;
    case 'ggml': {
      const type = concreteGgml(spec, 'codeBits').type;
      if (isGgmlBlockType(type)) return ggmlBlockLayout(type).bits;
      return type === 'q4_0' ? 4 : 8;
    }
  }
}

/** A llama.cpp block type; a mix (q4_k_m ...) names one per tensor and is resolved by the recipe first. */
function concreteGgml(spec: GgmlSpec, what: string): GgmlSpec {
  if (isLlamaMix(spec.type))
    fail(
      `${what}: ${spec.type} is llama-quantize's per-tensor mix of llama.cpp types; a recipe picks each linear's type (q2_k, q3_k, q4_k, q5_k, q6_k, q4_0, q4_1, q5_0, q5_1, q8_0, iq4_nl, iq4_xs, iq3_xxs, iq3_s, iq2_xxs, iq2_xs, iq2_s, iq1_s, iq1_m)`,
    );
  return spec;
}

/**
 * Storage form of a quantized matrix. `codes` holds one code per element (row-major), `bits` wide:
 * - int: asymmetric q in [0, 2^b-1] with `zeros`; symmetric offset binary q + 2^(b-1);
 * - mx: MXINT d-bit two's complement / MXFP OCP bit patterns, with `exponents` (E8M0 = e + 127);
 * - fp8: E4M3 / E5M2 bit patterns;
 * - nvfp4: E2M1 patterns, `scaleCodes` (E4M3 per 16 elements) and `globalScale`;
 * - ggml: q4_0 codes 0..15 (x = (q - 8) d), q8_0 int8 + 128, one fp16-valued d per 32 elements;
 *   q4_1, q5_0, q5_1, K-quants, IQ4: the dequantizer's codes, `scales` as it forms them, and each block's other
 *   bytes in `scaleCodes` (formats/ggml-codes.ts), from which the GGUF blocks are rebuilt exactly.
 * `scales` has one f32 per group/block/row/tensor, row-major: the INT / FP8 scale, 2^e for MX,
 * the decoded E4M3 block scale for NVFP4 (without the global factor).
 */
export interface Encoded {
  spec: FormatSpec;
  rows: number;
  cols: number;
  /** width of one element code in bits (for packCodes) */
  bits: number;
  codes: Uint8Array;
  /** consecutive elements sharing one scale (rows * cols for per-tensor scales) */
  block: number;
  scales: Float32Array;
  /** INT asymmetric zero points, one per scale */
  zeros?: Uint8Array;
  /** MX unbiased shared exponents, one per block */
  exponents?: Int16Array;
  /** NVFP4 E4M3 block-scale patterns */
  scaleCodes?: Uint8Array;
  /** NVFP4 f32 per-tensor scale */
  globalScale?: number;
}

/**
 * Integer codes + scales of x (see Encoded). NaN inputs are refused. `importance` (one weight per column,
 * llama.cpp's importance matrix) steers the quantizers of llama.cpp's types that have an importance path
 * (all but q8_0); other formats refuse it.
 */
export function encode(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  spec: FormatSpec,
  importance?: Float32Array,
  /** llama.cpp block types: x's blocks already made (encodeAsync) */
  blocks?: Uint8Array,
): Encoded {
  checkShape(x, rows, cols, 'encode');
  const base = { spec, rows, cols, bits: codeBits(spec) };
  if (importance && !takesImportance(spec))
    fail(
      `encode: an importance matrix applies to llama.cpp's q4_0, q4_1, q5_0, q5_1, K-quant and IQ4 types, not ${formatName(spec)}`,
    );
  if (importance && importance.length !== cols)
    fail(`encode: ${importance.length} importance values for rows of ${cols}`);
  switch (spec.kind) {
    case 'int': {
      const e = encodeInt(x, rows, cols, spec);
      return {
        ...base,
        codes: e.codes,
        block: e.block,
        scales: e.scales,
        ...(e.zeros ? { zeros: e.zeros } : {}),
      };
    }
    case 'mx': {
      const e = encodeMx(x, rows, cols, spec);
      const scales = new Float32Array(e.exponents.length);
      for (let b = 0; b < scales.length; b++) scales[b] = pow2(e.exponents[b]);
      return { ...base, codes: e.codes, block: spec.block, scales, exponents: e.exponents };
    }
    case 'fp8': {
      const e = encodeFp8(x, rows, cols, spec);
      const block = spec.granularity === 'tensor' ? rows * cols : cols;
      return { ...base, codes: e.codes, block, scales: e.scales };
    }
    case 'nvfp4': {
      const e = encodeNvfp4(x, rows, cols);
      return {
        ...base,
        codes: e.codes,
        block: NVFP4_BLOCK,
        scales: e.scales,
        scaleCodes: e.scaleCodes,
        globalScale: e.globalScale,
      };
    }
    case 'ggml': {
      const type = concreteGgml(spec, 'encode').type;
      if (isGgmlBlockType(type)) {
        const { groups, headers } = encodeGgmlBlocks(x, cols, type, importance, blocks);
        return {
          ...base,
          codes: groups.codes,
          block: groups.group,
          scales: groups.scales,
          scaleCodes: headers,
        };
      }
      const e = encodeGgml(x, cols, spec, importance);
      return { ...base, codes: e.codes, block: QK, scales: e.scales };
    }
    default:
      return fail(`unknown format kind '${(spec as { kind: string }).kind}'`);
  }
}

function checkCount(what: string, found: number, blocks: number, block: number): void {
  const need = block > 0 ? blocks / block : 0;
  if (found !== need)
    fail(`decode: ${found} ${what} for ${blocks} values in blocks of ${block}, expected ${need}`);
}

/** Values of encoded data; bit-identical to fakeQuantRows of the encoded input. */
export function decode(enc: Encoded): Float32Array {
  const { spec, rows, cols } = enc;
  const n = rows * cols;
  if (enc.codes.length !== n) fail(`decode: ${enc.codes.length} codes for a ${rows} x ${cols} matrix`);
  switch (spec.kind) {
    case 'int': {
      const { block } = intLayout(rows, cols, spec);
      checkCount('scales', enc.scales.length, n, block);
      if (!spec.symmetric) {
        if (!enc.zeros) fail('decode: asymmetric INT data without zero points');
        checkCount('zero points', enc.zeros.length, n, block);
      }
      return decodeInt(
        { codes: enc.codes, scales: enc.scales, zeros: enc.zeros, block },
        spec.bits,
        spec.symmetric,
      );
    }
    case 'mx':
      checkMxSpec(cols, spec);
      if (!enc.exponents) fail('decode: MX data without shared exponents');
      checkCount('shared exponents', enc.exponents.length, n, spec.block);
      return decodeMx({ codes: enc.codes, exponents: enc.exponents }, spec);
    case 'fp8':
      if (enc.scales.length !== (spec.granularity === 'tensor' ? 1 : rows))
        fail(`decode: ${enc.scales.length} FP8 scales for ${spec.granularity} scaling of ${rows} rows`);
      return decodeFp8({ codes: enc.codes, scales: enc.scales }, rows, cols, spec);
    case 'nvfp4':
      if (!enc.scaleCodes || enc.globalScale === undefined)
        fail('decode: NVFP4 data without block/global scales');
      checkCount('block scales', enc.scaleCodes.length, n, NVFP4_BLOCK);
      return decodeNvfp4({
        codes: enc.codes,
        scaleCodes: enc.scaleCodes,
        scales: enc.scales,
        globalScale: enc.globalScale,
      });
    case 'ggml': {
      const type = concreteGgml(spec, 'decode').type;
      if (!isGgmlBlockType(type)) {
        checkCount('block scales', enc.scales.length, n, QK);
        return decodeGgml(enc.codes, enc.scales, spec);
      }
      if (!enc.scaleCodes) fail(`decode: ${type} data without its block header bytes`);
      return decodeGgmlBlocks(enc.codes, enc.scaleCodes, type);
    }
    default:
      return fail(`unknown format kind '${(spec as { kind: string }).kind}'`);
  }
}

function checkPackBits(bits: number): void {
  if (!Number.isInteger(bits) || bits < 1 || bits > 8)
    fail(`packCodes: bits must be an integer 1..8, got ${bits}`);
}

/**
 * Dense little-endian bit packing: code i occupies stream bits [i*bits, (i+1)*bits), stream bit k
 * being bit k % 8 of byte k / 8. So 4-bit codes go two per byte, low nibble first; 3-bit codes
 * straddle bytes. Output length ceil(n * bits / 8); unused high bits of the last byte are 0.
 */
export function packCodes(codes: ArrayLike<number>, bits: number): Uint8Array {
  checkPackBits(bits);
  if (codes instanceof Uint8Array && (bits === 4 || bits === 8)) return packBytes(codes, bits);
  const n = codes.length;
  const out = new Uint8Array(Math.ceil((n * bits) / 8));
  const max = (1 << bits) - 1;
  let acc = 0;
  let nacc = 0;
  let o = 0;
  for (let i = 0; i < n; i++) {
    const c = codes[i];
    if (!(c >= 0 && c <= max) || c !== (c | 0))
      fail(`packCodes: code ${c} at index ${i} does not fit in ${bits} bits`);
    acc |= c << nacc;
    nacc += bits;
    while (nacc >= 8) {
      out[o++] = acc & 0xff;
      acc >>>= 8;
      nacc -= 8;
    }
  }
  if (nacc > 0) out[o] = acc & 0xff;
  return out;
}

/** packCodes for byte codes of 4 or 8 bits: whole bytes at a time (checkpoints hold billions of codes). */
function packBytes(codes: Uint8Array, bits: 4 | 8): Uint8Array {
  if (bits === 8) return codes.slice();
  const n = codes.length;
  const out = new Uint8Array(Math.ceil(n / 2));
  let seen = 0;
  const pairs = n >> 1;
  for (let i = 0; i < pairs; i++) {
    const lo = codes[2 * i];
    const hi = codes[2 * i + 1];
    seen |= lo | hi;
    out[i] = lo | (hi << 4);
  }
  if (n % 2) {
    seen |= codes[n - 1];
    out[pairs] = codes[n - 1];
  }
  if (seen > 15) {
    const i = codes.findIndex((c) => c > 15);
    fail(`packCodes: code ${codes[i]} at index ${i} does not fit in 4 bits`);
  }
  return out;
}

/** Inverse of packCodes: the first `count` codes of `bytes`. */
export function unpackCodes(bytes: Uint8Array, bits: number, count: number): Uint8Array {
  checkPackBits(bits);
  const need = Math.ceil((count * bits) / 8);
  if (bytes.length < need)
    fail(`unpackCodes: ${count} codes of ${bits} bits need ${need} bytes, got ${bytes.length}`);
  if (bits === 8) return bytes.slice(0, count);
  if (bits === 4) return unpackNibbles(bytes, count);
  const out = new Uint8Array(count);
  const mask = (1 << bits) - 1;
  let acc = 0;
  let nacc = 0;
  let p = 0;
  for (let i = 0; i < count; i++) {
    while (nacc < bits) {
      acc |= bytes[p++] << nacc;
      nacc += 8;
    }
    out[i] = acc & mask;
    acc >>>= bits;
    nacc -= bits;
  }
  return out;
}

function unpackNibbles(bytes: Uint8Array, count: number): Uint8Array {
  const out = new Uint8Array(count);
  const pairs = count >> 1;
  for (let i = 0; i < pairs; i++) {
    const b = bytes[i];
    out[2 * i] = b & 15;
    out[2 * i + 1] = b >> 4;
  }
  if (count % 2) out[count - 1] = bytes[pairs] & 15;
  return out;
}

const VALID_FORMS =
  'int<2-8>-g<group>[-sym|-asym][-clip<c>], int<2-8>-row[-sym], int<2-8>-tensor[-sym], ' +
  'mxint<2-8>[-<block>][-even|-nearest], mxfp4 | mxfp6-e3m2 | mxfp6-e2m3 | mxfp8[-e4m3|-e5m2] [-<block>][-even|-nearest], ' +
  'fp8[-e4m3|-e5m2][-row|-tensor], nvfp4, q4_0, q4_1, q8_0, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs, iq3_xxs, iq3_s, iq2_xxs, iq2_xs, iq2_s, iq1_s, iq1_m (llama.cpp blocks), ' +
  `${LLAMA_MIXES.join(', ')} (llama-quantize mixes), weights only`;

/**
 * Spec for a short format name. INT defaults to asymmetric; MX blocks default to 32 and rounding
 * to 'nearest' (half away from zero, microxcaling); FP8 defaults to e4m3 with a per-tensor scale.
 * Examples: int4-g128, int4-g128-sym, int8-row-sym, int4-row, int8-tensor-sym, mxint4-32,
 * mxint8-128, mxfp4, mxfp4-even, mxfp8-e4m3, mxfp6-e3m2, fp8-e4m3-row, nvfp4.
 */
export function parseFormat(name: string): FormatSpec {
  const s = name.trim().toLowerCase();
  const bad = (why?: string): never =>
    fail(`unknown format '${name}'${why ? ` (${why})` : ''}; valid forms: ${VALID_FORMS}`);
  let m = /^int(\d+)-(?:g(\d+)|(row|tensor))(?:-(sym|asym))?(?:-clip(\d*\.?\d+(?:e-?\d+)?))?$/.exec(s);
  if (m) {
    const bits = Number(m[1]);
    if (bits < 2 || bits > 8) bad('INT bits must be 2..8');
    const spec: IntSpec = m[2]
      ? { kind: 'int', bits, symmetric: m[4] === 'sym', granularity: 'group', group: Number(m[2]) }
      : { kind: 'int', bits, symmetric: m[4] === 'sym', granularity: m[3] as 'row' | 'tensor' };
    if (spec.group !== undefined && spec.group < 1) bad('group size must be positive');
    if (m[5] !== undefined) {
      const clip = Number(m[5]);
      if (!(clip > 0 && clip <= 1)) bad('clip must be in (0, 1]');
      if (clip !== 1) spec.clip = clip;
    }
    return spec;
  }
  m = /^mx(int\d+|fp4|fp6|fp8)(?:-(e\dm\d))?(?:-(\d+))?(?:-(nearest|even))?$/.exec(s);
  if (m) {
    let element: MxElement;
    if (m[1].startsWith('int')) {
      if (m[2]) bad('MXINT takes no exponent/mantissa variant');
      const d = Number(m[1].slice(3));
      if (d < 2 || d > 8) bad('MXINT bits must be 2..8');
      element = `int${d}` as MxElement;
    } else if (m[1] === 'fp4') {
      if (m[2] && m[2] !== 'e2m1') bad('MXFP4 is e2m1');
      element = 'fp4_e2m1';
    } else if (m[1] === 'fp6') {
      if (m[2] !== 'e3m2' && m[2] !== 'e2m3') bad('MXFP6 needs -e3m2 or -e2m3');
      element = `fp6_${m[2]}` as MxElement;
    } else {
      const v = m[2] ?? 'e4m3';
      if (v !== 'e4m3' && v !== 'e5m2') bad('MXFP8 is e4m3 or e5m2');
      element = `fp8_${v}` as MxElement;
    }
    const block = m[3] === undefined ? 32 : Number(m[3]);
    if (block < 1) bad('block size must be positive');
    return { kind: 'mx', element, block, rounding: m[4] === 'even' ? 'even' : 'nearest' };
  }
  m = /^fp8(?:-(e4m3|e5m2))?(?:-(row|tensor))?$/.exec(s);
  if (m)
    return {
      kind: 'fp8',
      element: (m[1] ?? 'e4m3') as 'e4m3' | 'e5m2',
      granularity: (m[2] ?? 'tensor') as 'row' | 'tensor',
    };
  if (s === 'nvfp4') return { kind: 'nvfp4' };
  if (s === 'q4_0' || s === 'q8_0' || isGgmlBlockType(s) || isLlamaMix(s)) return { kind: 'ggml', type: s };
  return bad();
}

function mxName(spec: MxSpec): string {
  const el = spec.element;
  const base = el.startsWith('int')
    ? `mx${el}`
    : el === 'fp4_e2m1'
      ? 'mxfp4'
      : `mx${el.slice(0, 3)}-${el.slice(4)}`;
  return `${base}${spec.block !== 32 ? `-${spec.block}` : ''}${spec.rounding === 'even' ? '-even' : ''}`;
}

/** Canonical short name of a spec (parseFormat(formatName(s)) equals s). */
export function formatName(spec: FormatSpec): string {
  switch (spec.kind) {
    case 'int': {
      const g = spec.granularity === 'group' ? `g${spec.group}` : spec.granularity;
      const clip = spec.clip !== undefined && spec.clip !== 1 ? `-clip${spec.clip}` : '';
      return `int${spec.bits}-${g}${spec.symmetric ? '-sym' : ''}${clip}`;
    }
    case 'mx':
      return mxName(spec);
    case 'fp8':
      return `fp8-${spec.element}-${spec.granularity}`;
    case 'nvfp4':
      return 'nvfp4';
    case 'ggml':
      return spec.type;
  }
}

const MX_TITLES: Record<string, string> = {
  fp8_e4m3: 'MXFP8 E4M3 elements (max 448)',
  fp8_e5m2: 'MXFP8 E5M2 elements (max 57344)',
  fp6_e3m2: 'MXFP6 E3M2 elements (max 28)',
  fp6_e2m3: 'MXFP6 E2M3 elements (max 7.5)',
  fp4_e2m1: 'MXFP4 E2M1 elements (max 6)',
};

/** One-line human description. */
export function describeFormat(spec: FormatSpec): string {
  switch (spec.kind) {
    case 'int': {
      const kind = spec.symmetric ? 'symmetric' : 'asymmetric (zero point)';
      const where =
        spec.granularity === 'group'
          ? `one scale per group of ${spec.group} along the row`
          : spec.granularity === 'row'
            ? 'one scale per row (output channel / token)'
            : 'one scale for the whole tensor';
      const clip = spec.clip !== undefined && spec.clip !== 1 ? `, range clipped to ${spec.clip}x` : '';
      return `INT${spec.bits} ${kind}, ${where}${clip}, round half to even`;
    }
    case 'mx': {
      const info = mxElementInfo(spec.element);
      const el =
        info.kind === 'int'
          ? `MXINT${info.bits} sign-magnitude elements (max ${info.maxNorm})`
          : (MX_TITLES[spec.element] ?? spec.element);
      const r = spec.rounding === 'even' ? 'round half to even' : 'round half away from zero';
      return `${el}, blocks of ${spec.block} along the row sharing an E8M0 scale (OCP MX v1.0), ${r}, saturating`;
    }
    case 'fp8': {
      const max = spec.element === 'e4m3' ? 448 : 57344;
      const where = spec.granularity === 'row' ? 'one f32 scale per row' : 'one f32 scale for the tensor';
      return `FP8 ${spec.element.toUpperCase()} (max ${max}), ${where}, round half to even, saturating`;
    }
    case 'nvfp4':
      return 'NVFP4: E2M1 elements, blocks of 16 with FP8 E4M3 scales, one f32 tensor scale, round half to even';
    case 'ggml':
      return GGML_TITLES[spec.type];
  }
}

/**
 * Average storage bits per element, scales and zero points included, for size reporting. INT
 * scales count 16 bits (checkpoints store them as fp16: AutoAWQ, GPTQ, compressed-tensors) and zero
 * points `bits` bits; MX shared exponents 8 bits per block; FP8 and the NVFP4 tensor scale 32 bits;
 * NVFP4 block scales 8 bits. Per-tensor scales are counted only when `rows` is given.
 */
export function bitsPerElement(spec: FormatSpec, cols: number, rows?: number): number {
  const perTensor = (b: number) => (rows !== undefined && rows * cols > 0 ? b / (rows * cols) : 0);
  switch (spec.kind) {
    case 'int': {
      checkIntBits(spec.bits);
      const side = 16 + (spec.symmetric ? 0 : spec.bits);
      if (spec.granularity === 'group')
        return spec.bits + side / (spec.group ?? fail('int group size missing'));
      if (spec.granularity === 'row') return spec.bits + side / cols;
      return spec.bits + perTensor(side);
    }
    case 'mx':
      return mxElementInfo(spec.element).bits + 8 / spec.block;
    case 'fp8':
      return 8 + (spec.granularity === 'row' ? 32 / cols : perTensor(32));
    case 'nvfp4':
      return 4 + 8 / NVFP4_BLOCK + perTensor(32);
    case 'ggml': {
      const type = concreteGgml(spec, 'bitsPerElement').type;
      if (!isGgmlBlockType(type)) return codeBits(spec) + 16 / QK;
      const { bytes, values } = ggmlBlockLayout(type);
      return (8 * bytes) / values;
    }
  }
}

const GGML_TITLES: Record<GgmlSpec['type'], string> = {
  q4_0: "llama.cpp Q4_0: blocks of 32 along the row, fp16 d = (value of largest magnitude) / -8, x = (q - 8) d, q = min(15, trunc(x/d + 8.5)), exactly as llama.cpp's reference quantizer",
  q8_0: "llama.cpp Q8_0: blocks of 32 along the row, fp16 d = amax / 127, x = q d, q = round(x/d) half away from zero, exactly as llama.cpp's reference quantizer",
  q5_0: "llama.cpp Q5_0: blocks of 32 along the row, fp16 d = (value of largest magnitude) / -16, x = (q - 16) d, exactly as llama.cpp's reference quantizer",
  q4_1: "llama.cpp Q4_1: blocks of 32 along the row, fp16 d = (max - min) / 15 and m = min, x = q d + m, exactly as llama.cpp's reference quantizer",
  q5_1: "llama.cpp Q5_1: blocks of 32 along the row, fp16 d = (max - min) / 31 and m = min, x = q d + m, exactly as llama.cpp's reference quantizer",
  iq4_nl:
    "llama.cpp IQ4_NL: blocks of 32 along the row, fp16 d, x = d * level[q] on 16 fixed non-linear levels (-127 ... 113), d searched by weighted least squares as llama.cpp's quantizer does",
  iq4_xs:
    "llama.cpp IQ4_XS: super-blocks of 256 along the row, 8 sub-blocks of 32 with 6-bit scales under an fp16 d, x = (d (ls - 32)) * level[q] on IQ4_NL's 16 levels, as llama.cpp's quantizer",
  iq3_xxs:
    "llama.cpp IQ3_XXS (3.06 bits per weight): super-blocks of 256, groups of 4 values whose magnitudes are one of 256 grid points of 8 levels, signs with even parity per 8, 4-bit scales per 32 under an fp16 d, searched as llama.cpp's quantizer; like llama-quantize, only with an importance matrix (the imatrix step)",
  iq1_s:
    "llama.cpp IQ1_S (1.56 bits per weight): super-blocks of 256, groups of 8 values on a 2048-point grid of the levels -1, 0, 1, shifted by +-0.125 per 32, 3-bit scales per 32 under an fp16 d, searched as llama.cpp's quantizer (an exact split search per 32); like llama-quantize, only with an importance matrix (the imatrix step)",
  iq1_m:
    "llama.cpp IQ1_M (1.75 bits per weight): super-blocks of 256, groups of 8 values on IQ1_S's 2048-point grid of -1, 0, 1, each group shifted by +-0.125, 3-bit scales per 16 under an fp16 d refitted over the super-block, searched as llama.cpp's quantizer (an exact split search per 16); like llama-quantize, only with an importance matrix (the imatrix step)",
  iq2_xxs:
    "llama.cpp IQ2_XXS (2.06 bits per weight): super-blocks of 256, groups of 8 values whose magnitudes are one of 256 grid points of 3 levels, signs with even parity per 8, 4-bit scales per 32 under an fp16 d, searched as llama.cpp's quantizer; like llama-quantize, only with an importance matrix (the imatrix step)",
  iq2_xs:
    "llama.cpp IQ2_XS (2.31 bits per weight): super-blocks of 256, groups of 8 values whose magnitudes are one of 512 grid points of 3 levels, signs with even parity per 8, 4-bit scales per 16 under an fp16 d, searched as llama.cpp's quantizer; like llama-quantize, only with an importance matrix (the imatrix step)",
  iq2_s:
    "llama.cpp IQ2_S (2.56 bits per weight): super-blocks of 256, groups of 8 values whose magnitudes are one of 1024 grid points of 3 levels, free signs, 4-bit scales per 16 under an fp16 d, searched as llama.cpp's quantizer; like llama-quantize, only with an importance matrix (the imatrix step)",
  iq3_s:
    "llama.cpp IQ3_S (3.44 bits per weight): super-blocks of 256, groups of 4 values whose magnitudes are one of 512 grid points of 8 odd levels, free signs, 4-bit scales per 32 under an fp16 d, searched as llama.cpp's quantizer",
  q2_k: "llama.cpp Q2_K: super-blocks of 256 along the row, 16 sub-blocks of 16 with 4-bit scales and mins under fp16 d and dmin, x = (d sc) q - dmin m, q in 0..3, each sub-block's scale and min searched as llama.cpp's reference quantizer does (no importance matrix)",
  q3_k: "llama.cpp Q3_K: super-blocks of 256 along the row, 16 groups of 16 with 6-bit scales under an fp16 d, x = (d sc) (q - 4), q in 0..7, each group's scale searched as llama.cpp's reference quantizer does (no importance matrix)",
  q4_k: "llama.cpp Q4_K: super-blocks of 256 along the row, 8 sub-blocks of 32 with 6-bit scales and mins under fp16 d and dmin, x = (d sc) q - dmin m, each sub-block's scale and min searched as llama.cpp's reference quantizer does (no importance matrix)",
  q5_k: "llama.cpp Q5_K: as Q4_K with 5-bit codes (x = (d sc) q - dmin m, q in 0..31), each sub-block's scale and min searched as llama.cpp's reference quantizer does (no importance matrix)",
  q6_k: "llama.cpp Q6_K: super-blocks of 256 along the row, 16 groups of 16 with int8 scales under an fp16 d, x = (d sc) (q - 32), exactly as llama.cpp's reference quantizer",
  q2_k_mix:
    'llama.cpp Q2_K (the file type) as llama-quantize picks it per tensor (no importance matrix): Q2_K, Q3_K for o_proj and down_proj, Q3_K or Q4_K (4+ query heads per KV head) for v_proj, Q4_0 where rows are not a multiple of 256',
  q2_k_s:
    'llama.cpp Q2_K_S as llama-quantize picks it per tensor (it requires an importance matrix: a recipe step imatrix): Q2_K, Q4_K for v_proj (4+ query heads per KV head) and down_proj in the first eighth of the layers, Q4_0 / Q5_0 where rows are not a multiple of 256',
  q3_k_s:
    'llama.cpp Q3_K_S as llama-quantize picks it per tensor: Q3_K, Q4_0 where rows are not a multiple of 256',
  q3_k_m:
    'llama.cpp Q3_K_M as llama-quantize picks it per tensor (no importance matrix): Q3_K, Q4_K for o_proj, v_proj Q5_K in layers 0-1 and Q4_K after, down_proj Q5_K in the first sixteenth of the layers and Q4_K after, Q4_0 / Q5_0 / Q5_1 where rows are not a multiple of 256',
  q3_k_l:
    'llama.cpp Q3_K_L as llama-quantize picks it per tensor: Q3_K, Q5_K for v_proj, o_proj and down_proj, Q4_0 / Q5_1 where rows are not a multiple of 256',
  q4_k_s:
    'llama.cpp Q4_K_S as llama-quantize picks it per tensor (no importance matrix): Q4_K, Q5_K for v_proj in layers 0-3 and down_proj in the first eighth of the layers, Q5_0 / Q5_1 where rows are not a multiple of 256',
  q4_k_m:
    'llama.cpp Q4_K_M as llama-quantize picks it per tensor (no importance matrix): Q4_K, Q6_K for v_proj and down_proj in a third of the layers, Q5_0 / Q8_0 where rows are not a multiple of 256',
  q5_k_s:
    'llama.cpp Q5_K_S as llama-quantize picks it per tensor: Q5_K, Q5_1 where rows are not a multiple of 256',
  q5_k_m:
    'llama.cpp Q5_K_M as llama-quantize picks it per tensor (no importance matrix): Q5_K, Q6_K for v_proj and down_proj in a third of the layers, Q5_1 / Q8_0 where rows are not a multiple of 256',
  q4_0_mix:
    'llama.cpp Q4_0 (the file type) as llama-quantize picks it per tensor: Q4_0, and with an importance matrix (a recipe step imatrix) Q4_1 for down_proj in the first eighth of the layers',
  q5_0_mix:
    'llama.cpp Q5_0 (the file type) as llama-quantize picks it per tensor: Q5_0, and with an importance matrix (a recipe step imatrix) Q5_1 for down_proj in the first eighth of the layers',
  iq4_nl_mix:
    'llama.cpp IQ4_NL (the file type) as llama-quantize picks it per tensor: IQ4_NL, Q5_K for v_proj (4+ query heads per KV head) and, without an importance matrix, for down_proj in the first eighth of the layers; Q5_1 where rows are not a multiple of 256',
  iq4_xs_mix:
    'llama.cpp IQ4_XS (the file type) as llama-quantize picks it per tensor: IQ4_XS, Q5_K for v_proj (4+ query heads per KV head) and, without an importance matrix, for down_proj in the first eighth of the layers; IQ4_NL / Q5_1 where rows are not a multiple of 256',
  iq3_xs:
    'llama.cpp IQ3_XS as llama-quantize picks it per tensor, only with an importance matrix (the imatrix step; its IQ3_XXS tensors need one): IQ3_S, IQ3_XXS for q_proj, k_proj and for gate_proj / up_proj outside the first and last eighth of the layers, Q4_K for v_proj (4+ query heads per KV head); IQ4_NL where rows are not a multiple of 256',
  iq3_s_mix:
    'llama.cpp IQ3_S (the file type) as llama-quantize picks it per tensor: IQ3_S, Q4_K for v_proj (4+ query heads per KV head); IQ4_NL / Q5_0 where rows are not a multiple of 256',
  iq3_xxs_mix:
    'llama.cpp IQ3_XXS (the file type) as llama-quantize picks it per tensor, only with an importance matrix (the imatrix step): IQ3_XXS, IQ2_S for q_proj and k_proj, IQ3_S for o_proj, Q4_K for v_proj with 4+ query heads per KV head; IQ4_NL where rows are not a multiple of 256',
  iq2_m:
    'llama.cpp IQ2_M as llama-quantize picks it per tensor, only with an importance matrix (the imatrix step): IQ2_S, IQ3_S for o_proj, v_proj (Q4_K with 4+ query heads per KV head) and down_proj in the first eighth of the layers; IQ4_NL / Q5_0 where rows are not a multiple of 256',
  iq2_s_mix:
    'llama.cpp IQ2_S (the file type) as llama-quantize picks it per tensor, only with an importance matrix (the imatrix step): IQ2_XS, IQ3_S for o_proj, v_proj (Q4_K with 4+ query heads per KV head) and down_proj in the first eighth of the layers; IQ4_NL / Q5_0 where rows are not a multiple of 256',
  iq2_xs_mix:
    'llama.cpp IQ2_XS (the file type) as llama-quantize picks it per tensor, only with an importance matrix (the imatrix step): IQ2_XS, Q2_K for v_proj (Q4_K with 4+ query heads per KV head) and down_proj in the first eighth of the layers; IQ4_NL / Q4_0 where rows are not a multiple of 256',
  iq2_xxs_mix:
    'llama.cpp IQ2_XXS (the file type) as llama-quantize picks it per tensor, only with an importance matrix (the imatrix step): IQ2_XXS, Q2_K for v_proj (Q4_K with 4+ query heads per KV head) and down_proj in the first eighth of the layers; IQ4_NL / Q4_0 where rows are not a multiple of 256',
  iq1_s_mix:
    'llama.cpp IQ1_S (the file type) as llama-quantize picks it per tensor, only with an importance matrix (the imatrix step): IQ1_S, IQ2_XXS for o_proj, Q2_K for v_proj (Q4_K with 4+ query heads per KV head) and down_proj in the first eighth of the layers; IQ4_NL / Q4_0 where rows are not a multiple of 256',
  iq1_m_mix:
    'llama.cpp IQ1_M (the file type) as llama-quantize picks it per tensor, only with an importance matrix (the imatrix step): IQ1_M, IQ2_XXS for o_proj, Q2_K for v_proj (Q4_K with 4+ query heads per KV head) and down_proj in the first eighth of the layers; IQ4_NL / Q4_0 where rows are not a multiple of 256',
  iq3_m:
    'llama.cpp IQ3_M as llama-quantize picks it per tensor: IQ3_S, Q4_K for v_proj, o_proj and down_proj in the first eighth of the layers; IQ4_NL / Q5_0 where rows are not a multiple of 256',
};
