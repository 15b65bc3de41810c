/**
 * fakeQuant into llama.cpp's Q4_0 / Q8_0 blocks on the GPU, bit-identical to the CPU reference
 * dequantize(quantize(x)) of src/formats/ggml.ts (ISO C rounding of Q4_0, not the fma option) for
 * every finite input, f32 subnormals included.
 *
 * One thread per block of 32 values. Every step the CPU rounds is done exactly:
 * - the largest magnitude (Q4_0: the first value that has it, sign kept) by comparing bit patterns;
 * - d: Q4_0 max * -0.125 by moving the exponent, Q8_0 amax / 127 by divRn; where d falls below the
 *   normal f32 range both are integer divisions of the value counted in units of 2^-149;
 * - id = 1/d by divRn on d's significand, then the exponent (overflowing to inf as float32 does);
 * - x * id by mulRn: integer work, so no compiler can fuse it with Q4_0's `+ 8.5` into one FMA
 *   rounding; the add is then a plain f32 add (correctly rounded in WGSL). A product below 2^-126
 *   comes back as 0, which changes no code: it adds to 8.5 as 0 does and rounds to 0;
 * - d16, the fp16 rounding of d, on the bit pattern (nearest even, fp16 subnormals, overflow to inf);
 * - the output (code - offset) * d16: at most 8 x 11 significant bits, so the f32 product is exact;
 *   its sign is set by hand (IEEE's rule: an all-zero Q4_0 block has d = -0 and gives -0).
 * Only integer ops and exact float ops ever meet an f32 subnormal, which a GPU may flush.
 *
 * Where the CPU gives non-finite outputs the kernel agrees up to NaN payloads: |d| >= 65520 makes
 * d16 inf (outputs +-inf, NaN for code == offset), and where 1/d overflows (d below ~2^-128) the
 * codes follow x * inf as the CPU's integer conversion does (+inf -> 15, -inf and NaN -> 0 for Q4_0;
 * 0 for Q8_0). NaN or +-inf inputs, which the CPU refuses and loaded weights never hold, turn their
 * whole block into NaN.
 */
import { fail } from '../../errors.ts';
import { QK } from '../../formats/ggml.ts';
import type { GgmlSpec } from '../../formats/spec.ts';
import type { DType } from '../tensor.ts';
import { type GpuContext, grid2, type Kernel, Params, type Storage, type Window } from './context.ts';
import { COMMON, loadBitsFn } from './quant.ts';
import { FLAT_WG } from './wgsl.ts';

/** threads a workgroup of the block kernels (one thread per block) */
export const GGML_WG = 64;
const WG = GGML_WG;

