/**
 * Fused matrix-vector kernels for decoding (a few rows of x): several weights read in one dispatch,
 * each output equal bit for bit to the separate kernels' (the same per-lane loops and reduction as
 * matmul.ts's GEMV, the same epilogue expressions). A decode step records ~15 dispatches a layer
 * separately and the host's cost per dispatch sets the pace of small and quantized models.
 *  - gateUp: silu(x gate^T) * (x up^T), the MLP's input to down_proj;
 *  - qkvRope: q, k, v projections with RoPE applied to q and k in the store (a workgroup computes
 *    column pairs (i, i + head_dim / 2) of one head, which is what the rotation mixes).
 * Both read f32/16-bit weights, packed codes, or (W8A8) int8 codes of x and of the weights: dot4 sums
 * in i32, scaled in the store as scaleInt32 does, f32(sum) * rowScale[m] * colScale[n]. Float
 * readings may take x as an RMSNorm's input: every workgroup first computes each row's 1 / rms the
 * way the rmsnorm kernel does (same 256 threads, same order) and normalizes x as it reads it.
 */
import { fail } from '../../errors.ts';
import type { DType, RopeTable } from '../tensor.ts';
import {
  type GemvTuning,
  type GpuContext,
  grid2,
  type Kernel,
  kernelOnce,
  Params,
  type Storage,
  type Window,
} from './context.ts';
import { ropeTableBuffer, SILU_MUL } from './elementwise.ts';
import { codeArray, dot4GemvLoop, int8Chunks, scaledSum } from './int8.ts';
import {
  GEMV_COLS,
  GEMV_LANES,
  GEMV_MAX_M,
  type GemvWeight,
  gemvChunks,
  gemvDenseLoop,
  gemvKey,
  gemvMain,
  gemvPackedLoop,
  levelTable,
  type PackedLayout,
  type PackedStorages,
  packedArrays,
  plainX,
  storageDecls,
  weightKey,
  type XAt,
  type XRead,
} from './matmul.ts';
import { normedValue, RMS_WG, rmsInverse } from './norm.ts';
import { arrayType, chunkArrayType, chunkLoadFns, loadFn, range } from './wgsl.ts';

/** How a fused kernel reads x and its weights: x's and the weights' dtypes, and packed weights' layout. */
interface Reading {
  dx: DType;
  dw: DType;
  pk?: PackedLayout;
  /** x is rmsnorm's input: the kernel normalizes its rows with a norm weight of this dtype */
  norm?: DType;
  /** x and dense weights (int8: codes of both) read four values (words) a load; see gemvChunks */
  chunks: boolean;
  tuning: GemvTuning;
}

/** Integer codes of x and the weights (i8), dot4 sums scaled in the store. */
const isInt8 = (r: Reading) => r.dx === 'i8';

function readingKey(r: Reading): string {
  const reading = isInt8(r) ? 'i8' : `${r.dx}:${weightKey(r.dw, r.pk)}${r.norm ? `:norm-${r.norm}` : ''}`;
  return `${reading}:${gemvKey(r.tuning, r.chunks)}`;
}

/**
 * x[m, k] as the loops read it: rmsnorm's value where the kernel normalizes x. The value goes
 * through its bits and an xor with a uniform zero, which no compiler can see through: shader
 * compilers may reassociate float multiplies (lavapipe's did: w * (nw * (x * inv)) came out 1 ulp
 * off), and the product must use the value rmsnorm would have stored.
 */
function xRead(r: Reading): XRead {
  if (!r.norm) return plainX(r.chunks);
  const at: XAt = (m, k) =>
    `bitcast<f32>(bitcast<u32>(${normedValue(`ldN(p.nOff + ${k})`, `ldX(p.xOff + ${m} * p.K + ${k})`, `ninv[${m}]`)}) ^ p.zero)`;
  if (!r.chunks) return { at };
  return {
    chunk: (m, q) =>
      `vec4<f32>(${range(4)
        .map((c) => at(m, `4u * (${q}) + ${c}u`))
        .join(', ')})`,
  };
}

/** x's binding and its load functions (ldX, and ldX4 where chunked). */
function xDecls(r: Reading): string {
  const type = isInt8(r) ? codeArray(r.chunks) : r.chunks ? chunkArrayType(r.dx) : arrayType(r.dx);
  const fns = isInt8(r) ? '' : r.chunks ? chunkLoadFns('ldX', 'X', r.dx) : loadFn('ldX', 'X', r.dx);
  return `@group(0) @binding(1) var<storage, read> X: array<${type}>;\n${fns}`;
}

