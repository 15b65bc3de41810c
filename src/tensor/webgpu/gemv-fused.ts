/**
 * Fused matrix-vector kernels for decoding (a few rows of x): several weights read in one dispatch,
 * each output equal bit for bit to the separate kernels' (the same per-lane loops and reduction as
 * matmul.ts's GEMV, the same epilogue expressions). A decode step records ~15 dispatches a layer
 * separately and the host's cost per dispatch sets the pace of small and quantized models.
 *  - gateUp: silu(x gate^T) * (x up^T), the MLP's input to down_proj;
 *  - qkvRope: q, k, v projections with RoPE applied to q and k in the store (a workgroup computes
 *    column pairs (i, i + head_dim / 2) of one head, which is what the rotation mixes).
 */
import type { DType, RopeTable } from '../tensor.ts';
import { type GpuContext, grid2, type Kernel, Params, type Storage } from './context.ts';
import { ropeTableBuffer, SILU_MUL } from './elementwise.ts';
import {
  GEMV_COLS,
  GEMV_LANES,
  GEMV_MAX_M,
  type GemvWeight,
  gemvDenseLoop,
  gemvMain,
  gemvPackedLoop,
  levelTable,
  type PackedLayout,
  type PackedStorages,
  weightKey,
} from './matmul.ts';
import { arrayType, loadFn } from './wgsl.ts';

/** The loop of one weight of a fused kernel, in its own scope. */
function weightLoop(pk: PackedLayout | undefined, M: number, wt: GemvWeight): string {
  return `{${pk ? gemvPackedLoop(pk, M, wt) : gemvDenseLoop(M, wt)}
    }`;
}

/** Binding declarations of packed scale/zero arrays, from binding `first` on. */
function scaleArrays(names: string[], first: number): string {
  return names
    .map((a, i) => `@group(0) @binding(${first + i}) var<storage, read> ${a}: array<f32>;`)
    .join('\n');
}

/** silu(x gate^T) * (x up^T) for a few rows of x in one kernel: two weights of one layout, no bias. */
function gemvGateUpKernel(dx: DType, dw: DType, M: number, pk: PackedLayout | undefined): Kernel {
  const W = 2 * M;
  const gate: GemvWeight = { ld: 'ldG', W: 'G', S: 'SG', Z: 'ZG', off: 'p.gOff', acc: 0 };
  const up: GemvWeight = { ld: 'ldU', W: 'U', S: 'SU', Z: 'ZU', off: 'p.uOff', acc: M };
  const loop = (wt: GemvWeight) => weightLoop(pk, M, wt);
  const red = (i: string) => `red[c * ${GEMV_LANES * W}u + ${i}]`;
  return {
    key: `gemv-gate-up:${dx}:${weightKey(dw, pk)}:${M}`,
    bindings: [
      'uniform',
      'read',
      'read',
      'read',
      'write',
      ...(pk ? (['read', 'read', 'read', 'read'] as const) : []),
    ],
    code: () => `
struct P { M: u32, N: u32, K: u32, xOff: u32, gOff: u32, uOff: u32, yOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read> G: array<${arrayType(dw)}>;
@group(0) @binding(3) var<storage, read> U: array<${arrayType(dw)}>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
${pk ? scaleArrays(['SG', 'ZG', 'SU', 'ZU'], 5) : ''}
${pk ? levelTable(pk) : ''}
${loadFn('ldX', 'X', dx)}
${pk ? '' : `${loadFn('ldG', 'G', dw)}\n${loadFn('ldU', 'U', dw)}`}
${gemvMain(
  'f32',
  M,
  loop(gate) + loop(up),
  `let g = ${red('lane')};
    let u = ${red(`${M}u + lane`)};
    Y[p.yOff + lane * p.N + n] = ${SILU_MUL('g', 'u')};`,
  W,
)}`,
  };
}

/** One weight of a fused GEMV: plain (f32 / 16-bit) or packed codes. */
export interface GemvOperand {
  w: Storage;
  packed?: PackedStorages;
}

/** Weights one fused kernel can read alike: one dtype, or packed with one layout and no g_idx. */
function sameLayout(a: GemvOperand, b: GemvOperand): boolean {
  if (a.w.dtype !== b.w.dtype || !a.packed !== !b.packed) return false;
  if (!a.packed || !b.packed) return true;
  const [p, q] = [a.packed, b.packed];
  return (
    p.codeBits === q.codeBits &&
    p.group === q.group &&
    !p.groupOf &&
    !q.groupOf &&
    (p.levels === q.levels || (p.levels ?? []).join() === (q.levels ?? []).join())
  );
}