/** Scale, reciprocal and fp16 rounding shared by both types (and the K-quant search kernels). */
const GGML_COMMON = `
/** |a| (bits) of a value below 2^-118 as a count of 2^-149 (exact, < 2^31) */
fn units149(a: u32) -> u32 {
  let field = a >> 23u;
  if (field == 0u) { return a; }
  return ((a & 0x7fffffu) | 0x800000u) << (field - 1u);
}
/** f32 bits of 1/d, correctly rounded, inf when it overflows; d finite, nonzero, |d| < 2^125 */
fn recip(db: u32) -> u32 {
  let sign = db & 0x80000000u;
  let me = mantExp(db & 0x7fffffffu);
  // 1/d = (1 / significand) * 2^-e, the first factor in (0.5, 1]
  let r = divRn(0x3f800000u, fv(0x3f800000u | (me.m & 0x7fffffu)));
  let field = i32(r >> 23u) - me.e;
  if (field > 254) { return sign | 0x7f800000u; }
  return sign | (u32(field) << 23u) | (r & 0x7fffffu);
}
/** v rounded to fp16 (as f32) */
fn f16(v: f32) -> f32 { return fv(f16Round(fbits(v))); }
/** f32 bits of d (bits) rounded to fp16: nearest even, fp16 subnormals, inf above 65504 */
fn f16Round(db: u32) -> u32 {
  let sign = db & 0x80000000u;
  let a = db & 0x7fffffffu;
  let field = a >> 23u;
  if (field >= 113u) {
    // 2^-14 and up: keep 10 of the 23 fraction bits; a carry out steps the exponent
    let r = (a + 0xfffu + ((a >> 13u) & 1u)) & 0xffffe000u;
    return sign | select(r, 0x7f800000u, r >= 0x47800000u);
  }
  if (field < 102u) { return sign; }
  // an fp16 subnormal: the nearest multiple of 2^-24
  let full = (a & 0x7fffffu) | 0x800000u;
  let shift = 126u - field;
  var q = full >> shift;
  let rest = full & ((1u << shift) - 1u);
  let half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (q & 1u) == 1u)) { q = q + 1u; }
  return sign | fbits(f32(q) * pow2(-24));
}
/** x * id rounded to f32 (bits), id finite; 0 when id is 0 */
fn scaled(xb: u32, id: u32) -> u32 {
  if ((id & 0x7fffffffu) == 0u) { return 0u; }
  return mulRn(xb ^ (id & 0x80000000u), fv(id & 0x7fffffffu));
}
fn isInfId(id: u32) -> bool { return (id & 0x7fffffffu) == 0x7f800000u; }
/** f32 bits of qm * d16 (bits): an exact product, its sign by IEEE's rule */
fn dequant(qm: i32, d16: u32) -> u32 {
  let sign = select(0u, 0x80000000u, qm < 0) ^ (d16 & 0x80000000u);
  return fbits(f32(abs(qm)) * fv(d16 & 0x7fffffffu)) | sign;
}
`;

/** `scale(maxb, amax)` -> d (bits) and `code(xb, id)` -> the code minus its offset. */
const TYPE_WGSL: Record<'q4_0' | 'q8_0', string> = {
  q4_0: `
fn scale(maxb: u32, amax: u32) -> u32 {
  let sign = (maxb & 0x80000000u) ^ 0x80000000u;
  if (amax >= 0x02000000u) { return sign | (amax - 0x01800000u); }
  // the quotient is an f32 subnormal: round units / 8 to nearest even
  let units = units149(amax);
  var q = units >> 3u;
  let rest = units & 7u;
  if (rest > 4u || (rest == 4u && (q & 1u) == 1u)) { q = q + 1u; }
  return sign | q;
}
fn code(xb: u32, id: u32) -> i32 {
  if (isInfId(id)) {
    // x * inf: +inf -> 15; -inf and NaN (x = 0) -> 0, as the CPU's integer conversion does
    let positive = (xb & 0x7fffffffu) != 0u && ((xb ^ id) & 0x80000000u) == 0u;
    return select(-8, 7, positive);
  }
  return min(15, i32(fv(scaled(xb, id)) + 8.5)) - 8;
}`,
  q8_0: `
fn scale(maxb: u32, amax: u32) -> u32 {
  if (amax >= 0x04000000u) { return divRn(amax, 127.0); }
  // the quotient is below 2^-126 or just above: 127 is odd, so there are no ties
  return (units149(amax) + 63u) / 127u;
}
fn code(xb: u32, id: u32) -> i32 {
  if (isInfId(id)) { return 0; }
  let t = scaled(xb, id);
  // round half away from zero on the exact fraction (|t| + 0.5 would round in f32)
  let a = fv(t & 0x7fffffffu);
  let f = floor(a);
  let r = i32(f) + select(0, 1, a - f >= 0.5);
  return select(r, -r, t >= 0x80000000u);
}`,
};

/** Bindings and helpers of a llama.cpp fakeQuant kernel: p.n blocks from X[p.xOff] to O[p.oOff]. */
export function ggmlKernelHeader(dtype: DType): string {
  return `
struct P { n: u32, xOff: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<u32>;
@group(0) @binding(2) var<storage, read_write> O: array<u32>;
${COMMON}
${GGML_COMMON}
${loadBitsFn(dtype)}
${FLAT_WG}`;
}