/** The array type a weight is bound as. */
function weightArray(r: Reading): string {
  if (isInt8(r)) return codeArray(r.chunks);
  return r.chunks && !r.pk ? chunkArrayType(r.dw)! : arrayType(r.dw);
}

/** Declarations for normalizing x: the norm weight at binding `binding`, the RMS scratch arrays. */
function normDecls(r: Reading, M: number, binding: number): string {
  if (!r.norm) return '';
  if (RMS_WG !== GEMV_COLS * GEMV_LANES)
    fail('gemv-fused: the RMS workgroup differs from the GEMV workgroup');
  return `@group(0) @binding(${binding}) var<storage, read> NW: array<${arrayType(r.norm)}>;
${loadFn('ldN', 'NW', r.norm)}
var<workgroup> nred: array<f32, ${RMS_WG}>;
var<workgroup> ninv: array<f32, ${M}>;`;
}

/** Every thread's first step where the kernel normalizes x: 1 / rms of each row into ninv. */
function normPrologue(r: Reading, M: number): string {
  if (!r.norm) return '';
  return `
  for (var m = 0u; m < ${M}u; m++) {
    ${rmsInverse('nred', 'p.xOff + m * p.K', 'p.K')}
    if (lid == 0u) { ninv[m] = inv; }
    workgroupBarrier();
  }`;
}

/** The loop of one weight of a fused kernel, in its own scope. */
function weightLoop(r: Reading, M: number, wt: GemvWeight): string {
  const body = isInt8(r)
    ? dot4GemvLoop(M, r.tuning, r.chunks, {
        A: 'X',
        B: wt.W,
        K: 'p.K',
        aOff: 'p.xOff',
        bOff: wt.off,
        acc: wt.acc,
      })
    : r.pk
      ? gemvPackedLoop(r.pk, M, r.tuning, wt, xRead(r))
      : gemvDenseLoop(M, r.tuning, wt, xRead(r));
  return `{${body}
    }`;
}

/** Row `lane`'s output value of weight `wt` at column `col` from its reduced sum. */
function outValue(r: Reading, sum: string, wt: GemvWeight, col: string): string {
  return isInt8(r) ? scaledSum(sum, 'RS[lane]', `${wt.S}[${col}]`) : sum;
}

/** Declarations after the fixed bindings, from binding `first` on: scale arrays and functions. */
function readingDecls(r: Reading, wts: GemvWeight[], first: number): string {
  if (isInt8(r))
    return storageDecls(
      ['RS', ...wts.map((w) => w.S)].map((a) => [a, 'f32']),
      first,
    );
  const pk = r.pk;
  if (pk)
    return `${storageDecls(
      wts.flatMap((w) => packedArrays(pk, w)),
      first,
    )}\n${levelTable(pk)}`;
  return wts.map((w) => (r.chunks ? chunkLoadFns : loadFn)(w.ld, w.W, r.dw)).join('\n');
}

/** The bindings readingDecls declares: x's row scales and each weight's column scales, or packed scales/zeros. */
function readingBindings(ctx: GpuContext, x: FusedInput, ops: GemvOperand[], op: string): GPUBufferBinding[] {
  const bind = (s: Storage) => ctx.whole(s, op).binding;
  if (x.rowScales) return [x.rowScales, ...ops.map((o) => o.colScales!)].map(bind);
  return ops.flatMap((o) =>
    o.packed ? [o.packed.scales, o.packed.zeros].filter((s) => s !== undefined).map(bind) : [],
  );
}

function readingCount(r: Reading, weights: number): number {
  return isInt8(r) ? 1 + weights : r.pk ? packedArrays(r.pk).length * weights : 0;
}

/** The input of a fused kernel: x, or (int8) x's codes and one scale a row. */
export interface FusedInput {
  x: Storage;
  rowScales?: Storage;
  /** x is the input of an RMSNorm with this weight and eps: the kernel normalizes it (not for int8) */
  norm?: { weight: Storage; eps: number };
}

/** One weight of a fused GEMV: plain (f32 / 16-bit), packed codes, or int8 codes with column scales. */
export interface GemvOperand {
  w: Storage;
  packed?: PackedStorages;
  colScales?: Storage;
}

const bindingsOf = (n: number, kind: 'read' | 'write') => Array.from({ length: n }, () => kind);

