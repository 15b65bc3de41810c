/**
 * dequantize(quantize(x)) in llama.cpp's Q4_K, Q5_K and Q6_K super-blocks on the GPU, for the searches
 * that only rank candidates (AWQ's scale and clip searches): the same float32 algorithm as
 * formats/kquants.ts (quantize_row_q4_K_ref / _q5_K_ref / _q6_K_ref), not bit for bit. WGSL lets a
 * compiler fuse a multiply and an add and gives division and sqrt a few ulps of slack, so in a near-tie
 * of llama.cpp's grid search the GPU may take the other candidate; blocks llmq stores always come from
 * the exact host quantizer. test/kquant-gpu.test.ts bounds how often and by how much they differ.
 *
 * Q4_K / Q5_K: one thread per sub-block of 32 (make_qkx2_quants' weighted search over its grid), the
 * 8 sub-blocks of a super-block exchanging their scale and min through workgroup memory for the 6-bit
 * codes under fp16 d and dmin, then each value requantized. Q6_K: one thread per group of 16
 * (make_qx_quants weighted by x^2), the 16 groups of a super-block sharing the int8 scales' fp16 d.
 */
import { fail } from '../../errors.ts';
import type { GgmlSpec } from '../../formats/spec.ts';
import type { DType } from '../tensor.ts';
import type { GpuContext, Kernel, Storage } from './context.ts';
import { GGML_WG, ggmlKernelHeader, runBlockKernel } from './quant-ggml.ts';

export type SearchKType = 'q4_k' | 'q5_k' | 'q6_k';
export const SEARCH_K_TYPES: readonly string[] = ['q4_k', 'q5_k', 'q6_k'];

const WG = GGML_WG;
const QK_K = 256;

/** make_qkx2_quants' code range and grid per type (formats/ggml-search.ts). */
const SCALE_MIN = {
  q4_k: { nmax: 15, rmin: '-1.0', steps: 20 },
  q5_k: { nmax: 31, rmin: '-0.5', steps: 15 },
} as const;

