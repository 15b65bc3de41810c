/** Row reductions: fused RMSNorm and the per-row NLL of log-softmax. One workgroup per row. */
import { fail } from '../../errors.ts';
import type { DType } from '../tensor.ts';
import { type GpuContext, grid2, type Kernel, Params, type Storage } from './context.ts';
import { arrayType, FLAT_WG, loadFn } from './wgsl.ts';

const WG = 256;

const TREE = (op: string) => `
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = ${op}; }
    workgroupBarrier();
  }`;

function rmsnormKernel(dx: DType, dw: DType): Kernel {
  return {
    key: `rmsnorm:${dx}:${dw}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { rows: u32, d: u32, xOff: u32, wOff: u32, oOff: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read> W: array<${arrayType(dw)}>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
var<workgroup> red: array<f32, ${WG}>;
${loadFn('ldX', 'X', dx)}
${loadFn('ldW', 'W', dw)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flatWg(wid, nwg);
  if (row >= p.rows) { return; }
  let base = p.xOff + row * p.d;
  var ss = 0.0;
  for (var i = lid; i < p.d; i += ${WG}u) {
    let v = ldX(base + i);
    ss += v * v;
  }
  red[lid] = ss;
  workgroupBarrier();
  ${TREE('red[lid] + red[lid + s]')}
  let inv = 1.0 / sqrt(red[0] / f32(p.d) + p.eps);
  let ob = p.oOff + row * p.d;
  for (var i = lid; i < p.d; i += ${WG}u) {
    O[ob + i] = ldW(p.wOff + i) * (ldX(base + i) * inv);
  }
}`,
  };
}

export function rmsnorm(ctx: GpuContext, x: Storage, w: Storage, eps: number): Storage {
  const D = x.cols;
  if (w.rows * w.cols !== D) fail(`rmsnorm: weight of ${w.rows * w.cols} values for rows of ${D}`);
  const out = ctx.allocStorage(x.rows, D, 'f32');
  const ww = ctx.whole(w, 'rmsnorm weight');
  const k = rmsnormKernel(x.dtype, w.dtype);
  for (const seg of ctx.segments(
    x.rows,
    [x, out].map((s) => ({ s, row0: 0 })),
  )) {
    const [wx, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(seg.n).u(D).u(wx.off).u(ww.off).u(wo.off).f(eps),
      [wx.binding, ww.binding, wo.binding],
      grid2(seg.n),
    );
  }
  return out;
}

function nllKernel(dx: DType): Kernel {
  return {
    key: `nll:${dx}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { rows: u32, v: u32, xOff: u32, tOff: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read> T: array<i32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
var<workgroup> red: array<f32, ${WG}>;
${loadFn('ldX', 'X', dx)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flatWg(wid, nwg);
  if (row >= p.rows) { return; }
  let base = p.xOff + row * p.v;
  var m = -3.0e38;
  for (var i = lid; i < p.v; i += ${WG}u) { m = max(m, ldX(base + i)); }
  red[lid] = m;
  workgroupBarrier();
  ${TREE('max(red[lid], red[lid + s])')}
  let mx = red[0];
  workgroupBarrier();
  var sum = 0.0;
  for (var i = lid; i < p.v; i += ${WG}u) { sum += exp(ldX(base + i) - mx); }
  red[lid] = sum;
  workgroupBarrier();
  ${TREE('red[lid] + red[lid + s]')}
  if (lid == 0u) {
    let t = u32(T[p.tOff + row]);
    O[p.oOff + row] = (log(red[0]) + mx) - ldX(base + t);
  }
}`,
  };
}

export function nll(ctx: GpuContext, logits: Storage, targets: Int32Array): Storage {
  const V = logits.cols;
  for (const t of targets) if (t < 0 || t >= V) fail(`nll: target ${t} outside the vocabulary (${V})`);
  const out = ctx.allocStorage(logits.rows, 1, 'f32');
  if (logits.rows === 0) return out;
  const tb = ctx.createWith(new Uint8Array(targets.buffer, targets.byteOffset, targets.byteLength));
  const k = nllKernel(logits.dtype);
  for (const seg of ctx.segments(
    logits.rows,
    [logits, out].map((s) => ({ s, row0: 0 })),
  )) {
    const [wx, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(seg.n).u(V).u(wx.off).u(seg.r0).u(wo.off),
      [wx.binding, { buffer: tb, offset: 0, size: tb.size }, wo.binding],
      grid2(seg.n),
    );
  }
  ctx.release(tb);
  return out;
}
