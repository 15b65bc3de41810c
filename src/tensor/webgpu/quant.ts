/**
 * fakeQuant on the GPU, bit-identical to src/formats (fakeQuantRows) for normal f32 inputs.
 *
 * Four passes: per-segment finite min/max (a segment = the values sharing one scale: an INT group,
 * an MX / NVFP4 block, a row), an optional whole-tensor reduction of those (INT/FP8 'tensor', the
 * NVFP4 global scale), per-segment parameters, then the elementwise quantize-dequantize.
 *
 * Exactness: the CPU rounds every quotient x / scale to f32 after an f64 division, which equals a
 * correctly rounded f32 division; WGSL division is only accurate to 2.5 ulp, so `divRn` divides the
 * 24-bit significands by shift-and-subtract. INT codes only need the quotient's nearest integer, so
 * `rneDiv` takes it from the hardware quotient unless that lies within 8 ulp of a half-integer, and
 * calls `divRn` then (same codes, a fraction of the work). Everything else is an f32 add/mul (correctly rounded in
 * WGSL), a power-of-two scaling (exact) or integer work on the bit patterns. Values are read and
 * written as bits so NaN payloads, -0 and non-finite inputs never pass through float ops a compiler
 * may assume finite. Not covered: f32 subnormals (inputs, scales or quotients below 2^-126), which
 * the GPU may flush to zero.
 */
import { fail } from '../../errors.ts';
import { E2M1, E2M3, E3M2, E4M3, E5M2, type MiniFloat } from '../../formats/minifloat.ts';
import type { FormatSpec, IntSpec, MxElement } from '../../formats/spec.ts';
import { f32Bits } from '../dtype.ts';
import type { DType } from '../tensor.ts';
import {
  type GpuContext,
  grid2,
  type Kernel,
  Params,
  type Storage,
  type Window,
  wholeBuffer,
} from './context.ts';
import { normedValue, RMS_WG, ROW_STEPS, rmsInverse } from './norm.ts';
import { arrayType, FLAT_WG, loadFn, range, stridedLoop } from './wgsl.ts';

const WG = 64;
const EW_WG = 256;

/** f32 bits of element i of an array `arr` holding `dtype` (16-bit floats widened exactly). */
export function loadBitsFn(dtype: DType): string {
  switch (dtype) {
    case 'f32':
      return 'fn ldBits(i: u32) -> u32 { return X[i]; }';
    case 'bf16':
      return `fn ldBits(i: u32) -> u32 {
  let w = X[i >> 1u];
  return select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u);
}`;
    case 'f16':
      return `fn ldBits(i: u32) -> u32 {
  let h = (X[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return sign | 0x7f800000u | (m << 13u); }
  if (e == 0u) {
    if (m == 0u) { return sign; }
    let lead = firstLeadingBit(m);
    return sign | ((lead + 103u) << 23u) | ((m << (23u - lead)) & 0x7fffffu);
  }
  return sign | ((e + 112u) << 23u) | (m << 13u);
}`;
    default:
      return fail(`fakeQuant: ${dtype} tensors cannot be quantized (float dtypes only)`);
  }
}

