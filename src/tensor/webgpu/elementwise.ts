/** Elementwise kernels: add/sub/siluMul, column and row scaling, dtype conversion, RoPE. */
import { fail } from '../../errors.ts';
import type { DType, RopeTable } from '../tensor.ts';
import { type GpuContext, grid2, type Kernel, Params, type Storage } from './context.ts';
import { arrayType, FLAT_WG, loadFn } from './wgsl.ts';

const WG = 256;

/** silu(x) * y as the siluMul kernel computes it (fused kernels use the same expression). */
export const SILU_MUL = (x: string, y: string) => `(${x} / (1.0 + exp(-${x}))) * ${y}`;

export type BinaryOp = 'add' | 'sub' | 'siluMul';

const BINARY_EXPR: Record<BinaryOp, string> = {
  add: 'x + y',
  sub: 'x - y',
  siluMul: SILU_MUL('x', 'y'),
};

function binaryKernel(op: BinaryOp, da: DType, db: DType): Kernel {
  return {
    key: `binary:${op}:${da}:${db}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { n: u32, aOff: u32, bOff: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<${arrayType(da)}>;
@group(0) @binding(2) var<storage, read> B: array<${arrayType(db)}>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
${loadFn('ldA', 'A', da)}
${loadFn('ldB', 'B', db)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flatWg(wid, nwg) * ${WG}u + lid;
  if (e >= p.n) { return; }
  let x = ldA(p.aOff + e);
  let y = ldB(p.bOff + e);
  O[p.oOff + e] = ${BINARY_EXPR[op]};
}`,
  };
}

/** out = op(a, b) elementwise; a and b have the same layout. */
export function binary(ctx: GpuContext, op: BinaryOp, a: Storage, b: Storage): Storage {
  const out = ctx.allocStorage(a.rows, a.cols, 'f32');
  const k = binaryKernel(op, a.dtype, b.dtype);
  const parts = [a, b, out].map((s) => ({ s, row0: 0 }));
  for (const seg of ctx.segments(a.rows, parts)) {
    const n = seg.n * a.cols;
    const [wa, wb, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(n).u(wa.off).u(wb.off).u(wo.off),
      [wa.binding, wb.binding, wo.binding],
      grid2(Math.ceil(n / WG)),
    );
  }
  return out;
}

function scaleKernel(byColumn: boolean, dx: DType, ds: DType): Kernel {
  return {
    key: `scale:${byColumn ? 'col' : 'row'}:${dx}:${ds}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { n: u32, cols: u32, xOff: u32, sOff: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read> S: array<${arrayType(ds)}>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
${loadFn('ldX', 'X', dx)}
${loadFn('ldS', 'S', ds)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flatWg(wid, nwg) * ${WG}u + lid;
  if (e >= p.n) { return; }
  let s = ldS(p.sOff + ${byColumn ? 'e % p.cols' : 'e / p.cols'});
  O[p.oOff + e] = ldX(p.xOff + e) * s;
}`,
  };
}

/** x[:, j] * s[j] */
export function scaleColumns(ctx: GpuContext, x: Storage, s: Storage): Storage {
  const out = ctx.allocStorage(x.rows, x.cols, 'f32');
  const ws = ctx.whole(s, 'scaleColumns');
  const k = scaleKernel(true, x.dtype, s.dtype);
  for (const seg of ctx.segments(
    x.rows,
    [x, out].map((t) => ({ s: t, row0: 0 })),
  )) {
    const n = seg.n * x.cols;
    const [wx, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(n).u(x.cols).u(wx.off).u(ws.off).u(wo.off),
      [wx.binding, ws.binding, wo.binding],
      grid2(Math.ceil(n / WG)),
    );
  }
  return out;
}