const rowsOf = (o: GemvOperand) => (o.packed ? o.packed.rows : o.w.rows);

/**
 * silu(x gate^T) * (x up^T) in one dispatch for a few rows of x (decoding), equal to linear, linear,
 * siluMul; undefined where it does not apply (more rows, different layouts, a g_idx, a weight larger
 * than one binding), and the caller runs the three ops.
 */
export function gateUp(ctx: GpuContext, x: Storage, gate: GemvOperand, up: GemvOperand): Storage | undefined {
  const M = x.rows;
  if (M === 0 || M > GEMV_MAX_M || !sameLayout(gate, up) || rowsOf(gate) !== rowsOf(up)) return undefined;
  const [gw, uw] = [gate.w, up.w].map((s) => ctx.wholeIfFits(s));
  const xw = ctx.wholeIfFits(x);
  if (!gw || !uw || !xw) return undefined;
  const N = rowsOf(gate);
  const y = ctx.allocStorage(M, N, 'f32');
  const yw = ctx.whole(y, 'gateUp');
  const extra = [gate.packed, up.packed].flatMap((pk) =>
    pk ? [pk.scales, pk.zeros].map((s) => ctx.whole(s, 'gateUp').binding) : [],
  );
  ctx.dispatch(
    gemvGateUpKernel(x.dtype, gate.w.dtype, M, gate.packed),
    new Params().u(M).u(N).u(x.cols).u(xw.off).u(gw.off).u(uw.off).u(yw.off),
    [xw.binding, gw.binding, uw.binding, yw.binding, ...extra],
    grid2(Math.ceil(N / GEMV_COLS)),
  );
  return y;
}

/**
 * q, k, v = x wq^T, x wk^T, x wv^T with q and k rotated (RoPE at positions first, first + 1, ...).
 * Thread slot c of a workgroup sums column pair (c % 4) of the workgroup's four, its first column
 * (c < 4) or the one head_dim / 2 after it; the store rotates each pair as the rope kernel does.
 */
function gemvQkvRopeKernel(dx: DType, dw: DType, M: number, pk: PackedLayout | undefined): Kernel {
  return {
    key: `gemv-qkv-rope:${dx}:${weightKey(dw, pk)}:${M}`,
    bindings: [
      'uniform',
      'read',
      'read',
      'read',
      'read',
      'read',
      'write',
      'write',
      'write',
      ...(pk ? (['read', 'read', 'read', 'read', 'read', 'read'] as const) : []),
    ],
    code: () => qkvRopeCode(dx, dw, M, pk),
  };
}

function qkvRopeCode(dx: DType, dw: DType, M: number, pk: PackedLayout | undefined): string {
  const L = GEMV_LANES;
  const names = ['Q', 'K', 'V'];
  const weights: GemvWeight[] = names.map((t) => ({
    ld: `ldW${t}`,
    W: `W${t}`,
    S: `S${t}`,
    Z: `Z${t}`,
    off: `p.w${t}Off`,
    acc: 0,
  }));
  const weightDecls = names
    .map((t, i) => `@group(0) @binding(${2 + i}) var<storage, read> W${t}: array<${arrayType(dw)}>;`)
    .join('\n');
  const outDecls = names
    .map((t, i) => `@group(0) @binding(${6 + i}) var<storage, read_write> Y${t}: array<f32>;`)
    .join('\n');
  const loads = pk ? '' : names.map((t) => loadFn(`ldW${t}`, `W${t}`, dw)).join('\n');
  const red = (slot: string) => `red[(${slot}) * ${L * M}u + lane]`;
  const column = `let c2 = c % ${GEMV_COLS / 2}u;
  let side = c / ${GEMV_COLS / 2}u;
  // which projection (3: none) and which of its column pairs
  var t = 3u;
  var pair = flatWg(wid, nwg) * ${GEMV_COLS / 2}u + c2;
  if (pair < p.pq) { t = 0u; } else {
    pair -= p.pq;
    if (pair < p.pk) { t = 1u; } else { pair -= p.pk; if (pair < p.pv) { t = 2u; } }
  }
  let i = pair % p.half;
  let n = (pair / p.half) * 2u * p.half + i + side * p.half;`;
  const store = `if (side == 0u) {
      let a = ${red('c')};
      let b = ${red(`c + ${GEMV_COLS / 2}u`)};
      if (t == 2u) {
        let at = p.yVOff + lane * 2u * p.pv + n;
        YV[at] = a;
        YV[at + p.half] = b;
      } else {
        let cs = CS[(p.first + lane) * p.half + i];
        let ra = a * cs.x - b * cs.y;
        let rb = b * cs.x + a * cs.y;
        if (t == 0u) {
          let at = p.yQOff + lane * 2u * p.pq + n;
          YQ[at] = ra;
          YQ[at + p.half] = rb;
        } else {
          let at = p.yKOff + lane * 2u * p.pk + n;
          YK[at] = ra;
          YK[at + p.half] = rb;
        }
      }
    }`;
  return `
struct P { K: u32, xOff: u32, wQOff: u32, wKOff: u32, wVOff: u32, pq: u32, pk: u32, pv: u32, half: u32,
  first: u32, yQOff: u32, yKOff: u32, yVOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
${weightDecls}
@group(0) @binding(5) var<storage, read> CS: array<vec2<f32>>;
${outDecls}
${pk ? scaleArrays(['SQ', 'ZQ', 'SK', 'ZK', 'SV', 'ZV'], 9) : ''}
${pk ? levelTable(pk) : ''}
${loadFn('ldX', 'X', dx)}
${loads}
${gemvMain(
  'f32',
  M,
  `
    if (t == 0u) ${weightLoop(pk, M, weights[0])} else if (t == 1u) ${weightLoop(pk, M, weights[1])} else ${weightLoop(pk, M, weights[2])}`,
  store,
  M,
  { decl: column, active: 't < 3u' },
)}`;
}