function ggmlKernel(type: 'q4_0' | 'q8_0', dtype: DType): Kernel {
  return {
    key: `ggml-fq:${type}:${dtype}`,
    bindings: ['uniform', 'read', 'write'],
    code: () => `${ggmlKernelHeader(dtype)}
${TYPE_WGSL[type]}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let b = flatWg(wid, nwg) * ${WG}u + lid;
  if (b >= p.n) { return; }
  let x0 = p.xOff + b * ${QK}u;
  let o0 = p.oOff + b * ${QK}u;
  // the largest magnitude and the first value that has it (bit patterns order finite magnitudes)
  var amax = 0u;
  var maxb = 0u;
  for (var j = 0u; j < ${QK}u; j++) {
    let v = ldBits(x0 + j);
    if ((v & 0x7fffffffu) > amax) {
      amax = v & 0x7fffffffu;
      maxb = v;
    }
  }
  if (amax >= 0x7f800000u) {
    for (var j = 0u; j < ${QK}u; j++) { O[o0 + j] = NAN_BITS; }
    return;
  }
  let d = scale(maxb, amax);
  let d16 = f16Round(d);
  var id = 0u;
  if ((d & 0x7fffffffu) != 0u) { id = recip(d); }
  for (var j = 0u; j < ${QK}u; j++) { O[o0 + j] = dequant(code(ldBits(x0 + j), id), d16); }
}`,
  };
}

export interface Pass {
  blocks: number;
  x: Window;
  o: Window;
}

/**
 * Windows over x and out in whole storage rows (each a whole number of blocks of `block` values), with
 * the blocks each holds.
 */
function blockPasses(ctx: GpuContext, x: Storage, out: Storage, block = QK): Pass[] {
  if (x.cols % block !== 0) {
    // a 1-D tensor (one value per storage row): it must fit one binding
    const blocks = (x.rows * x.cols) / block;
    return [{ blocks, x: ctx.whole(x, 'fakeQuant'), o: ctx.whole(out, 'fakeQuant') }];
  }
  return ctx
    .segments(
      x.rows,
      [x, out].map((s) => ({ s, row0: 0 })),
    )
    .map((seg) => ({ blocks: (seg.n * x.cols) / block, x: seg.w[0], o: seg.w[1] }));
}

/**
 * dequantize(quantize(x)) in Q4_0 / Q8_0 blocks of 32 along rows of `lastDim` values; f32 result of
 * x's shape. x may hold f32, bf16 or f16.
 */
export function ggmlFakeQuant(ctx: GpuContext, x: Storage, lastDim: number, spec: GgmlSpec): Storage {
  if (spec.type !== 'q4_0' && spec.type !== 'q8_0')
    fail(`ggml format: type must be 'q4_0' or 'q8_0', got '${spec.type}'`);
  if (lastDim % QK !== 0)
    fail(`${spec.type}: blocks of ${QK} do not divide the row length (last dimension) ${lastDim}`);
  return runBlockKernel(ctx, ggmlKernel(spec.type, x.dtype), x);
}

/**
 * Runs a kernel of one thread per block of `block` values (ggmlKernelHeader's bindings, GGML_WG threads
 * a workgroup) over x; f32 result of x's shape.
 */
export function runBlockKernel(
  ctx: GpuContext,
  kernel: Kernel,
  x: Storage,
  block = QK,
  /** bound after x and the output (constant tables) */
  extra: GPUBufferBinding[] = [],
): Storage {
  const out = ctx.allocStorage(x.rows, x.cols, 'f32');
  if (x.rows * x.cols === 0) return out;
  for (const pass of blockPasses(ctx, x, out, block))
    ctx.dispatch(
      kernel,
      new Params().u(pass.blocks).u(pass.x.off).u(pass.o.off),
      [pass.x.binding, pass.o.binding, ...extra],
      grid2(Math.ceil(pass.blocks / WG)),
    );
  return out;
}