/** x[i, :] * s[i] (s is a vector with one entry per row, walked along with x) */
export function scaleRows(ctx: GpuContext, x: Storage, s: Storage): Storage {
  const out = ctx.allocStorage(x.rows, x.cols, 'f32');
  const k = scaleKernel(false, x.dtype, s.dtype);
  for (const seg of ctx.segments(
    x.rows,
    [x, s, out].map((t) => ({ s: t, row0: 0 })),
  )) {
    const n = seg.n * x.cols;
    const [wx, ws, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(n).u(x.cols).u(wx.off).u(ws.off).u(wo.off),
      [wx.binding, ws.binding, wo.binding],
      grid2(Math.ceil(n / WG)),
    );
  }
  return out;
}

function convertKernel(ds: DType): Kernel {
  return {
    key: `convert:${ds}`,
    bindings: ['uniform', 'read', 'write'],
    code: () => `
struct P { n: u32, sOff: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> S: array<${arrayType(ds)}>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
${loadFn('ldS', 'S', ds)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flatWg(wid, nwg) * ${WG}u + lid;
  if (e >= p.n) { return; }
  O[p.oOff + e] = ldS(p.sOff + e);
}`,
  };
}

/**
 * Copies n rows of src (from srcRow0) into the f32 storage dst (from dstRow0), widening as needed.
 * Same-dtype 4-byte rows are copied buffer to buffer; everything else goes through a kernel.
 */
export function copyRows(
  ctx: GpuContext,
  src: Storage,
  srcRow0: number,
  dst: Storage,
  dstRow0: number,
  n: number,
): void {
  if (src.cols !== dst.cols) fail(`WebGPU copyRows: ${src.cols} columns into ${dst.cols}`);
  if (n === 0 || src.cols === 0) return;
  if (dst.dtype !== 'f32') throw new Error('copyRows writes f32');
  if (src.dtype === 'f32') {
    const rowBytes = src.cols * 4;
    let r = 0;
    while (r < n) {
      const sc = Math.floor((srcRow0 + r) / src.rowsPerChunk);
      const sl = srcRow0 + r - sc * src.rowsPerChunk;
      const dc = Math.floor((dstRow0 + r) / dst.rowsPerChunk);
      const dl = dstRow0 + r - dc * dst.rowsPerChunk;
      const m = Math.min(n - r, src.rowsPerChunk - sl, dst.rowsPerChunk - dl);
      const sb = src.chunks[sc];
      const db = dst.chunks[dc];
      if (!sb || !db) fail('WebGPU: tensor used after dispose');
      ctx.copy(sb, sl * rowBytes, db, dl * rowBytes, m * rowBytes);
      r += m;
    }
    return;
  }
  const k = convertKernel(src.dtype);
  const parts = [
    { s: src, row0: srcRow0 },
    { s: dst, row0: dstRow0 },
  ];
  for (const seg of ctx.segments(n, parts)) {
    const e = seg.n * src.cols;
    const [ws, wd] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(e).u(ws.off).u(wd.off),
      [ws.binding, wd.binding],
      grid2(Math.ceil(e / WG)),
    );
  }
}

export function toF32(ctx: GpuContext, x: Storage): Storage {
  const out = ctx.allocStorage(x.rows, x.cols, 'f32');
  copyRows(ctx, x, 0, out, 0, x.rows);
  return out;
}

// ------------------------------------------------------------------------------------------ RoPE

interface RopeCache {
  buffer: GPUBuffer;
  /** positions 0..maxPos are in the table */
  maxPos: number;
}

const ropeCaches = new WeakMap<GpuContext, WeakMap<RopeTable, RopeCache>>();

/**
 * cos/sin of every position up to maxPos, computed on the host exactly as the CPU backend does
 * (f32 angle, f64 cos/sin rounded to f32, times attentionScaling rounded to f32): GPU sin/cos are
 * approximations that lose accuracy for angles in the thousands of radians.
 */
