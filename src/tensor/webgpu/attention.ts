/**
 * Causal grouped-query attention, flash style: a workgroup takes BQ consecutive queries of one
 * (sequence, head), one query per thread, and streams the keys/values it can see through shared
 * memory in tiles, keeping a running max / sum (online softmax) so scores never reach memory.
 */
import { fail } from '../../errors.ts';
import type { AttentionShape, CachedAttentionShape, DType } from '../tensor.ts';
import { type GpuContext, type Kernel, Params, type Storage } from './context.ts';
import { arrayType, chunkArrayType, chunkLoadFns, chunksFit, loadFn } from './wgsl.ts';

const BQ = 64;

/** Keys per tile: K and V tiles together fill at most 16 KiB of shared memory. */
function keysPerTile(headDim: number): number {
  return Math.max(1, Math.min(32, Math.floor(16384 / (8 * headDim))));
}

function attentionKernel(dq: DType, dk: DType, dv: DType, headDim: number): Kernel {
  const DH = headDim;
  const BKV = keysPerTile(DH);
  return {
    key: `attention:${dq}:${dk}:${dv}:${DH}`,
    bindings: ['uniform', 'read', 'read', 'read', 'write'],
    code: () => `
struct P { seqLen: u32, H: u32, Hkv: u32, qOff: u32, kOff: u32, vOff: u32, oOff: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> Q: array<${arrayType(dq)}>;
@group(0) @binding(2) var<storage, read> K: array<${arrayType(dk)}>;
@group(0) @binding(3) var<storage, read> V: array<${arrayType(dv)}>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
var<workgroup> Ks: array<f32, ${BKV * DH}>;
var<workgroup> Vs: array<f32, ${BKV * DH}>;
${loadFn('ldQ', 'Q', dq)}
${loadFn('ldK', 'K', dk)}
${loadFn('ldV', 'V', dv)}
@compute @workgroup_size(${BQ})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wid.y;
  let b = wid.z;
  let kvh = h / (p.H / p.Hkv);
  let q0 = wid.x * ${BQ}u;
  let qi = q0 + lid;
  let live = qi < p.seqLen;
  let qRow = p.qOff + (b * p.seqLen + min(qi, p.seqLen - 1u)) * p.H * ${DH}u + h * ${DH}u;
  var q: array<f32, ${DH}>;
  var acc: array<f32, ${DH}>;
  for (var d = 0u; d < ${DH}u; d++) {
    q[d] = ldQ(qRow + d);
    acc[d] = 0.0;
  }
  var m = -3.0e38;
  var l = 0.0;
  let kvStride = p.Hkv * ${DH}u;
  let kEnd = min(p.seqLen, q0 + ${BQ}u);
  for (var k0 = 0u; k0 < kEnd; k0 += ${BKV}u) {
    for (var i = lid; i < ${BKV * DH}u; i += ${BQ}u) {
      let j = k0 + i / ${DH}u;
      var kv = 0.0;
      var vv = 0.0;
      if (j < p.seqLen) {
        let o = (b * p.seqLen + j) * kvStride + kvh * ${DH}u + i % ${DH}u;
        kv = ldK(p.kOff + o);
        vv = ldV(p.vOff + o);
      }
      Ks[i] = kv;
      Vs[i] = vv;
    }
    workgroupBarrier();
    if (live && k0 <= qi) {
      let n = min(${BKV}u, qi + 1u - k0);
      var s: array<f32, ${BKV}>;
      var tileMax = -3.0e38;
      for (var j = 0u; j < n; j++) {
        var dot = 0.0;
        for (var d = 0u; d < ${DH}u; d++) { dot += q[d] * Ks[j * ${DH}u + d]; }
        s[j] = dot * p.scale;
        tileMax = max(tileMax, s[j]);
      }
      let mNew = max(m, tileMax);
      let corr = exp(m - mNew);
      l = l * corr;
      for (var d = 0u; d < ${DH}u; d++) { acc[d] = acc[d] * corr; }
      for (var j = 0u; j < n; j++) {
        let e = exp(s[j] - mNew);
        l += e;
        for (var d = 0u; d < ${DH}u; d++) { acc[d] += e * Vs[j * ${DH}u + d]; }
      }
      m = mNew;
    }
    workgroupBarrier();
  }
  if (live) {
    let inv = 1.0 / l;
    let oRow = p.oOff + (b * p.seqLen + qi) * p.H * ${DH}u + h * ${DH}u;
    for (var d = 0u; d < ${DH}u; d++) { O[oRow + d] = acc[d] * inv; }
  }
}`,
  };
}

