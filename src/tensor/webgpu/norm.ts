/** Row reductions: fused RMSNorm, the per-row NLL of log-softmax and KL divergence. One workgroup per row. */
import { fail } from '../../errors.ts';
import type { DType } from '../tensor.ts';
import { type GpuContext, grid2, type Kernel, Params, type Storage } from './context.ts';
import { arrayType, FLAT_WG, loadFn, stridedLoop } from './wgsl.ts';

const WG = 256;

/** WGSL: the workgroup's values in `arr` (red by default) combined pairwise by `op` into arr[0]. */
const TREE = (op: string, arr = 'red') => `
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { ${arr}[lid] = ${op}; }
    workgroupBarrier();
  }`;

/** Threads of a workgroup that computes one row's RMS: every kernel that fuses it sums in this order. */
export const RMS_WG = WG;
/** Values a thread of a row kernel loads before using them (one row is latency-bound, not bandwidth-bound). */
export const ROW_STEPS = 4;

/**
 * WGSL, in uniform control flow of a RMS_WG-thread workgroup (thread `lid`): `let inv` = 1 / rms of
 * the d values ldX(base + i) (+ eps), summed through the workgroup array `arr` (array<f32, RMS_WG>).
 */
export function rmsInverse(arr: string, base: string, d: string): string {
  return `var ss = 0.0;${stridedLoop({
    count: d,
    lane: 'lid',
    lanes: WG,
    steps: ROW_STEPS,
    load: (j, i) => `let v${j} = ldX(${base} + ${i});`,
    use: (j) => `ss += v${j} * v${j};`,
  })}
  ${arr}[lid] = ss;
  workgroupBarrier();${TREE(`${arr}[lid] + ${arr}[lid + s]`, arr)}
  let inv = 1.0 / sqrt(${arr}[0] / f32(${d}) + p.eps);`;
}

/** WGSL of the normed value: the norm weight `w` times (the value `x` times inv), rmsnorm's expression. */
export const normedValue = (w: string, x: string, inv: string) => `${w} * (${x} * ${inv})`;

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
  ${rmsInverse('red', 'base', 'p.d')}
  let ob = p.oOff + row * p.d;
${stridedLoop({
  count: 'p.d',
  lane: 'lid',
  lanes: WG,
  steps: ROW_STEPS,
  load: (j, i) => `let x${j} = ldX(base + ${i});
      let w${j} = ldW(p.wOff + ${i});`,
  use: (j) => `O[ob + i${j}] = ${normedValue(`w${j}`, `x${j}`, 'inv')};`,
})}
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
  const tb = ctx.hostData(new Uint8Array(targets.buffer, targets.byteOffset, targets.byteLength));
  const k = nllKernel(logits.dtype);
  for (const seg of ctx.segments(
    logits.rows,
    [logits, out].map((s) => ({ s, row0: 0 })),
  )) {
    const [wx, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(seg.n).u(V).u(wx.off).u(seg.r0).u(wo.off),
      [wx.binding, tb, wo.binding],
      grid2(seg.n),
    );
  }
  return out;
}

/**
 * KL(softmax(p) || softmax(q)) per row and whether the two argmaxes agree. With t = exp(p - max p),
 * S = sum t, d = (q - max q) - (p - max p), a = sum t d / S and u = sum t (expm1(d) - d) / S:
 * KL = log1p(a + u) - a. For small divergences (good quantization) a dominates KL by orders of
 * magnitude, so the kernel accumulates u itself (by series for |d| < 0.5) and expands log1p(a + u) - a
 * = u - c^2/2 + c^3/3 - ... (c = a + u) instead of subtracting two nearly equal f32 numbers.
 */