/** Shared WGSL: exact f32 division, round half even, power-of-two scaling, bit tests. */
export const COMMON = `
const NAN_BITS = 0x7fc00000u;
fn isNan(b: u32) -> bool { return (b & 0x7fffffffu) > 0x7f800000u; }
fn isInf(b: u32) -> bool { return (b & 0x7fffffffu) == 0x7f800000u; }
fn isFinite(b: u32) -> bool { return (b & 0x7f800000u) != 0x7f800000u; }
fn pow2(k: i32) -> f32 { return bitcast<f32>(u32(k + 127) << 23u); }
/** x * 2^k for |k| <= 252, exact while the result is a normal f32 */
fn pow2Mul(x: f32, k: i32) -> f32 {
  let k1 = k / 2;
  return x * pow2(k1) * pow2(k - k1);
}
struct MantExp {
  m: u32,
  e: i32,
}
/** |a| = m * 2^(e - 23) with m in [2^23, 2^24), for a finite nonzero f32 (bits) */
fn mantExp(ab: u32) -> MantExp {
  let field = (ab >> 23u) & 0xffu;
  let am = ab & 0x7fffffu;
  if (field == 0u) {
    let lead = firstLeadingBit(am);
    return MantExp(am << (23u - lead), i32(lead) - 149);
  }
  return MantExp(am | 0x800000u, i32(field) - 127);
}
/** sign | mant * 2^(e - 23) for a rounded mant in [2^23, 2^24]; overflow to inf, flush below normal */
fn packRounded(sign: u32, rounded: u32, e0: i32) -> u32 {
  var mant = rounded;
  var e = e0;
  if (mant == 0x1000000u) {
    mant = mant >> 1u;
    e = e + 1;
  }
  if (e > 127) { return sign | 0x7f800000u; }
  if (e < -126) { return sign; }
  return sign | (u32(e + 127) << 23u) | (mant & 0x7fffffu);
}
/** correctly rounded a / b (bits) for b > 0 normal; subnormal results flush to signed zero */
fn divRn(ab: u32, b: f32) -> u32 {
  let sign = ab & 0x80000000u;
  if (((ab >> 23u) & 0xffu) == 0xffu) { return ab; }
  if ((ab & 0x7fffffffu) == 0u) { return sign; }
  let a = mantExp(ab);
  let bb = bitcast<u32>(b);
  let bm = (bb & 0x7fffffu) | 0x800000u;
  var e = a.e - (i32((bb >> 23u) & 0xffu) - 127);
  var r = a.m;
  if (r < bm) {
    r = r << 1u;
    e = e - 1;
  }
  var q = 0u;
  for (var i = 0u; i < 25u; i++) {
    q = q << 1u;
    if (r >= bm) {
      r = r - bm;
      q = q | 1u;
    }
    r = r << 1u;
  }
  var mant = q >> 1u;
  if ((q & 1u) == 1u && (r != 0u || (mant & 1u) == 1u)) { mant = mant + 1u; }
  return packRounded(sign, mant, e);
}
fn divF(a: f32, b: f32) -> f32 { return bitcast<f32>(divRn(bitcast<u32>(a), b)); }
/**
 * rne(a / b correctly rounded) for finite a (bits) and b > 0 normal, given q, the hardware quotient
 * (within 2.5 ulp of a / b: WGSL's bound). rne only steps at half-integers, so unless one lies within
 * 8 ulp of q, q rounds as the exact quotient does; otherwise (rare) the exact divRn decides.
 */
fn rneDivFrom(q: f32, ab: u32, b: f32) -> f32 {
  let toHalf = abs(q - floor(q) - 0.5);
  // zero, subnormal and huge quotients, and huge divisors, take the exact path
  if (abs(q) >= 1.1754943508222875e-38 && b < 8.5e37 && toHalf > abs(q) * 9.5367431640625e-7) {
    return rne(q);
  }
  return rne(fv(divRn(ab, b)));
}
fn rneDiv(ab: u32, b: f32) -> f32 { return rneDivFrom(fv(ab) / b, ab, b); }
/**
 * correctly rounded a * b (bits) for b > 0 normal, in integer arithmetic so that no compiler can
 * fuse or reassociate it with a neighbouring constant multiply; subnormal results flush to zero
 */
fn mulRn(ab: u32, b: f32) -> u32 {
  let sign = ab & 0x80000000u;
  if (((ab >> 23u) & 0xffu) == 0xffu) { return ab; }
  if ((ab & 0x7fffffffu) == 0u) { return sign; }
  let a = mantExp(ab);
  let bb = bitcast<u32>(b);
  let bm = (bb & 0x7fffffu) | 0x800000u;
  var e = a.e + i32((bb >> 23u) & 0xffu) - 127;
  // the 48-bit product a.m * bm as hi:lo from 16-bit limbs
  let a0 = a.m & 0xffffu;
  let a1 = a.m >> 16u;
  let b0 = bm & 0xffffu;
  let b1 = bm >> 16u;
  let p00 = a0 * b0;
  let mid = a0 * b1 + a1 * b0;
  let lo = p00 + ((mid & 0xffffu) << 16u);
  let hi = a1 * b1 + (mid >> 16u) + select(0u, 1u, lo < p00);
  var shift = 23u;
  if (hi >= 0x8000u) {
    shift = 24u;
    e = e + 1;
  }
  var mant = (hi << (32u - shift)) | (lo >> shift);
  let rem = lo & ((1u << shift) - 1u);
  let half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (mant & 1u) == 1u)) { mant = mant + 1u; }
  return packRounded(sign, mant, e);
}
fn rne(t: f32) -> f32 {
  let f = floor(t);
  let d = t - f;
  if (d > 0.5 || (d == 0.5 && (i32(f) & 1) != 0)) { return f + 1.0; }
  return f;
}
/** floor(log2(a)) of a > 0 from its bits */
fn floorLog2(ab: u32) -> i32 {
  let field = (ab >> 23u) & 0xffu;
  if (field == 0u) { return i32(firstLeadingBit(ab & 0x7fffffu)) - 149; }
  return i32(field) - 127;
}
fn fbits(x: f32) -> u32 { return bitcast<u32>(x); }
fn fv(b: u32) -> f32 { return bitcast<f32>(b); }
/** (min, max) of a segment; empty (no finite value) is (0, 0) */
fn range(s: vec2<f32>) -> vec2<f32> {
  if (s.x > s.y) { return vec2<f32>(0.0, 0.0); }
  return s;
}
`;

function lit(x: number): string {
  return `fv(0x${f32Bits(x).toString(16)}u)`;
}

