/**
 * dequantize(quantize(x)) in llama.cpp's IQ4_NL (blocks of 32) and IQ4_XS (super-blocks of 256) on the
 * GPU, for the searches that only rank candidates (AWQ's scale and clip searches): the float32
 * algorithm of formats/iq4.ts (quantize_iq4_nl / quantize_iq4_xs without an importance matrix), not bit
 * for bit, as the K-quant search kernels (quant-kquant.ts): in a near-tie of the 15-step scale search
 * the GPU may take the other candidate; blocks llmq stores come from the exact host quantizer.
 *
 * One thread per block of 32: the weighted least-squares scale over the candidate reciprocals, the
 * codes the nearest of the 16 levels. IQ4_XS: the 8 threads of a super-block exchange their scales
 * through workgroup memory for fp16 d = (scale of largest magnitude) / -32 and the 6-bit sub-block
 * scales, then re-pick the codes.
 */
import { fail } from '../../errors.ts';
import { ggmlBlockLayout } from '../../formats/ggml-codes.ts';
import { IQ4_LEVELS } from '../../formats/iq4.ts';
import type { GgmlSpec } from '../../formats/spec.ts';
import type { DType } from '../tensor.ts';
import type { GpuContext, Kernel, Storage } from './context.ts';
import { GGML_WG, ggmlKernelHeader, runBlockKernel } from './quant-ggml.ts';

export type SearchIq4Type = 'iq4_nl' | 'iq4_xs';
export const SEARCH_IQ4_TYPES: readonly string[] = ['iq4_nl', 'iq4_xs'];

const WG = GGML_WG;
const SUB = 32;

const IQ4_WGSL = `
var<private> LV: array<f32, 16> = array<f32, 16>(${[...IQ4_LEVELS].map((v) => `${v}.0`).join(', ')});
var<workgroup> shScale: array<f32, ${WG}>;
/** best_index_int8: the nearest level, the upper one on a tie */
fn nearestLevel(v: f32) -> u32 {
  if (v <= LV[0]) { return 0u; }
  if (v >= LV[15]) { return 15u; }
  var lo = 0u;
  for (var i = 1u; i < 15u; i++) { if (v >= LV[i]) { lo = i; } }
  return select(lo + 1u, lo, v - LV[lo] < LV[lo + 1u] - v);
}
/** (sum w q x, sum w q^2) for the codes nearest to x * id */
fn sums(x: ptr<function, array<f32, ${SUB}>>, id: f32) -> vec2<f32> {
  var s = vec2<f32>(0.0, 0.0);
  for (var i = 0u; i < ${SUB}u; i++) {
    let v = (*x)[i];
    let q = LV[nearestLevel(id * v)];
    let wq = v * v * q;
    s += vec2<f32>(wq * v, wq * q);
  }
  return s;
}
/** the block's scale: least squares under weights x^2 over d = max / -127 and 15 reciprocals */
fn blockScale(x: ptr<function, array<f32, ${SUB}>>) -> f32 {
  var amax = 0.0;
  var mx = 0.0;
  for (var i = 0u; i < ${SUB}u; i++) {
    let a = abs((*x)[i]);
    if (a > amax) {
      amax = a;
      mx = (*x)[i];
    }
  }
  if (amax < 1e-15) { return 0.0; }
  var s = sums(x, 1.0 / (-mx / LV[0]));
  var d = select(0.0, s.x / s.y, s.y > 0.0);
  var best = d * s.x;
  for (var t = -7; t <= 7; t++) {
    s = sums(x, (f32(t) + LV[0]) / mx);
    if (s.y > 0.0 && s.x * s.x > best * s.y) {
      d = s.x / s.y;
      best = d * s.x;
    }
  }
  return d;
}`;

function mainWgsl(type: SearchIq4Type): string {
  const superBlock = type === 'iq4_xs';
  return `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flatWg(wid, nwg) * ${WG}u + lid;
  let valid = g < p.n;
  var x: array<f32, ${SUB}>;
  var scale = 0.0;
  if (valid) {
    for (var i = 0u; i < ${SUB}u; i++) { x[i] = fv(ldBits(p.xOff + g * ${SUB}u + i)); }
    scale = blockScale(&x);
  }
${
  superBlock
    ? `  shScale[lid] = scale;
  workgroupBarrier();
  if (!valid) { return; }
  let first = lid & ~7u;
  var maxScale = 0.0;
  for (var j = 0u; j < 8u; j++) {
    let s = shScale[first + j];
    if (abs(s) > abs(maxScale)) { maxScale = s; }
  }
  let d = -maxScale / 32.0;
  let l = clamp(round(select(0.0, 1.0 / d, d != 0.0) * scale), -32.0, 31.0);
  let dl = d * l;
  let id = select(0.0, 1.0 / dl, dl != 0.0);
  let stored = f16(d) * l;`
    : `  if (!valid) { return; }
  let id = select(0.0, 1.0 / scale, scale != 0.0);
  let stored = f16(scale);`
}
  for (var i = 0u; i < ${SUB}u; i++) {
    O[p.oOff + g * ${SUB}u + i] = fbits(stored * LV[nearestLevel(id * x[i])]);
  }
}`;
}

function iq4Kernel(type: SearchIq4Type, dtype: DType): Kernel {
  return {
    key: `iq4-search:${type}:${dtype}`,
    bindings: ['uniform', 'read', 'write'],
    code: () => `${ggmlKernelHeader(dtype)}
${IQ4_WGSL}
${mainWgsl(type)}`,
  };
}

/**
 * The IQ4_NL / IQ4_XS round trip of x (rows of `lastDim` values, a multiple of the type's block) for a
 * search; f32 result of x's shape. Approximate: see the file comment.
 */
export function iq4SearchFakeQuant(ctx: GpuContext, x: Storage, lastDim: number, spec: GgmlSpec): Storage {
  if (!SEARCH_IQ4_TYPES.includes(spec.type)) fail(`IQ4 search: no GPU kernel for ${spec.type}`);
  const type = spec.type as SearchIq4Type;
  const block = ggmlBlockLayout(type).values;
  if (lastDim % block !== 0 || x.cols % block !== 0)
    fail(`${type}: blocks of ${block} do not divide the row length ${lastDim}`);
  return runBlockKernel(ctx, iq4Kernel(type, x.dtype), x, SUB);
}
