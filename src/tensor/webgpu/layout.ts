/** Row slices, row concatenation and 2-D transpose (results are f32, as on the CPU backend). */
import { fail } from '../../errors.ts';
import type { DType } from '../tensor.ts';
import { type GpuContext, type Kernel, Params, type Storage } from './context.ts';
import { copyRows } from './elementwise.ts';
import { arrayType, loadFn } from './wgsl.ts';

export function sliceRows(ctx: GpuContext, x: Storage, start: number, end: number): Storage {
  if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start <= end && end <= x.rows))
    fail(`sliceRows: [${start}, ${end}) is not a row range of a tensor with ${x.rows} rows`);
  const out = ctx.allocStorage(end - start, x.cols, 'f32');
  copyRows(ctx, x, start, out, 0, end - start);
  return out;
}

export function concatRows(ctx: GpuContext, parts: readonly Storage[]): Storage {
  if (parts.length === 0) fail('concatRows: no tensors to concatenate');
  const cols = parts[0].cols;
  for (const p of parts) if (p.cols !== cols) fail(`concatRows: rows of ${p.cols} and ${cols} values`);
  const rows = parts.reduce((n, p) => n + p.rows, 0);
  const out = ctx.allocStorage(rows, cols, 'f32');
  let at = 0;
  for (const p of parts) {
    copyRows(ctx, p, 0, out, at, p.rows);
    at += p.rows;
  }
  return out;
}

const T = 16;

function transposeKernel(dx: DType): Kernel {
  return {
    key: `transpose:${dx}`,
    bindings: ['uniform', 'read', 'write'],
    code: () => `
struct P { rows: u32, cols: u32, xOff: u32, oOff: u32, c0: u32, nc: u32, r0: u32, ldo: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
var<workgroup> tile: array<f32, ${T * (T + 1)}>;
${loadFn('ldX', 'X', dx)}
@compute @workgroup_size(${T}, ${T})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  // x rows [0, rows) of this window, output rows (x columns) [c0, c0 + nc)
  let r = wid.y * ${T}u + l.y;
  let c = wid.x * ${T}u + l.x;
  if (r < p.rows && c < p.nc) { tile[l.y * ${T + 1}u + l.x] = ldX(p.xOff + r * p.cols + p.c0 + c); }
  workgroupBarrier();
  let orow = wid.x * ${T}u + l.y;
  let ocol = wid.y * ${T}u + l.x;
  if (orow < p.nc && ocol < p.rows) { O[p.oOff + orow * p.ldo + p.r0 + ocol] = tile[l.x * ${T + 1}u + l.y]; }
}`,
  };
}

export function transpose(ctx: GpuContext, x: Storage): Storage {
  const M = x.rows;
  const N = x.cols;
  const out = ctx.allocStorage(N, M, 'f32');
  if (M === 0 || N === 0) return out;
  const k = transposeKernel(x.dtype);
  const oSegs = ctx.segments(N, [{ s: out, row0: 0 }], 1, 'transpose');
  for (const xs of ctx.segments(M, [{ s: x, row0: 0 }], 1, 'transpose')) {
    for (const os of oSegs) {
      const params = new Params().u(xs.n).u(N).u(xs.w[0].off).u(os.w[0].off).u(os.r0).u(os.n).u(xs.r0).u(M);
      ctx.dispatch(k, params, [xs.w[0].binding, os.w[0].binding], [Math.ceil(os.n / T), Math.ceil(xs.n / T)]);
    }
  }
  return out;
}