/** `<p>Code(ab)`: magnitude pattern of a >= 0 (bits); `<p>Value(c)`: value of a magnitude pattern. */
function miniFloatWgsl(p: string, mf: MiniFloat, away: boolean): string {
  return `
fn ${p}Code(ab: u32) -> u32 {
  if (ab >= ${f32Bits(mf.maxNorm)}u) { return ${mf.maxCode}u; }
  let ep = max(i32((ab >> 23u) & 0xffu) - 127, ${mf.emin});
  let n = fv(ab) * pow2(${mf.mbits} - ep);
  var r = floor(n);
  let d = n - r;
  if (d > 0.5 || (d == 0.5 && (${away} || (u32(r) & 1u) == 1u))) { r = r + 1.0; }
  return min(u32((ep - ${mf.emin}) << ${mf.mbits}u) + u32(r), ${mf.maxCode}u);
}
fn ${p}Value(c: u32) -> f32 {
  let ef = c >> ${mf.mbits}u;
  let mf = c & ${(1 << mf.mbits) - 1}u;
  if (ef == 0u) { return f32(mf) * pow2(${mf.emin - mf.mbits}); }
  return f32(${1 << mf.mbits}u + mf) * pow2(i32(ef) - ${mf.bias + mf.mbits});
}`;
}

const MX_FP: Partial<Record<MxElement, MiniFloat>> = {
  fp8_e4m3: E4M3,
  fp8_e5m2: E5M2,
  fp6_e3m2: E3M2,
  fp6_e2m3: E2M3,
  fp4_e2m1: E2M1,
};

/** How one format maps onto the passes, and its WGSL. */
interface Plan {
  key: string;
  /** values per stats segment */
  segLen: number;
  /** values per parameter entry (0: one entry for the tensor) */
  paramLen: number;
  /** whether the parameter pass needs the whole-tensor min/max */
  global: boolean;
  /** WGSL: fn params(st: vec2<f32>, g: vec2<f32>) -> vec2<u32>; fn quant(xb: u32, p: vec2<u32>) -> u32 */
  wgsl: string;
}

function intPlan(spec: Extract<FormatSpec, { kind: 'int' }>, cols: number): Plan {
  const { bits, symmetric, granularity } = spec;
  if (!Number.isInteger(bits) || bits < 2 || bits > 8)
    fail(`int format: bits must be an integer 2..8, got ${bits}`);
  const clip = spec.clip === undefined || spec.clip === 1 ? undefined : spec.clip;
  if (clip !== undefined && !(clip > 0 && clip <= 1)) fail(`int format: clip must be in (0, 1], got ${clip}`);
  let segLen = cols;
  if (granularity === 'group') {
    const g = spec.group;
    if (g === undefined || !Number.isInteger(g) || g < 1)
      fail(`int${bits} group quantization needs a positive integer group size, got ${g}`);
    if (cols % g !== 0)
      fail(`int${bits} group size ${g} does not divide the row length (last dimension) ${cols}`);
    segLen = g;
  } else if (granularity !== 'row' && granularity !== 'tensor') {
    fail(`int format: unknown granularity '${granularity}'`);
  }
  const perTensor = granularity === 'tensor';
  const floor = lit(Math.fround(1e-5));
  const clipMul = (v: string) => (clip === undefined ? '' : `${v} = ${v} * ${lit(clip)};`);
  const qlo = symmetric ? -(2 ** (bits - 1)) : 0;
  const qhi = symmetric ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  const fixed = spec.staticScale;
  const params =
    fixed !== undefined
      ? `
  return vec2<u32>(${new Uint32Array(new Float32Array([fixed]).buffer)[0]}u, 0u);`
      : symmetric
        ? `
  var amax = max(-r.x, r.y);
  ${clipMul('amax')}
  if (!(amax >= ${floor})) { amax = ${floor}; }
  return vec2<u32>(mulRn(fbits(amax), ${lit(Math.fround(1 / qhi))}), 0u);`
        : `
  var mn = r.x;
  var mx = r.y;
  ${clipMul('mn')}
  ${clipMul('mx')}
  var rg = mx - mn;
  if (!(rg >= ${floor})) { rg = ${floor}; }
  let scale = fv(mulRn(fbits(rg), ${lit(Math.fround(1 / qhi))}));
  let z = clamp(0.0 - rne(divF(mn, scale)), 0.0, ${qhi}.0);
  return vec2<u32>(fbits(scale), fbits(z));`;
  return {
    key: `int${bits}:${symmetric}:${clip ?? 1}:${fixed ?? 'dynamic'}`,
    segLen,
    paramLen: perTensor ? 0 : segLen,
    global: perTensor,
    wgsl: `
fn params(st: vec2<f32>, g: vec2<f32>) -> vec2<u32> {
  let r = range(${perTensor ? 'g' : 'st'});${params}
}
fn quant(xb: u32, p: vec2<u32>) -> u32 {
  if (isNan(xb)) { return NAN_BITS; }
  let scale = fv(p.x);
  let z = fv(p.y);
  var q: f32;
  if (isInf(xb)) {
    q = select(${qhi}.0, ${qlo}.0, (xb >> 31u) == 1u);
  } else {
    q = clamp(rneDiv(xb, scale) + z, ${qlo}.0, ${qhi}.0);
  }
  return fbits((q - z) * scale);
}`,
  };
}