function klKernel(dp: DType, dq: DType): Kernel {
  return {
    key: `kl:${dp}:${dq}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { rows: u32, v: u32, pOff: u32, qOff: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dp)}>;
@group(0) @binding(2) var<storage, read> Y: array<${arrayType(dq)}>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
var<workgroup> rv: array<f32, ${WG}>;
var<workgroup> ri: array<u32, ${WG}>;
var<workgroup> r2: array<f32, ${WG}>;
var<workgroup> ri2: array<u32, ${WG}>;
var<workgroup> r3: array<f32, ${WG}>;
${loadFn('ldX', 'X', dp)}
${loadFn('ldY', 'Y', dq)}
${FLAT_WG}
/** expm1(d) - d for |d| < 0.5 (relative error below 1e-7). */
fn expm1MinusX(d: f32) -> f32 {
  let tail = 1.0 / 720.0 + d * (1.0 / 5040.0 + d * (1.0 / 40320.0 + d / 362880.0));
  return d * d * (0.5 + d * (1.0 / 6.0 + d * (1.0 / 24.0 + d * (1.0 / 120.0 + d * tail))));
}
/** log1p(a + u) - a = u + (log1p(c) - c), c = a + u; the bracket by series for |c| < 0.1. */
fn klFrom(a: f32, u: f32) -> f32 {
  let c = a + u;
  if (abs(c) < 0.1) {
    let tail = 1.0 / 5.0 + c * (-1.0 / 6.0 + c * (1.0 / 7.0 + c * (-1.0 / 8.0 + c / 9.0)));
    return u + c * c * (-0.5 + c * (1.0 / 3.0 + c * (-0.25 + c * tail)));
  }
  return (log(1.0 + c) - c) + u;
}
fn better(v: f32, i: u32, than: f32, thanI: u32) -> bool {
  return v > than || (v == than && i < thanI);
}
/** (rv, ri)[0] and (r2, ri2)[0] <- the workgroup's largest (value, index) pairs, lowest index on ties. */
fn argmaxTree(lid: u32) {
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      if (better(rv[lid + s], ri[lid + s], rv[lid], ri[lid])) { rv[lid] = rv[lid + s]; ri[lid] = ri[lid + s]; }
      if (better(r2[lid + s], ri2[lid + s], r2[lid], ri2[lid])) { r2[lid] = r2[lid + s]; ri2[lid] = ri2[lid + s]; }
    }
    workgroupBarrier();
  }
}
/** rv, r2, r3 [0] <- their workgroup sums. */
fn sumTree(lid: u32) {
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { rv[lid] += rv[lid + s]; r2[lid] += r2[lid + s]; r3[lid] += r3[lid + s]; }
    workgroupBarrier();
  }
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flatWg(wid, nwg);
  if (row >= p.rows) { return; }
  let bp = p.pOff + row * p.v;
  let bq = p.qOff + row * p.v;
  var mx = -3.0e38;
  var ix = 0xffffffffu;
  var my = -3.0e38;
  var iy = 0xffffffffu;
  for (var i = lid; i < p.v; i += ${WG}u) {
    let x = ldX(bp + i);
    let y = ldY(bq + i);
    if (x > mx) { mx = x; ix = i; }
    if (y > my) { my = y; iy = i; }
  }
  rv[lid] = mx; ri[lid] = ix; r2[lid] = my; ri2[lid] = iy;
  workgroupBarrier();
  argmaxTree(lid);
  let mp = rv[0];
  let mq = r2[0];
  let sameTop = ri[0] == ri2[0];
  workgroupBarrier();
  var sumT = 0.0;
  var sumTD = 0.0;
  var sumTU = 0.0;
  for (var i = lid; i < p.v; i += ${WG}u) {
    let a = ldX(bp + i) - mp;
    let b = ldY(bq + i) - mq;
    let t = exp(a);
    let d = b - a;
    sumT += t;
    sumTD += t * d;
    if (abs(d) < 0.5) { sumTU += t * expm1MinusX(d); } else { sumTU += (exp(b) - t) - t * d; }
  }
  rv[lid] = sumT; r2[lid] = sumTD; r3[lid] = sumTU;
  workgroupBarrier();
  sumTree(lid);
  if (lid == 0u) {
    let kl = klFrom(r2[0] / rv[0], r3[0] / rv[0]);
    O[p.oOff + 2u * row] = max(kl, 0.0);
    O[p.oOff + 2u * row + 1u] = select(0.0, 1.0, sameTop);
  }
}`,
  };
}

/** [rows, 2]: KL(softmax(p) || softmax(q)) per row in nats, and 1 where argmax p = argmax q. */
export function klDiv(ctx: GpuContext, pLogits: Storage, qLogits: Storage): Storage {
  const out = ctx.allocStorage(pLogits.rows, 2, 'f32');
  if (pLogits.rows === 0) return out;
  const k = klKernel(pLogits.dtype, qLogits.dtype);
  for (const seg of ctx.segments(
    pLogits.rows,
    [pLogits, qLogits, out].map((s) => ({ s, row0: 0 })),
  )) {
    const [wp, wq, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(seg.n).u(pLogits.cols).u(wp.off).u(wq.off).u(wo.off),
      [wp.binding, wq.binding, wo.binding],
      grid2(seg.n),
    );
  }
  return out;
}