/**
 * q, k, v projections of a few rows of x at consecutive positions first.. with RoPE on q and k, in
 * one dispatch: equal to linear x3 and rope x2. Undefined where it does not apply (more rows,
 * weights of different layouts or with a g_idx, a tensor larger than one binding, fewer storage
 * bindings than the kernel needs).
 */
export function qkvRope(
  ctx: GpuContext,
  x: Storage,
  weights: readonly [GemvOperand, GemvOperand, GemvOperand],
  first: number,
  headDim: number,
  table: RopeTable,
): [Storage, Storage, Storage] | undefined {
  const M = x.rows;
  const [q, k, v] = weights;
  const half = headDim / 2;
  const needs = q.packed ? 14 : 8;
  if (M === 0 || M > GEMV_MAX_M || ctx.maxStorageBuffers < needs) return undefined;
  if (!sameLayout(q, k) || !sameLayout(q, v) || table.invFreq.length !== half) return undefined;
  const rows = weights.map(rowsOf);
  if (rows.some((n) => n % headDim !== 0)) return undefined;
  const windows = [x, q.w, k.w, v.w].map((s) => ctx.wholeIfFits(s));
  const cs = ropeTableBuffer(ctx, table, first + M - 1);
  if (windows.some((w) => !w) || cs.buffer.size > ctx.maxBindingBytes) return undefined;
  const [xw, qw, kw, vw] = windows as NonNullable<(typeof windows)[number]>[];
  const outs = rows.map((n) => ctx.allocStorage(M, n, 'f32')) as [Storage, Storage, Storage];
  const ow = outs.map((o) => ctx.whole(o, 'qkvRope'));
  const scales = weights.flatMap((o) =>
    o.packed ? [o.packed.scales, o.packed.zeros].map((s) => ctx.whole(s, 'qkvRope').binding) : [],
  );
  const pairs = rows.map((n) => n / 2);
  const params = new Params()
    .u(x.cols)
    .u(xw.off)
    .u(qw.off)
    .u(kw.off)
    .u(vw.off)
    .u(pairs[0])
    .u(pairs[1])
    .u(pairs[2])
    .u(half)
    .u(first)
    .u(ow[0].off)
    .u(ow[1].off)
    .u(ow[2].off);
  ctx.dispatch(
    gemvQkvRopeKernel(x.dtype, q.w.dtype, M, q.packed),
    params,
    [
      xw.binding,
      qw.binding,
      kw.binding,
      vw.binding,
      { buffer: cs.buffer, offset: 0, size: cs.buffer.size },
      ...ow.map((w) => w.binding),
      ...scales,
    ],
    grid2(Math.ceil((pairs[0] + pairs[1] + pairs[2]) / (GEMV_COLS / 2))),
  );
  return outs;
}