function mxPlan(spec: Extract<FormatSpec, { kind: 'mx' }>, cols: number): Plan {
  const k = spec.block;
  if (!Number.isInteger(k) || k < 1) fail(`MX block size must be a positive integer, got ${k}`);
  if (cols % k !== 0) fail(`MX block size ${k} does not divide the row length (last dimension) ${cols}`);
  if (spec.rounding !== 'nearest' && spec.rounding !== 'even')
    fail(`MX rounding must be 'nearest' or 'even', got '${spec.rounding}'`);
  const away = spec.rounding === 'nearest';
  const fp = MX_FP[spec.element];
  const intBits = /^int([2-8])$/.exec(spec.element);
  if (!fp && !intBits) fail(`unknown MX element format '${spec.element}'`);
  const emax = fp ? fp.emax : 0;
  const params = `
fn params(st: vec2<f32>, g: vec2<f32>) -> vec2<u32> {
  let r = range(st);
  let amax = fbits(max(-r.x, r.y)) & 0x7fffffffu;
  var e = -126;
  if (amax != 0u) { e = floorLog2(amax); }
  return vec2<u32>(bitcast<u32>(clamp(e - ${emax}, -127, 127)), 0u);
}`;
  let quant: string;
  if (fp) {
    quant = `${miniFloatWgsl('el', fp, away)}
fn quant(xb: u32, p: vec2<u32>) -> u32 {
  if (isNan(xb)) { return NAN_BITS; }
  let e = bitcast<i32>(p.x);
  var c = ${fp.maxCode}u;
  if (!isInf(xb)) { c = elCode(fbits(pow2Mul(fv(xb & 0x7fffffffu), -e))); }
  return fbits(pow2Mul(elValue(c), e)) | (xb & 0x80000000u);
}`;
  } else {
    const d = Number(intBits![1]);
    const frac = d - 2;
    const qmax = 2 ** (d - 1) - 1;
    quant = `
fn quant(xb: u32, p: vec2<u32>) -> u32 {
  if (isNan(xb)) { return NAN_BITS; }
  let e = bitcast<i32>(p.x);
  var r = ${qmax}.0;
  if (!isInf(xb)) {
    let t = pow2Mul(fv(xb & 0x7fffffffu), ${frac} - e);
    r = floor(t);
    let dd = t - r;
    if (dd > 0.5 || (dd == 0.5 && (${away} || (u32(r) & 1u) == 1u))) { r = r + 1.0; }
    r = min(r, ${qmax}.0);
  }
  let v = fbits(pow2Mul(r, e - ${frac}));
  return select(v, v | (xb & 0x80000000u), r > 0.0);
}`;
  }
  return {
    key: `mx:${spec.element}:${spec.rounding}`,
    segLen: k,
    paramLen: k,
    global: false,
    wgsl: params + quant,
  };
}

function fp8Plan(spec: Extract<FormatSpec, { kind: 'fp8' }>, cols: number): Plan {
  const mf = spec.element === 'e4m3' ? E4M3 : spec.element === 'e5m2' ? E5M2 : undefined;
  if (!mf) return fail(`unknown FP8 element '${spec.element}' (expected e4m3 or e5m2)`);
  if (spec.granularity !== 'tensor' && spec.granularity !== 'row')
    fail(`FP8 granularity must be 'tensor' or 'row', got '${spec.granularity}'`);
  const perTensor = spec.granularity === 'tensor';
  return {
    key: `fp8:${spec.element}`,
    segLen: cols,
    paramLen: perTensor ? 0 : cols,
    global: perTensor,
    wgsl: `${miniFloatWgsl('el', mf, false)}
fn params(st: vec2<f32>, g: vec2<f32>) -> vec2<u32> {
  let r = range(${perTensor ? 'g' : 'st'});
  var s = divRn(fbits(max(-r.x, r.y)), ${mf.maxNorm}.0);
  if ((s & 0x7fffffffu) == 0u) { s = fbits(1.0); }
  return vec2<u32>(s, 0u);
}
fn quant(xb: u32, p: vec2<u32>) -> u32 {
  if (isNan(xb)) { return NAN_BITS; }
  let scale = fv(p.x);
  var c = ${mf.maxCode}u;
  if (!isInf(xb)) { c = elCode(divRn(xb & 0x7fffffffu, scale)); }
  return fbits(elValue(c) * scale) | (xb & 0x80000000u);
}`,
  };
}

function nvfp4Plan(cols: number): Plan {
  if (cols % 16 !== 0) fail(`nvfp4 block size 16 does not divide the row length (last dimension) ${cols}`);
  return {
    key: 'nvfp4',
    segLen: 16,
    paramLen: 16,
    global: true,
    wgsl: `${miniFloatWgsl('sc', E4M3, false)}${miniFloatWgsl('el', E2M1, false)}
fn params(st: vec2<f32>, g: vec2<f32>) -> vec2<u32> {
  let rg = range(g);
  var gs = divF(max(-rg.x, rg.y), ${6 * 448}.0);
  if (!(gs >= ${lit(2 ** -126)})) { gs = 1.0; }
  let r = range(st);
  var c = scCode(divRn(divRn(fbits(max(-r.x, r.y)), 6.0), gs));
  if (c == 0u) { c = 0x38u; }
  return vec2<u32>(fbits(scValue(c) * gs), c);
}
fn quant(xb: u32, p: vec2<u32>) -> u32 {
  if (isNan(xb)) { return NAN_BITS; }
  let d = fv(p.x);
  var c = ${E2M1.maxCode}u;
  if (!isInf(xb)) { c = elCode(divRn(xb & 0x7fffffffu, d)); }
  return fbits(elValue(c) * d) | (xb & 0x80000000u);
}`,
  };
}