export function ropeTableBuffer(ctx: GpuContext, table: RopeTable, maxPos: number): RopeCache {
  let perCtx = ropeCaches.get(ctx);
  if (!perCtx) ropeCaches.set(ctx, (perCtx = new WeakMap()));
  const cached = perCtx.get(table);
  if (cached && cached.maxPos >= maxPos) return cached;
  const half = table.invFreq.length;
  const limit = Math.max(2048, 2 ** Math.ceil(Math.log2(maxPos + 1))) - 1;
  const data = new Float32Array((limit + 1) * half * 2);
  for (let pos = 0; pos <= limit; pos++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(pos * table.invFreq[i]);
      data[(pos * half + i) * 2] = Math.fround(Math.cos(angle)) * table.attentionScaling;
      data[(pos * half + i) * 2 + 1] = Math.fround(Math.sin(angle)) * table.attentionScaling;
    }
  }
  if (cached) ctx.release(cached.buffer);
  const entry = { buffer: ctx.createWith(new Uint8Array(data.buffer)), maxPos: limit };
  perCtx.set(table, entry);
  return entry;
}

function ropeKernel(dx: DType): Kernel {
  return {
    key: `rope:${dx}`,
    bindings: ['uniform', 'read', 'read', 'read', 'write'],
    code: () => `
struct P { n: u32, width: u32, headDim: u32, xOff: u32, oOff: u32, posOff: u32, first: i32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read> POS: array<i32>;
@group(0) @binding(3) var<storage, read> CS: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
${loadFn('ldX', 'X', dx)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flatWg(wid, nwg) * ${WG}u + lid;
  if (e >= p.n) { return; }
  let halfW = p.width / 2u;
  let half = p.headDim / 2u;
  let row = e / halfW;
  let pair = e % halfW;
  let i = pair % half;
  let col = (pair / half) * p.headDim + i;
  // first >= 0: positions first, first + 1, ... (no POS buffer, so decode steps bind the same buffers)
  var pos = u32(p.first) + p.posOff + row;
  if (p.first < 0) { pos = u32(POS[p.posOff + row]); }
  let cs = CS[pos * half + i];
  let a = ldX(p.xOff + row * p.width + col);
  let b = ldX(p.xOff + row * p.width + col + half);
  O[p.oOff + row * p.width + col] = a * cs.x - b * cs.y;
  O[p.oOff + row * p.width + col + half] = b * cs.x + a * cs.y;
}`,
  };
}

function consecutive(positions: Int32Array): boolean {
  for (let i = 1; i < positions.length; i++) if (positions[i] !== positions[0] + i) return false;
  return positions.length > 0;
}

export function rope(
  ctx: GpuContext,
  x: Storage,
  positions: Int32Array,
  headDim: number,
  table: RopeTable,
): Storage {
  const width = x.cols;
  if (headDim % 2 !== 0 || width % headDim !== 0)
    fail(`rope: width ${width} is not a multiple of head_dim ${headDim}`);
  if (table.invFreq.length !== headDim / 2)
    fail(`rope: ${table.invFreq.length} frequencies for head_dim ${headDim}`);
  let maxPos = 0;
  for (const p of positions) {
    if (p < 0 || !Number.isInteger(p)) fail(`rope: position ${p} is not a non-negative integer`);
    if (p > maxPos) maxPos = p;
  }
  const out = ctx.allocStorage(x.rows, width, 'f32');
  if (x.rows === 0) return out;
  const cs = ropeTableBuffer(ctx, table, maxPos);
  const first = consecutive(positions) ? positions[0] : -1;
  const pos =
    first >= 0
      ? ctx.dummy()
      : ctx.hostData(new Uint8Array(positions.buffer, positions.byteOffset, positions.byteLength));
  const k = ropeKernel(x.dtype);
  const csBinding = { buffer: cs.buffer, offset: 0, size: cs.buffer.size };
  if (cs.buffer.size > ctx.maxBindingBytes)
    fail(`rope: the cos/sin table for position ${maxPos} exceeds the binding limit`);
  for (const seg of ctx.segments(
    x.rows,
    [x, out].map((s) => ({ s, row0: 0 })),
  )) {
    const n = (seg.n * width) / 2;
    const [wx, wo] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(n).u(width).u(headDim).u(wx.off).u(wo.off).u(seg.r0).i(first),
      [wx.binding, pos, csBinding, wo.binding],
      grid2(Math.ceil(n / WG)),
    );
  }
  return out;
}
