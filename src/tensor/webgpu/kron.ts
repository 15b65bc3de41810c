/**
 * Kronecker-factored transform of rows (FlatQuant's online transform): each row x [n1 * n2], read as
 * X [n1, n2], becomes A^T X B, n (n1 + n2) multiply-adds a row instead of the n^2 of the full (A ⊗ B).
 *
 * One dispatch, a workgroup per (row, block of columns c): column c of T = X B needs only column c of
 * B, and column c of A^T T only column c of T, so a workgroup computes its columns of T into workgroup
 * memory and then its columns of the output; T never goes to device memory. Sums run in the order the
 * CPU's do (over j, then over i), one accumulator each. The factor sizes are compile-time constants,
 * so the compiler can unroll the dot products (a decode row is latency-bound: 32-128 workgroups).
 */
import { fail } from '../../errors.ts';
import type { DType } from '../tensor.ts';
import { type GpuContext, grid2, type Kernel, Params, type Storage } from './context.ts';
import { arrayType, FLAT_WG, loadFn } from './wgsl.ts';

/** f32 values of T a workgroup may hold (16 KiB, WebGPU's guaranteed workgroup storage). */
const T_MAX = 4096;

interface KronShape {
  /** threads of a workgroup */
  wg: number;
  /** columns of T (and of the output) a workgroup takes */
  cols: number;
  /** workgroups a row: blocks of `cols` columns covering n2 */
  blocks: number;
}

/** Threads of a workgroup (a power of two covering n1, 64-256), the columns it takes, the blocks a row. */
function kronShape(n1: number, n2: number): KronShape {
  const wg = Math.min(256, Math.max(64, 2 ** Math.ceil(Math.log2(n1))));
  const cols = Math.max(1, Math.floor(wg / n1));
  return { wg, cols, blocks: Math.ceil(n2 / cols) };
}

function kronKernel(
  dx: DType,
  dl: DType,
  dr: DType,
  n1: number,
  n2: number,
  { wg, cols, blocks }: KronShape,
): Kernel {
  const n = n1 * n2;
  const items = n1 * cols;
  return {
    key: `kron:${dx}:${dl}:${dr}:${n1}x${n2}`,
    bindings: ['uniform', 'read', 'read', 'read', 'write'],
    code: () => `
struct P { rows: u32, xOff: u32, lOff: u32, rOff: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read> L: array<${arrayType(dl)}>;
@group(0) @binding(3) var<storage, read> R: array<${arrayType(dr)}>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
var<workgroup> T: array<f32, ${items}>;
${loadFn('ldX', 'X', dx)}
${loadFn('ldL', 'L', dl)}
${loadFn('ldR', 'R', dr)}
${FLAT_WG}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flatWg(wid, nwg);
  let row = g / ${blocks}u;
  if (row >= p.rows) { return; }
  let c0 = (g % ${blocks}u) * ${cols}u;
  let xRow = p.xOff + row * ${n}u;
  // T[i, c] = sum_j X[i, j] B[j, c]
  for (var e = lid; e < ${items}u; e += ${wg}u) {
    let i = e / ${cols}u;
    let c = c0 + e % ${cols}u;
    var acc = 0.0;
    if (c < ${n2}u) {
      for (var j = 0u; j < ${n2}u; j++) { acc += ldX(xRow + i * ${n2}u + j) * ldR(p.rOff + j * ${n2}u + c); }
    }
    T[e] = acc;
  }
  workgroupBarrier();
  // O[k, c] = sum_i A[i, k] T[i, c]
  for (var e = lid; e < ${items}u; e += ${wg}u) {
    let k = e / ${cols}u;
    let cc = e % ${cols}u;
    if (c0 + cc < ${n2}u) {
      var acc = 0.0;
      for (var i = 0u; i < ${n1}u; i++) { acc += ldL(p.lOff + i * ${n1}u + k) * T[i * ${cols}u + cc]; }
      O[p.oOff + row * ${n}u + k * ${n2}u + c0 + cc] = acc;
    }
  }
}`,
  };
}

export function kron(ctx: GpuContext, x: Storage, left: Storage, right: Storage): Storage {
  const n1 = left.rows;
  const n2 = right.rows;
  const shape = kronShape(n1, n2);
  if (n1 * shape.cols > T_MAX)
    fail(`kron: a left factor of ${n1} rows is more than a WebGPU workgroup holds (at most ${T_MAX})`);
  const out = ctx.allocStorage(x.rows, x.cols, 'f32');
  const k = kronKernel(x.dtype, left.dtype, right.dtype, n1, n2, shape);
  const [lw, rw] = [ctx.whole(left, 'kron'), ctx.whole(right, 'kron')];
  for (const seg of ctx.segments(
    x.rows,
    [x, out].map((t) => ({ s: t, row0: 0 })),
  )) {
    const [wx, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(seg.n).u(wx.off).u(lw.off).u(rw.off).u(wo.off),
      [wx.binding, lw.binding, rw.binding, wo.binding],
      grid2(seg.n * shape.blocks),
    );
  }
  return out;
}