/**
 * Plans by spec object and row length: a decode step quantizes the same linears' inputs every token
 * and a plan's WGSL takes longer to build than the dispatch to record (specs are not mutated).
 */
const plans = new WeakMap<FormatSpec, Map<number, Plan>>();

function planFor(spec: FormatSpec, cols: number): Plan {
  let byCols = plans.get(spec);
  if (!byCols) plans.set(spec, (byCols = new Map()));
  let plan = byCols.get(cols);
  if (!plan) byCols.set(cols, (plan = newPlan(spec, cols)));
  return plan;
}

function newPlan(spec: FormatSpec, cols: number): Plan {
  switch (spec.kind) {
    case 'int':
      return intPlan(spec, cols);
    case 'mx':
      return mxPlan(spec, cols);
    case 'fp8':
      return fp8Plan(spec, cols);
    case 'nvfp4':
      return nvfp4Plan(cols);
    default:
      return fail(`unknown format kind '${(spec as { kind: string }).kind}'`);
  }
}

/** Lanes per segment in the stats pass: a power of two <= min(segLen, WG). */
function lanesFor(segLen: number): number {
  let t = 1;
  while (t * 2 <= Math.min(segLen, WG)) t *= 2;
  return t;
}

/** WGSL: mn / mx updated by the value of bits `b` when it is finite. */
const finiteMinMax = (b: string) => `if ((${b} & 0x7f800000u) != 0x7f800000u) {
        mn = min(mn, bitcast<f32>(${b}));
        mx = max(mx, bitcast<f32>(${b}));
      }`;

/** WGSL: each group of `lanes` threads' mn / mx met in rmin / rmax; the group's first thread holds them. */
function minMaxTree(lanes: number): string {
  return `rmin[lid] = mn;
  rmax[lid] = mx;
  workgroupBarrier();
  for (var s = ${lanes / 2}u; s > 0u; s = s >> 1u) {
    if (lane < s) {
      rmin[lid] = min(rmin[lid], rmin[lid + s]);
      rmax[lid] = max(rmax[lid], rmax[lid + s]);
    }
    workgroupBarrier();
  }`;
}

function statsKernel(dtype: DType, lanes: number): Kernel {
  return {
    key: `fq-stats:${dtype}:${lanes}`,
    bindings: ['uniform', 'read', 'write'],
    code: () => `
struct P { nSeg: u32, len: u32, xOff: u32, sOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<u32>;
@group(0) @binding(2) var<storage, read_write> S: array<vec2<f32>>;
var<workgroup> rmin: array<f32, ${WG}>;
var<workgroup> rmax: array<f32, ${WG}>;
${loadBitsFn(dtype)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let lane = lid % ${lanes}u;
  let seg = flatWg(wid, nwg) * ${WG / lanes}u + lid / ${lanes}u;
  var mn = 3.4028234663852886e38;
  var mx = -3.4028234663852886e38;
  if (seg < p.nSeg) {
    let base = p.xOff + seg * p.len;
    ${stridedLoop({
      count: 'p.len',
      lane: 'lane',
      lanes,
      steps: ROW_STEPS,
      load: (j, i) => `let b${j} = ldBits(base + ${i});`,
      use: (j) => finiteMinMax(`b${j}`),
    })}
  }
  ${minMaxTree(lanes)}
  if (lane == 0u && seg < p.nSeg) {
    // a segment whose every value is non-finite keeps min > max: "empty"
    S[p.sOff + seg] = vec2<f32>(rmin[lid], rmax[lid]);
  }
}`,
  };
}

const globalKernel: Kernel = {
  key: 'fq-global',
  bindings: ['uniform', 'read', 'write'],
  code: () => `
struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> S: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> G: array<vec2<f32>>;
var<workgroup> rmin: array<f32, 256>;
var<workgroup> rmax: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
  var mn = 3.4028234663852886e38;
  var mx = -3.4028234663852886e38;
  for (var i = lid; i < p.n; i += 256u) {
    mn = min(mn, S[i].x);
    mx = max(mx, S[i].y);
  }
  rmin[lid] = mn;
  rmax[lid] = mx;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      rmin[lid] = min(rmin[lid], rmin[lid + s]);
      rmax[lid] = max(rmax[lid], rmax[lid + s]);
    }
    workgroupBarrier();
  }
  if (lid == 0u) { G[0] = vec2<f32>(rmin[0], rmax[0]); }
}`,
};

function paramsKernel(plan: Plan): Kernel {
  return {
    key: `fq-params:${plan.key}:${plan.global}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> S: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> G: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> Q: array<vec2<u32>>;
${COMMON}
${plan.wgsl}
${FLAT_WG}
@compute @workgroup_size(${EW_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flatWg(wid, nwg) * ${EW_WG}u + lid;
  if (i >= p.n) { return; }
  Q[i] = params(S[i], G[0]);
}`,
  };
}