/** silu(x gate^T) * (x up^T) for a few rows of x in one kernel: two weights of one layout, no bias. */
function gemvGateUpKernel(r: Reading, M: number): Kernel {
  const gate: GemvWeight = { ld: 'ldG', W: 'G', S: 'SG', Z: 'ZG', off: 'p.gOff', acc: 0 };
  const up: GemvWeight = { ld: 'ldU', W: 'U', S: 'SU', Z: 'ZU', off: 'p.uOff', acc: M };
  const red = (i: string) => `red[c * ${GEMV_LANES * 2 * M}u + ${i}]`;
  return kernelOnce(`gemv-gate-up:${readingKey(r)}:${M}`, (key) => ({
    key,
    bindings: [
      'uniform',
      'read',
      'read',
      'read',
      'write',
      ...bindingsOf(readingCount(r, 2) + (r.norm ? 1 : 0), 'read'),
    ],
    code: () => `
struct P { M: u32, N: u32, K: u32, xOff: u32, gOff: u32, uOff: u32, yOff: u32, nOff: u32, eps: f32, zero: u32 }
@group(0) @binding(0) var<uniform> p: P;
${xDecls(r)}
@group(0) @binding(2) var<storage, read> G: array<${weightArray(r)}>;
@group(0) @binding(3) var<storage, read> U: array<${weightArray(r)}>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
${readingDecls(r, [gate, up], 5)}
${normDecls(r, M, 5 + readingCount(r, 2))}
${gemvMain(
  isInt8(r) ? 'i32' : 'f32',
  M,
  weightLoop(r, M, gate) + weightLoop(r, M, up),
  `let g = ${outValue(r, red('lane'), gate, 'n')};
    let u = ${outValue(r, red(`${M}u + lane`), up, 'n')};
    Y[p.yOff + lane * p.N + n] = ${SILU_MUL('g', 'u')};`,
  2 * M,
  undefined,
  normPrologue(r, M),
)}`,
  }));
}

/** Weights one fused kernel can read alike: one dtype, or packed with one layout and no g_idx, or int8. */
function sameLayout(a: GemvOperand, b: GemvOperand): boolean {
  if (a.w.dtype !== b.w.dtype || !a.packed !== !b.packed || !a.colScales !== !b.colScales) return false;
  if (!a.packed || !b.packed) return true;
  const [p, q] = [a.packed, b.packed];
  return (
    p.codeBits === q.codeBits &&
    p.group === q.group &&
    p.zero === q.zero &&
    p.scalesF16 === q.scalesF16 &&
    !p.groupOf &&
    !q.groupOf &&
    (p.levels === q.levels || (p.levels ?? []).join() === (q.levels ?? []).join())
  );
}

const rowsOf = (o: GemvOperand) => (o.packed ? o.packed.rows : o.w.rows);

/**
 * x's and the weights' windows for a fused kernel (offsets and K in words for int8 codes), or
 * undefined where the operands cannot be read alike, one does not fit a binding, or the kernel (with
 * `fixed` storage bindings besides the reading's) needs more than the device allows.
 */
function fusedWindows(ctx: GpuContext, input: FusedInput, ops: GemvOperand[], fixed: number) {
  const { x } = input;
  const int8 = x.dtype === 'i8';
  if (x.rows === 0 || x.rows > GEMV_MAX_M || ops.some((o) => !sameLayout(ops[0], o))) return undefined;
  if (int8 !== !!ops[0].colScales || int8 !== !!input.rowScales || (int8 && x.cols % 4 !== 0))
    return undefined;
  const { norm } = input;
  if (norm && (int8 || norm.weight.rows * norm.weight.cols !== x.cols)) return undefined;
  const windows = [x, ...ops.map((o) => o.w)].map((s) => ctx.wholeIfFits(s));
  const nw = norm ? ctx.wholeIfFits(norm.weight) : undefined;
  if (windows.some((w) => !w || (int8 && w.off % 4 !== 0)) || (norm && !nw)) return undefined;
  const unit = int8 ? 4 : 1;
  const offs = windows.map((w) => w!.off);
  const dw = ops[0].w.dtype;
  const pk = ops[0].packed;
  const chunks = int8
    ? int8Chunks(
        ctx.gemv,
        x.cols / 4,
        offs.map((o) => o / 4),
      )
    : gemvChunks(ctx.gemv, x.dtype, x.cols, pk ? offs.slice(0, 1) : offs, pk ? undefined : dw);
  const reading: Reading = { dx: x.dtype, dw, pk, norm: norm?.weight.dtype, chunks, tuning: ctx.gemv };
  if (ctx.maxStorageBuffers < fixed + readingCount(reading, ops.length) + (norm ? 1 : 0)) return undefined;
  return {
    reading,
    K: x.cols / unit,
    offsets: windows.map((w) => w!.off / unit),
    bindings: windows.map((w) => w!.binding),
    /** the norm weight's binding (the kernel's last) */
    normBindings: nw ? [nw.binding] : [],
    /** the params' tail: the norm weight's offset and eps */
    normParams: (p: Params) =>
      p
        .u(nw?.off ?? 0)
        .f(norm?.eps ?? 0)
        .u(0),
  };
}

