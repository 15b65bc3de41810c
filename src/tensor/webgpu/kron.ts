/**
 * Kronecker-factored transform of rows (FlatQuant's online transform): each row x [n1 * n2], read as
 * X [n1, n2], becomes A^T X B. Two passes, each thread one output: t = X B, then A^T t; per row
 * n (n1 + n2) multiply-adds instead of the n^2 of the full (A ⊗ B).
 */
import type { DType } from '../tensor.ts';
import { type GpuContext, grid2, type Kernel, Params, type Storage, type Window } from './context.ts';
import { arrayType, FLAT_WG, loadFn } from './wgsl.ts';

const WG = 256;

/** side 'right': O[r, i, c] = sum_j X[r, i, j] F[j, c]; side 'left': O[r, a, c] = sum_i F[i, a] X[r, i, c] */
function kronKernel(side: 'left' | 'right', dx: DType, df: DType): Kernel {
  const sum =
    side === 'right'
      ? 'for (var j = 0u; j < p.n2; j++) { acc += ldX(row + i * p.n2 + j) * ldF(p.fOff + j * p.n2 + c); }'
      : 'for (var k = 0u; k < p.n1; k++) { acc += ldF(p.fOff + k * p.n1 + i) * ldX(row + k * p.n2 + c); }';
  return {
    key: `kron:${side}:${dx}:${df}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { n: u32, n1: u32, n2: u32, xOff: u32, fOff: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read> F: array<${arrayType(df)}>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
${loadFn('ldX', 'X', dx)}
${loadFn('ldF', 'F', df)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flatWg(wid, nwg) * ${WG}u + lid;
  if (e >= p.n) { return; }
  let width = p.n1 * p.n2;
  let row = p.xOff + (e / width) * width;
  let i = (e % width) / p.n2;
  let c = e % p.n2;
  var acc = 0.0;
  ${sum}
  O[p.oOff + e] = acc;
}`,
  };
}

function pass(
  ctx: GpuContext,
  side: 'left' | 'right',
  x: Storage,
  f: Storage,
  fw: Window,
  n1: number,
  n2: number,
): Storage {
  const out = ctx.allocStorage(x.rows, x.cols, 'f32');
  const k = kronKernel(side, x.dtype, f.dtype);
  for (const seg of ctx.segments(
    x.rows,
    [x, out].map((t) => ({ s: t, row0: 0 })),
  )) {
    const n = seg.n * x.cols;
    const [wx, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(n).u(n1).u(n2).u(wx.off).u(fw.off).u(wo.off),
      [wx.binding, fw.binding, wo.binding],
      grid2(Math.ceil(n / WG)),
    );
  }
  return out;
}

export function kron(ctx: GpuContext, x: Storage, left: Storage, right: Storage): Storage {
  const n1 = left.rows;
  const n2 = right.rows;
  const t = pass(ctx, 'right', x, right, ctx.whole(right, 'kron'), n1, n2);
  const out = pass(ctx, 'left', t, left, ctx.whole(left, 'kron'), n1, n2);
  ctx.releaseStorage(t);
  return out;
}