function scaleMinWgsl(type: 'q4_k' | 'q5_k'): string {
  const { nmax, rmin, steps } = SCALE_MIN[type];
  return `
const NMAX = ${nmax}.0;
const SUB = 32u;
var<workgroup> shScale: array<f32, ${WG}>;
var<workgroup> shMin: array<f32, ${WG}>;
fn codeOf(v: f32) -> u32 { return u32(clamp(round(v), 0.0, NMAX)); }
fn weightedErr(x: ptr<function, array<f32, 32>>, w: ptr<function, array<f32, 32>>,
               l: ptr<function, array<u32, 32>>, scale: f32, mn: f32) -> f32 {
  var err = 0.0;
  for (var i = 0u; i < SUB; i++) {
    let diff = scale * f32((*l)[i]) + mn - (*x)[i];
    err += (*w)[i] * (diff * diff);
  }
  return err;
}
/** make_qkx2_quants: codes into L, returns (scale, the_min) with x ~ scale L - the_min */
fn fitScaleMin(x: ptr<function, array<f32, 32>>, w: ptr<function, array<f32, 32>>,
               L: ptr<function, array<u32, 32>>) -> vec2<f32> {
  var mn = (*x)[0];
  var mx = (*x)[0];
  var sumW = (*w)[0];
  var sumX = sumW * (*x)[0];
  for (var i = 1u; i < SUB; i++) {
    let v = (*x)[i];
    mn = select(mn, v, v < mn);
    mx = select(mx, v, v > mx);
    sumW += (*w)[i];
    sumX += (*w)[i] * v;
  }
  if (mn > 0.0) { mn = 0.0; }
  if (mx == mn) {
    for (var i = 0u; i < SUB; i++) { (*L)[i] = 0u; }
    return vec2<f32>(0.0, -mn);
  }
  var iscale = NMAX / (mx - mn);
  var scale = 1.0 / iscale;
  for (var i = 0u; i < SUB; i++) { (*L)[i] = codeOf(iscale * ((*x)[i] - mn)); }
  var best = weightedErr(x, w, L, scale, mn);
  var aux: array<u32, 32>;
  for (var k = 0; k <= ${steps}; k++) {
    iscale = (${rmin} + 0.1 * f32(k) + NMAX) / (mx - mn);
    var sumL = 0.0;
    var sumL2 = 0.0;
    var sumXL = 0.0;
    for (var i = 0u; i < SUB; i++) {
      let l = codeOf(iscale * ((*x)[i] - mn));
      aux[i] = l;
      let wl = (*w)[i] * f32(l);
      sumL += wl;
      sumL2 += wl * f32(l);
      sumXL += wl * (*x)[i];
    }
    let D = sumW * sumL2 - sumL * sumL;
    if (!(D > 0.0)) { continue; }
    var thisScale = (sumW * sumXL - sumX * sumL) / D;
    var thisMin = (sumL2 * sumX - sumL * sumXL) / D;
    if (thisMin > 0.0) {
      thisMin = 0.0;
      thisScale = sumXL / sumL2;
    }
    let err = weightedErr(x, w, &aux, thisScale, thisMin);
    if (err < best) {
      *L = aux;
      best = err;
      scale = thisScale;
      mn = thisMin;
    }
  }
  return vec2<f32>(scale, -mn);
}
/** the 6-bit code of v against the super-block's largest (llama.cpp: nearest, as uint8, at most 63) */
fn sixBit(v: f32, inv: f32) -> u32 { return min(63u, u32(i32(round(inv * v))) & 0xffu); }

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let sb = flatWg(wid, nwg) * ${WG}u + lid;
  let valid = sb < p.n;
  var x: array<f32, 32>;
  var w: array<f32, 32>;
  var L: array<u32, 32>;
  var fit = vec2<f32>(0.0, 0.0);
  if (valid) {
    var sumX2 = 0.0;
    for (var i = 0u; i < SUB; i++) {
      x[i] = fv(ldBits(p.xOff + sb * SUB + i));
      sumX2 += x[i] * x[i];
    }
    let rms = sqrt(sumX2 / 32.0);
    for (var i = 0u; i < SUB; i++) { w[i] = rms + abs(x[i]); }
    fit = fitScaleMin(&x, &w, &L);
  }
  shScale[lid] = fit.x;
  shMin[lid] = fit.y;
  workgroupBarrier();
  if (!valid) { return; }
  let first = lid & ~7u;
  var maxScale = 0.0;
  var maxMin = 0.0;
  for (var j = 0u; j < 8u; j++) {
    maxScale = select(maxScale, shScale[first + j], shScale[first + j] > maxScale);
    maxMin = select(maxMin, shMin[first + j], shMin[first + j] > maxMin);
  }
  let ls = sixBit(fit.x, select(0.0, 63.0 / maxScale, maxScale > 0.0));
  let lm = sixBit(fit.y, select(0.0, 63.0 / maxMin, maxMin > 0.0));
  let dj = f16(maxScale / 63.0) * f32(ls);
  let mj = f16(maxMin / 63.0) * f32(lm);
  for (var i = 0u; i < SUB; i++) {
    var q = L[i];
    if (dj != 0.0) { q = codeOf((x[i] + mj) / dj); }
    O[p.oOff + sb * SUB + i] = fbits(dj * f32(q) - mj);
  }
}`;
}