/**
 * silu(x gate^T) * (x up^T) in one dispatch for a few rows of x (decoding), equal to linear, linear,
 * siluMul (int8: the scaled int8 products); undefined where it does not apply (more rows, different
 * layouts, a g_idx, a weight larger than one binding), and the caller runs the separate ops.
 */
export function gateUp(
  ctx: GpuContext,
  input: FusedInput,
  gate: GemvOperand,
  up: GemvOperand,
): Storage | undefined {
  // X, G, U, Y
  const f = fusedWindows(ctx, input, [gate, up], 4);
  if (!f || rowsOf(gate) !== rowsOf(up)) return undefined;
  const M = input.x.rows;
  const N = rowsOf(gate);
  const y = ctx.allocStorage(M, N, 'f32');
  const yw = ctx.whole(y, 'gateUp');
  const [xOff, gOff, uOff] = f.offsets;
  ctx.dispatch(
    gemvGateUpKernel(f.reading, M),
    f.normParams(new Params().u(M).u(N).u(f.K).u(xOff).u(gOff).u(uOff).u(yw.off)),
    [...f.bindings, yw.binding, ...readingBindings(ctx, input, [gate, up], 'gateUp'), ...f.normBindings],
    grid2(Math.ceil(N / GEMV_COLS)),
  );
  return y;
}

/**
 * q, k, v = x wq^T, x wk^T, x wv^T with q and k rotated (RoPE at positions first, first + 1, ...).
 * Thread slot c of a workgroup sums column pair (c % 4) of the workgroup's four, its first column
 * (c < 4) or the one head_dim / 2 after it; the store rotates each pair as the rope kernel does.
 */
function gemvQkvRopeKernel(r: Reading, M: number): Kernel {
  return kernelOnce(`gemv-qkv-rope:${readingKey(r)}:${M}`, (key) => ({
    key,
    bindings: [
      'uniform',
      ...bindingsOf(5, 'read'),
      ...bindingsOf(3, 'write'),
      ...bindingsOf(readingCount(r, 3) + (r.norm ? 1 : 0), 'read'),
    ],
    code: () => qkvRopeCode(r, M),
  }));
}

function qkvRopeCode(r: Reading, M: number): string {
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
    .map((t, i) => `@group(0) @binding(${2 + i}) var<storage, read> W${t}: array<${weightArray(r)}>;`)
    .join('\n');
  const outDecls = names
    .map((t, i) => `@group(0) @binding(${6 + i}) var<storage, read_write> Y${t}: array<f32>;`)
    .join('\n');
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
  // the pair's two sums as outputs of projection w: columns n and n + half
  const pairValues = (w: GemvWeight) => `let a = ${outValue(r, red('c'), w, 'n')};
        let b = ${outValue(r, red(`c + ${GEMV_COLS / 2}u`), w, 'n + p.half')};`;
  const rotated = (w: GemvWeight, y: string, pairs: string, off: string) => `{
        ${pairValues(w)}
        let cs = CS[(p.first + lane) * p.half + i];
        let at = ${off} + lane * 2u * ${pairs} + n;
        ${y}[at] = a * cs.x - b * cs.y;
        ${y}[at + p.half] = b * cs.x + a * cs.y;
      }`;
  const store = `if (side == 0u) {
      if (t == 2u) {
        ${pairValues(weights[2])}
        let at = p.yVOff + lane * 2u * p.pv + n;
        YV[at] = a;
        YV[at + p.half] = b;
      } else if (t == 0u) ${rotated(weights[0], 'YQ', 'p.pq', 'p.yQOff')} else ${rotated(weights[1], 'YK', 'p.pk', 'p.yKOff')}
    }`;
  return `
struct P { K: u32, xOff: u32, wQOff: u32, wKOff: u32, wVOff: u32, pq: u32, pk: u32, pv: u32, half: u32,
  first: u32, yQOff: u32, yKOff: u32, yVOff: u32, nOff: u32, eps: f32, zero: u32 }
@group(0) @binding(0) var<uniform> p: P;
${xDecls(r)}
${weightDecls}
@group(0) @binding(5) var<storage, read> CS: array<vec2<f32>>;
${outDecls}
${readingDecls(r, weights, 9)}
${normDecls(r, M, 9 + readingCount(r, 3))}
${gemvMain(
  isInt8(r) ? 'i32' : 'f32',
  M,
  `
    if (t == 0u) ${weightLoop(r, M, weights[0])} else if (t == 1u) ${weightLoop(r, M, weights[1])} else ${weightLoop(r, M, weights[2])}`,
  store,
  M,
  { decl: column, active: 't < 3u' },
  normPrologue(r, M),
)}`;
}