function quantKernel(plan: Plan, dtype: DType): Kernel {
  return {
    key: `fq-quant:${plan.key}:${dtype}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { n: u32, xOff: u32, oOff: u32, base: u32, paramLen: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<u32>;
@group(0) @binding(2) var<storage, read> Q: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> O: array<u32>;
${COMMON}
${plan.wgsl}
${loadBitsFn(dtype)}
${FLAT_WG}
@compute @workgroup_size(${EW_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flatWg(wid, nwg) * ${EW_WG}u + lid;
  if (e >= p.n) { return; }
  var seg = 0u;
  if (p.paramLen != 0u) { seg = (p.base + e) / p.paramLen; }
  O[p.oOff + e] = quant(ldBits(p.xOff + e), Q[seg]);
}`,
  };
}

interface Walk {
  /** first value of the walk segment in the tensor */
  base: number;
  n: number;
  x: Window;
  o: Window;
}

/** Windows over x and out in steps of whole stats segments. */
function walk(ctx: GpuContext, x: Storage, out: Storage, segLen: number): Walk[] {
  const cols = x.cols;
  if (segLen > cols || cols % segLen !== 0) {
    // a 1-D tensor (one value per storage row): its one row must fit a binding
    return [{ base: 0, n: x.rows * cols, x: ctx.whole(x, 'fakeQuant'), o: ctx.whole(out, 'fakeQuant') }];
  }
  return ctx
    .segments(
      x.rows,
      [x, out].map((s) => ({ s, row0: 0 })),
    )
    .map((seg) => ({ base: seg.r0 * cols, n: seg.n * cols, x: seg.w[0], o: seg.w[1] }));
}

/**
 * The stats, global and parameter passes: one vec2<u32> of parameters per `plan.paramLen` values
 * (one for the tensor when 0), in a pooled buffer the caller releases.
 */
function quantParams(
  ctx: GpuContext,
  x: Storage,
  plan: Plan,
  walks: Walk[],
): { buffer: GPUBuffer; bytes: number } {
  const total = x.rows * x.cols;
  const nSeg = total / plan.segLen;
  const stats = ctx.alloc(nSeg * 8);
  const lanes = lanesFor(plan.segLen);
  const sk = statsKernel(x.dtype, lanes);
  for (const w of walks) {
    const n = w.n / plan.segLen;
    ctx.dispatch(
      sk,
      new Params()
        .u(n)
        .u(plan.segLen)
        .u(w.x.off)
        .u(w.base / plan.segLen),
      [w.x.binding, wholeBuffer(stats, nSeg * 8)],
      grid2(Math.ceil(n / (WG / lanes))),
    );
  }
  const glob = ctx.alloc(8);
  if (plan.global)
    ctx.dispatch(
      globalKernel,
      new Params().u(nSeg),
      [wholeBuffer(stats, nSeg * 8), wholeBuffer(glob, 8)],
      [1],
    );
  const nParams = plan.paramLen === 0 ? 1 : total / plan.paramLen;
  const params = ctx.alloc(nParams * 8);
  ctx.dispatch(
    paramsKernel(plan),
    new Params().u(nParams),
    [wholeBuffer(stats, nSeg * 8), wholeBuffer(glob, 8), wholeBuffer(params, nParams * 8)],
    grid2(Math.ceil(nParams / EW_WG)),
  );
  ctx.release(stats);
  ctx.release(glob);
  return { buffer: params, bytes: nParams * 8 };
}

export function fakeQuant(ctx: GpuContext, x: Storage, lastDim: number, spec: FormatSpec): Storage {
  const plan = planFor(spec, lastDim);
  const out = ctx.allocStorage(x.rows, x.cols, 'f32');
  if (x.rows * x.cols === 0) return out;
  const walks = walk(ctx, x, out, plan.segLen);
  const params = quantParams(ctx, x, plan, walks);
  const qk = quantKernel(plan, x.dtype);
  for (const w of walks) {
    ctx.dispatch(
      qk,
      new Params().u(w.n).u(w.x.off).u(w.o.off).u(w.base).u(plan.paramLen),
      [w.x.binding, wholeBuffer(params.buffer, params.bytes), w.o.binding],
      grid2(Math.ceil(w.n / EW_WG)),
    );
  }
  ctx.release(params.buffer);
  return out;
}

/** WGSL: the code of one value (bits) at `scale` on the symmetric grid of `bits`, as fakeQuant rounds it, in a byte. */
function int8CodeFn(bits: number): string {
  const [qmin, qmax] = [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1];
  return `fn code(xb: u32, scale: f32) -> u32 {
  var q = 0.0;
  if (isInf(xb)) { q = select(${qmax}.0, ${qmin}.0, (xb >> 31u) == 1u); }
  else if (!isNan(xb)) { q = clamp(rneDiv(xb, scale), ${qmin}.0, ${qmax}.0); }
  return u32(i32(q)) & 0xffu;
}`;
}