const Q6_K_WGSL = `
const NMAX = 32.0;
const SUB = 16u;
var<workgroup> shScale: array<f32, ${WG}>;
fn codeAt(v: f32, iscale: f32) -> f32 { return clamp(round(iscale * v), -NMAX, NMAX - 1.0); }
/** make_qx_quants(16, 32, x, L, rmse_type 1) weighted by x^2: codes (offset by 32) into L */
fn fitScale(x: ptr<function, array<f32, 16>>, L: ptr<function, array<u32, 16>>) -> f32 {
  var amax = 0.0;
  var mx = 0.0;
  for (var i = 0u; i < SUB; i++) {
    let a = abs((*x)[i]);
    if (a > amax) {
      amax = a;
      mx = (*x)[i];
    }
  }
  if (amax < 1e-15) {
    for (var i = 0u; i < SUB; i++) { (*L)[i] = 0u; }
    return 0.0;
  }
  var scale = 0.0;
  var best = 0.0;
  // k = -10: the first guess, nmax / max; then the grid (nmax + 0.1 k) / max, k = -9..9 without 0
  for (var k = -10; k <= 9; k++) {
    if (k == 0) { continue; }
    let iscale = -(NMAX + 0.1 * select(f32(k), 0.0, k == -10)) / mx;
    var sumLX = 0.0;
    var sumL2 = 0.0;
    for (var i = 0u; i < SUB; i++) {
      let v = (*x)[i];
      let l = codeAt(v, iscale);
      let w = v * v;
      sumLX += w * v * l;
      sumL2 += w * l * l;
    }
    let better = k == -10 || (sumL2 > 0.0 && sumLX * sumLX > best * sumL2);
    if (better) {
      for (var i = 0u; i < SUB; i++) { (*L)[i] = u32(codeAt((*x)[i], iscale) + NMAX); }
      scale = select(0.0, sumLX / sumL2, sumL2 != 0.0);
      best = scale * sumLX;
    }
  }
  return scale;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flatWg(wid, nwg) * ${WG}u + lid;
  let valid = g < p.n;
  var x: array<f32, 16>;
  var L: array<u32, 16>;
  var scale = 0.0;
  if (valid) {
    for (var i = 0u; i < SUB; i++) { x[i] = fv(ldBits(p.xOff + g * SUB + i)); }
    scale = fitScale(&x, &L);
  }
  shScale[lid] = scale;
  workgroupBarrier();
  if (!valid) { return; }
  let first = lid & ~15u;
  var maxAbs = 0.0;
  var maxScale = 0.0;
  for (var j = 0u; j < 16u; j++) {
    let s = shScale[first + j];
    if (abs(s) > maxAbs) {
      maxAbs = abs(s);
      maxScale = s;
    }
  }
  var dg = 0.0;
  if (maxAbs >= 1e-15) {
    let iscale = -128.0 / maxScale;
    let sc = min(127, i32(round(iscale * scale)));
    dg = f16(1.0 / iscale) * f32(sc);
  } else {
    for (var i = 0u; i < SUB; i++) { L[i] = 0u; }
  }
  for (var i = 0u; i < SUB; i++) {
    var q = f32(L[i]);
    if (dg != 0.0) { q = clamp(round(x[i] / dg), -32.0, 31.0) + 32.0; }
    O[p.oOff + g * SUB + i] = fbits(dg * (q - 32.0));
  }
}`;

function kquantKernel(type: SearchKType, dtype: DType): Kernel {
  return {
    key: `kquant-search:${type}:${dtype}`,
    bindings: ['uniform', 'read', 'write'],
    code: () => `${ggmlKernelHeader(dtype)}
${type === 'q6_k' ? Q6_K_WGSL : scaleMinWgsl(type)}`,
  };
}

/**
 * The Q4_K / Q5_K / Q6_K round trip of x (rows of `lastDim` values, a multiple of 256) for a search;
 * f32 result of x's shape. Approximate: see the file comment.
 */
export function kquantSearchFakeQuant(ctx: GpuContext, x: Storage, lastDim: number, spec: GgmlSpec): Storage {
  if (!SEARCH_K_TYPES.includes(spec.type)) fail(`K-quant search: no GPU kernel for ${spec.type}`);
  const type = spec.type as SearchKType;
  if (lastDim % QK_K !== 0 || x.cols % QK_K !== 0)
    fail(`${type}: super-blocks of ${QK_K} do not divide the row length ${lastDim}`);
  return runBlockKernel(ctx, kquantKernel(type, x.dtype), x, type === 'q6_k' ? 16 : 32);
}
