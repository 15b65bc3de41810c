/**
 * Causal grouped-query attention, flash style: a workgroup takes BQ consecutive queries of one
 * (sequence, head), one query per thread, and streams the keys/values it can see through shared
 * memory in tiles, keeping a running max / sum (online softmax) so scores never reach memory.
 */
import { fail } from '../../errors.ts';
import type { AttentionShape, DType } from '../tensor.ts';
import { type GpuContext, type Kernel, Params, type Storage } from './context.ts';
import { arrayType, loadFn } from './wgsl.ts';

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