/** Writes each row's codes as int8, four per word, and its scale (the fakeQuant grid of `bits`). */
function int8CodesKernel(dtype: DType, bits: number): Kernel {
  return {
    key: `int8-codes:${dtype}:${bits}`,
    bindings: ['uniform', 'read', 'read', 'write', 'write'],
    code: () => `
struct P { words: u32, colWords: u32, xOff: u32, row0: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<u32>;
@group(0) @binding(2) var<storage, read> Q: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> O: array<u32>;
@group(0) @binding(4) var<storage, read_write> S: array<f32>;
${COMMON}
${loadBitsFn(dtype)}
${FLAT_WG}
${int8CodeFn(bits)}
@compute @workgroup_size(${EW_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let w = flatWg(wid, nwg) * ${EW_WG}u + lid;
  if (w >= p.words) { return; }
  let row = w / p.colWords;
  let scale = fv(Q[p.row0 + row].x);
  var packed = 0u;
  for (var e = 0u; e < 4u; e++) { packed |= code(ldBits(p.xOff + w * 4u + e), scale) << (8u * e); }
  O[p.oOff + w] = packed;
  if (w % p.colWords == 0u) { S[p.row0 + row] = scale; }
}`,
  };
}

const ROW_WG = RMS_WG;
/** A row kernel's loop over `count` items: thread lid takes lid, lid + ROW_WG, ..., ROW_STEPS loads at a time. */
const rowLoop = (count: string) => ({ count, lane: 'lid', lanes: ROW_WG, steps: ROW_STEPS });

/**
 * The stats, parameter and codes passes of a per-row plan in one kernel, a workgroup a row: the
 * row's min/max over its finite values (the stats pass's), params() of it, then its codes and scale.
 * With `norm` (the norm weight's dtype) x is an RMSNorm's input and each row is normalized first,
 * as rmsnorm computes it. Both passes take four values a load (a vec4 where x is f32 at an aligned
 * offset, `vec4x`): a decode row is one workgroup, so the bytes each load brings set its speed.
 */
function int8RowKernel(
  dtype: DType,
  bits: number,
  plan: Plan,
  norm: DType | undefined,
  vec4x: boolean,
): Kernel {
  const bitsOf = (i: string) =>
    norm
      ? `bitcast<u32>(${normedValue(`ldN(p.nOff + ${i})`, `ldX(base + ${i})`, 'inv')})`
      : `ldBits(base + ${i})`;
  // the bits of columns 4c..4c+3 of the row (built only when the kernel is compiled)
  const chunk = () =>
    vec4x
      ? `fn chunk(base: u32, c: u32${norm ? ', inv: f32' : ''}) -> vec4<u32> {
  let v = X4[base / 4u + c];${
    norm
      ? `
  let k = p.nOff + 4u * c;
  return vec4<u32>(${range(4)
    .map((e) => `bitcast<u32>(${normedValue(`ldN(k + ${e}u)`, `bitcast<f32>(v[${e}])`, 'inv')})`)
    .join(', ')});`
      : `
  return v;`
  }
}`
      : `fn chunk(base: u32, c: u32${norm ? ', inv: f32' : ''}) -> vec4<u32> {
  return vec4<u32>(${range(4)
    .map((e) => bitsOf(`4u * c + ${e}u`))
    .join(', ')});
}`;
  // both passes load each thread's chunks the same way
  const loadChunk = (j: number, c: string) => `let b${j} = chunk(base, ${c}${norm ? ', inv' : ''});`;
  return {
    key: `int8-row:${dtype}:${bits}:${plan.key}${norm ? `:norm-${norm}` : ''}${vec4x ? ':vec4' : ''}`,
    bindings: ['uniform', 'read', 'write', 'write', ...(norm ? (['read'] as const) : [])],
    code: () => `
struct P { rows: u32, cols: u32, xOff: u32, oOff: u32, sOff: u32, nOff: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
${
  vec4x
    ? `@group(0) @binding(1) var<storage, read> X4: array<vec4<u32>>;
fn ldBits(i: u32) -> u32 { return X4[i / 4u][i % 4u]; }`
    : `@group(0) @binding(1) var<storage, read> X: array<u32>;
${loadBitsFn(dtype)}`
}
@group(0) @binding(2) var<storage, read_write> O: array<u32>;
@group(0) @binding(3) var<storage, read_write> S: array<f32>;
var<workgroup> rmin: array<f32, ${ROW_WG}>;
var<workgroup> rmax: array<f32, ${ROW_WG}>;
${COMMON}
${plan.wgsl}
${FLAT_WG}
${int8CodeFn(bits)}
${
  norm
    ? `@group(0) @binding(4) var<storage, read> NW: array<${arrayType(norm)}>;
${loadFn('ldN', 'NW', norm)}
fn ldX(i: u32) -> f32 { return bitcast<f32>(ldBits(i)); }
var<workgroup> nred: array<f32, ${ROW_WG}>;`
    : ''
}
${chunk()}
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flatWg(wid, nwg);
  if (row >= p.rows) { return; }
  let base = p.xOff + row * p.cols;
  ${norm ? rmsInverse('nred', 'base', 'p.cols') : ''}
  let lane = lid;
  var mn = 3.4028234663852886e38;
  var mx = -3.4028234663852886e38;
  let colWords = p.cols / 4u;${stridedLoop({
    ...rowLoop('colWords'),
    load: loadChunk,
    use: (j) =>
      range(4)
        .map((e) => finiteMinMax(`b${j}[${e}]`))
        .join('\n      '),
  })}
  ${minMaxTree(ROW_WG)}
  let scale = fv(params(vec2<f32>(rmin[0], rmax[0]), vec2<f32>(0.0, 0.0)).x);${stridedLoop({
    ...rowLoop('colWords'),
    load: loadChunk,
    use: (j) =>
      `O[p.oOff + row * colWords + i${j}] = ${range(4)
        .map((e) => `(code(b${j}[${e}], scale) << ${8 * e}u)`)
        .join(' | ')};`,
  })}
  if (lid == 0u) { S[p.sOff + row] = scale; }
}`,
  };
}