export function attention(ctx: GpuContext, q: Storage, k: Storage, v: Storage, s: AttentionShape): Storage {
  const rows = s.batch * s.seqLen;
  const { numHeads: H, numKvHeads: Hkv, headDim: DH } = s;
  if (q.rows !== rows || q.cols !== H * DH)
    fail(`attention: q [${q.rows}, ${q.cols}] does not match ${JSON.stringify(s)}`);
  if (k.rows !== rows || k.cols !== Hkv * DH || v.rows !== rows || v.cols !== Hkv * DH)
    fail(`attention: k/v [${k.rows}, ${k.cols}] do not match ${JSON.stringify(s)}`);
  if (H % Hkv !== 0) fail(`attention: ${H} heads over ${Hkv} kv heads`);
  const out = ctx.allocStorage(rows, H * DH, 'f32');
  if (rows === 0) return out;
  const kernel = attentionKernel(q.dtype, k.dtype, v.dtype, DH);
  const parts = [q, k, v, out].map((t) => ({ s: t, row0: 0 }));
  for (const seg of ctx.segments(rows, parts, s.seqLen, 'attention')) {
    const [wq, wk, wv, wo] = seg.w;
    const params = new Params()
      .u(s.seqLen)
      .u(H)
      .u(Hkv)
      .u(wq.off)
      .u(wk.off)
      .u(wv.off)
      .u(wo.off)
      .f(1 / Math.sqrt(DH));
    const batch = seg.n / s.seqLen;
    ctx.dispatch(
      kernel,
      params,
      [wq.binding, wk.binding, wv.binding, wo.binding],
      [Math.ceil(s.seqLen / BQ), H, batch],
    );
  }
  return out;
}

const WG = 64;
/**
 * head dimensions summed across the workgroup per step of the final reduction (a thread a dimension
 * adds the WG partial sums in thread order, so CH sets the steps, not the result; 8 KiB of shared memory)
 */
const CH = 32;

/**
 * Attention against a KV cache: a workgroup per (query, head); its threads split the visible keys,
 * each keeping its own running max / sum / accumulator, merged through shared memory at the end.
 * One query per workgroup suits decoding (one query over thousands of keys). With `chunks` (head_dim
 * and the offsets multiples of 4) a thread reads its key and value rows four values a load; the sums
 * are the same, in the same order.
 */