/** Tensors k and v go into from row `row` on (a KV cache) instead of new storage. */
export interface KvTarget {
  k: Storage;
  v: Storage;
  row: number;
}

/**
 * Where qkvRope stores q, k and v: new storage, or k and v at rows `into.row`.. of the cache
 * tensors; undefined where those do not fit one binding or lack the room.
 */
function qkvOutputs(ctx: GpuContext, M: number, rows: number[], into?: KvTarget) {
  const fresh = (n: number) => {
    const o = ctx.allocStorage(M, n, 'f32');
    return { o, w: ctx.whole(o, 'qkvRope') };
  };
  if (!into) {
    const outs = rows.map(fresh);
    return { outs: outs.map((x) => x.o), windows: outs.map((x) => x.w) };
  }
  const kv = [into.k, into.v];
  const windows = kv.map((t) => ctx.wholeIfFits(t));
  const room = kv.every((t, i) => t.dtype === 'f32' && t.cols === rows[i + 1] && into.row + M <= t.rows);
  if (!room || !windows[0] || !windows[1]) return undefined;
  const q = fresh(rows[0]);
  const at = (w: Window, i: number) => ({ ...w, off: w.off + into.row * rows[i + 1] });
  return { outs: [q.o, ...kv], windows: [q.w, at(windows[0], 0), at(windows[1], 1)] };
}

/**
 * q, k, v projections of a few rows of x at consecutive positions first.. with RoPE on q and k, in
 * one dispatch: equal to linear x3 and rope x2 (int8: the scaled int8 products). With `into`, k and
 * v are stored straight into those tensors from row into.row on (a KV cache: no copy, no
 * intermediate) and returned as they are. Undefined where it does not apply (more rows, weights of
 * different layouts or with a g_idx, a tensor larger than one binding, fewer storage bindings than
 * the kernel needs).
 */
export function qkvRope(
  ctx: GpuContext,
  input: FusedInput,
  weights: readonly [GemvOperand, GemvOperand, GemvOperand],
  first: number,
  headDim: number,
  table: RopeTable,
  into?: KvTarget,
): [Storage, Storage, Storage] | undefined {
  const M = input.x.rows;
  const half = headDim / 2;
  // X, three weights, the RoPE table, three outputs
  const f = fusedWindows(ctx, input, [...weights], 8);
  if (!f || table.invFreq.length !== half) return undefined;
  const rows = weights.map(rowsOf);
  if (rows.some((n) => n % headDim !== 0)) return undefined;
  const cs = ropeTableBuffer(ctx, table, first + M - 1);
  if (cs.buffer.size > ctx.maxBindingBytes) return undefined;
  const out = qkvOutputs(ctx, M, rows, into);
  if (!out) return undefined;
  const ow = out.windows;
  const pairs = rows.map((n) => n / 2);
  const params = new Params().u(f.K);
  for (const off of f.offsets) params.u(off);
  params.u(pairs[0]).u(pairs[1]).u(pairs[2]).u(half).u(first).u(ow[0].off).u(ow[1].off).u(ow[2].off);
  f.normParams(params);
  ctx.dispatch(
    gemvQkvRopeKernel(f.reading, M),
    params,
    [
      ...f.bindings,
      { buffer: cs.buffer, offset: 0, size: cs.buffer.size },
      ...ow.map((w) => w.binding),
      ...readingBindings(ctx, input, [...weights], 'qkvRope'),
      ...f.normBindings,
    ],
    grid2(Math.ceil((pairs[0] + pairs[1] + pairs[2]) / (GEMV_COLS / 2))),
  );
  return out.outs as [Storage, Storage, Storage];
}