/** An RMSNorm a row quantizer applies first: its weight and eps. */
export interface RowNorm {
  weight: Storage;
  eps: number;
}

/**
 * quantizeRowsInt8 (of rmsnorm(x) with `norm`) in one dispatch where x, its codes and scales (and
 * the norm weight) each fit one binding; false otherwise.
 */
function quantizeRowsInt8Fused(
  ctx: GpuContext,
  x: Storage,
  out: { codes: Storage; scales: Storage },
  spec: IntSpec,
  plan: Plan,
  norm?: RowNorm,
): boolean {
  const [xw, ow, sw] = [x, out.codes, out.scales].map((s) => ctx.wholeIfFits(s));
  const nw = norm ? ctx.wholeIfFits(norm.weight) : undefined;
  if (!xw || !ow || !sw || (norm && !nw)) return false;
  if (plan.global || plan.segLen !== x.cols || plan.paramLen !== x.cols) return false;
  ctx.dispatch(
    int8RowKernel(x.dtype, spec.bits, plan, norm?.weight.dtype, x.dtype === 'f32' && xw.off % 4 === 0),
    new Params()
      .u(x.rows)
      .u(x.cols)
      .u(xw.off)
      .u(ow.off / 4)
      .u(sw.off)
      .u(nw?.off ?? 0)
      .f(norm?.eps ?? 0),
    [xw.binding, ow.binding, sw.binding, ...(nw ? [nw.binding] : [])],
    grid2(x.rows),
  );
  return true;
}

/**
 * x [M, K] -> int8 codes [M, K] and f32 scales [M]: symmetric per-row INT of at most 8 bits, the
 * same scales and codes as fakeQuant(x, spec) (whose values are codes x scale). K a multiple of 4.
 */
export function quantizeRowsInt8(
  ctx: GpuContext,
  x: Storage,
  spec: IntSpec,
): { codes: Storage; scales: Storage } {
  const cols = x.cols;
  if (cols % 4 !== 0) fail(`quantizeRowsInt8: the row length ${cols} must be a multiple of 4`);
  const codes = ctx.allocStorage(x.rows, cols, 'i8');
  const scales = ctx.allocStorage(x.rows, 1, 'f32');
  if (x.rows === 0) return { codes, scales };
  const plan = planFor(spec, cols);
  if (quantizeRowsInt8Fused(ctx, x, { codes, scales }, spec, plan)) return { codes, scales };
  const walks = walk(ctx, x, codes, cols);
  const params = quantParams(ctx, x, plan, walks);
  const sw = ctx.whole(scales, 'quantizeRowsInt8');
  for (const w of walks) {
    const words = w.n / 4;
    ctx.dispatch(
      int8CodesKernel(x.dtype, spec.bits),
      new Params()
        .u(words)
        .u(cols / 4)
        .u(w.x.off)
        .u(w.base / cols)
        .u(w.o.off / 4),
      [w.x.binding, wholeBuffer(params.buffer, params.bytes), w.o.binding, sw.binding],
      grid2(Math.ceil(words / EW_WG)),
    );
  }
  ctx.release(params.buffer);
  return { codes, scales };
}

/**
 * quantizeRowsInt8(rmsnorm(x, norm.weight, norm.eps), spec) in one dispatch, equal to the two ops;
 * undefined where one kernel cannot do it (a tensor larger than one binding).
 */
export function rmsnormQuantizeRowsInt8(
  ctx: GpuContext,
  x: Storage,
  spec: IntSpec,
  norm: RowNorm,
): { codes: Storage; scales: Storage } | undefined {
  if (x.cols % 4 !== 0 || norm.weight.rows * norm.weight.cols !== x.cols || x.rows === 0) return undefined;
  const out = { codes: ctx.allocStorage(x.rows, x.cols, 'i8'), scales: ctx.allocStorage(x.rows, 1, 'f32') };
  if (quantizeRowsInt8Fused(ctx, x, out, spec, planFor(spec, x.cols), norm)) return out;
  ctx.releaseStorage(out.codes);
  ctx.releaseStorage(out.scales);
  return undefined;
}