function cachedAttentionKernel(dq: DType, dk: DType, dv: DType, headDim: number, chunks: boolean): Kernel {
  const DH = headDim;
  const D4 = DH / 4;
  const kvLoads = chunks
    ? `${chunkLoadFns('ldK', 'K', dk)}\n${chunkLoadFns('ldV', 'V', dv)}`
    : `${loadFn('ldK', 'K', dk)}\n${loadFn('ldV', 'V', dv)}`;
  // the key's score, the running max / sum update, then the value into the accumulator
  const [dotLoop, valueLoop] = chunks
    ? [
        `let o4 = o / 4u;
    var dot = 0.0;
    for (var i = 0u; i < ${D4}u; i++) {
      let kk = ldK4(p.kOff / 4u + o4 + i);
      dot += qs[4u * i] * kk.x;
      dot += qs[4u * i + 1u] * kk.y;
      dot += qs[4u * i + 2u] * kk.z;
      dot += qs[4u * i + 3u] * kk.w;
    }`,
        `for (var i = 0u; i < ${D4}u; i++) { acc[i] = acc[i] * corr + e * ldV4(p.vOff / 4u + o4 + i); }`,
      ]
    : [
        `var dot = 0.0;
    for (var d = 0u; d < ${DH}u; d++) { dot += qs[d] * ldK(p.kOff + o + d); }`,
        `for (var d = 0u; d < ${DH}u; d++) { acc[d] = acc[d] * corr + e * ldV(p.vOff + o + d); }`,
      ];
  const keyStep = `${dotLoop}
    let s = dot * p.scale;
    let mNew = max(m, s);
    let corr = exp(m - mNew);
    let e = exp(s - mNew);
    l = l * corr + e;
    ${valueLoop}`;
  const accAt = (d: string) => (chunks ? `acc[${d} / 4u][${d} % 4u]` : `acc[${d}]`);
  return {
    key: `attentionCached:${dq}:${dk}:${dv}:${DH}${chunks ? ':c' : ''}`,
    bindings: ['uniform', 'read', 'read', 'read', 'write'],
    code: () => `
struct P { past: u32, H: u32, Hkv: u32, qOff: u32, kOff: u32, vOff: u32, oOff: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> Q: array<${arrayType(dq)}>;
@group(0) @binding(2) var<storage, read> K: array<${chunks ? chunkArrayType(dk) : arrayType(dk)}>;
@group(0) @binding(3) var<storage, read> V: array<${chunks ? chunkArrayType(dv) : arrayType(dv)}>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
var<workgroup> qs: array<f32, ${DH}>;
var<workgroup> red: array<f32, ${WG}>;
var<workgroup> part: array<f32, ${WG * CH}>;
${loadFn('ldQ', 'Q', dq)}
${kvLoads}
fn reduceMax(lid: u32) -> f32 {
  for (var w = ${WG / 2}u; w > 0u; w = w >> 1u) {
    workgroupBarrier();
    if (lid < w) { red[lid] = max(red[lid], red[lid + w]); }
  }
  workgroupBarrier();
  let r = red[0];
  workgroupBarrier();
  return r;
}
fn reduceSum(lid: u32) -> f32 {
  for (var w = ${WG / 2}u; w > 0u; w = w >> 1u) {
    workgroupBarrier();
    if (lid < w) { red[lid] = red[lid] + red[lid + w]; }
  }
  workgroupBarrier();
  let r = red[0];
  workgroupBarrier();
  return r;
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let qi = wid.x;
  let h = wid.y;
  let kvh = h / (p.H / p.Hkv);
  let qRow = p.qOff + (qi * p.H + h) * ${DH}u;
  for (var d = lid; d < ${DH}u; d += ${WG}u) { qs[d] = ldQ(qRow + d); }
  workgroupBarrier();
  let visible = p.past + qi + 1u;
  let kvStride = p.Hkv * ${DH}u;
  var acc: array<${chunks ? `vec4<f32>, ${D4}` : `f32, ${DH}`}>;
  var m = -3.0e38;
  var l = 0.0;
  for (var j = lid; j < visible; j += ${WG}u) {
    let o = j * kvStride + kvh * ${DH}u;
    ${keyStep}
    m = mNew;
  }
  red[lid] = m;
  let mAll = reduceMax(lid);
  let f = exp(m - mAll);
  red[lid] = l * f;
  let lAll = reduceSum(lid);
  let oRow = p.oOff + (qi * p.H + h) * ${DH}u;
  for (var c0 = 0u; c0 < ${DH}u; c0 += ${CH}u) {
    for (var d = 0u; d < ${CH}u; d++) {
      let at = min(c0 + d, ${DH - 1}u);
      part[lid * ${CH}u + d] = select(0.0, ${accAt('at')} * f, c0 + d < ${DH}u);
    }
    workgroupBarrier();
    if (lid < ${CH}u && c0 + lid < ${DH}u) {
      var sum = 0.0;
      for (var t = 0u; t < ${WG}u; t++) { sum += part[t * ${CH}u + lid]; }
      O[oRow + c0 + lid] = sum / lAll;
    }
    workgroupBarrier();
  }
}`,
  };
}

export function attentionCached(
  ctx: GpuContext,
  q: Storage,
  k: Storage,
  v: Storage,
  s: CachedAttentionShape,
): Storage {
  const { queries, numHeads: H, numKvHeads: Hkv, headDim: DH } = s;
  const out = ctx.allocStorage(queries, H * DH, 'f32');
  if (queries === 0) return out;
  const [wq, wk, wv, wo] = [q, k, v, out].map((t) => ctx.whole(t, 'attentionCached'));
  const params = new Params()
    .u(s.past)
    .u(H)
    .u(Hkv)
    .u(wq.off)
    .u(wk.off)
    .u(wv.off)
    .u(wo.off)
    .f(1 / Math.sqrt(DH));
  const chunks = ctx.gemv.chunks && chunksFit(DH, [wk.off, wv.off], [k.dtype, v.dtype]);
  const kernel = cachedAttentionKernel(q.dtype, k.dtype, v.dtype, DH, chunks);
  ctx.dispatch(kernel, params, [wq.binding, wk.binding, wv.binding, wo.binding], [queries, H]);
  return out;
}
