/**
 * Whole-tensor reductions read to the host: per-column |x| statistics and the sum of squared
 * differences. The GPU reduces blocks in f32; the host combines the block partials in f64.
 */
import { fail } from '../../errors.ts';
import type { ColumnStats, DType } from '../tensor.ts';
import { type GpuContext, grid2, type Kernel, Params, type Storage } from './context.ts';
import { arrayType, FLAT_WG, loadFn } from './wgsl.ts';

const WG = 256;
/** rows per column-statistics block */
const STAT_ROWS = 256;
/** elements per sum-of-squares workgroup */
const SSD_PER_WG = WG * 8;

function colStatsKernel(dx: DType): Kernel {
  return {
    key: `colstats:${dx}`,
    bindings: ['uniform', 'read', 'write'],
    code: () => `
struct P { rows: u32, cols: u32, xOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${arrayType(dx)}>;
@group(0) @binding(2) var<storage, read_write> O: array<vec2<f32>>;
${loadFn('ldX', 'X', dx)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let col = wid.x * ${WG}u + lid;
  if (col >= p.cols) { return; }
  let r0 = wid.y * ${STAT_ROWS}u;
  let r1 = min(r0 + ${STAT_ROWS}u, p.rows);
  var mx = 0.0;
  var sum = 0.0;
  for (var r = r0; r < r1; r++) {
    let a = abs(ldX(p.xOff + r * p.cols + col));
    mx = max(mx, a);
    sum += a;
  }
  O[wid.y * p.cols + col] = vec2<f32>(mx, sum);
}`,
  };
}

export async function columnStats(ctx: GpuContext, x: Storage): Promise<ColumnStats> {
  const { rows: M, cols: N } = x;
  const k = colStatsKernel(x.dtype);
  const parts: { buffer: GPUBuffer; offset: number; size: number }[] = [];
  const bufs: GPUBuffer[] = [];
  for (const seg of ctx.segments(M, [{ s: x, row0: 0 }])) {
    if (seg.n === 0 || N === 0) continue;
    const blocks = Math.ceil(seg.n / STAT_ROWS);
    if (Math.ceil(N / WG) > ctx.maxGroups || blocks > ctx.maxGroups)
      fail(`columnStats: ${M}x${N} is too large`);
    const size = blocks * N * 8;
    const buf = ctx.alloc(size);
    bufs.push(buf);
    parts.push({ buffer: buf, offset: 0, size });
    const [wx] = seg.w;
    ctx.dispatch(
      k,
      new Params().u(seg.n).u(N).u(wx.off),
      [wx.binding, { buffer: buf, offset: 0, size }],
      [Math.ceil(N / WG), blocks],
    );
  }
  const absMax = new Float32Array(N);
  const sum = new Float64Array(N);
  if (parts.length > 0) {
    const bytes = await ctx.readBytes(parts);
    const v = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    for (let b = 0; b < v.length / (2 * N); b++) {
      for (let j = 0; j < N; j++) {
        const o = (b * N + j) * 2;
        if (v[o] > absMax[j]) absMax[j] = v[o];
        sum[j] += v[o + 1];
      }
    }
  }
  for (const b of bufs) ctx.release(b);
  return { absMax, absMean: Float32Array.from(sum, (s) => s / M) };
}

function ssdKernel(da: DType, db: DType): Kernel {
  return {
    key: `ssd:${da}:${db}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { n: u32, aOff: u32, bOff: u32, outOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<${arrayType(da)}>;
@group(0) @binding(2) var<storage, read> B: array<${arrayType(db)}>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
var<workgroup> red: array<f32, ${WG}>;
${loadFn('ldA', 'A', da)}
${loadFn('ldB', 'B', db)}
${FLAT_WG}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flatWg(wid, nwg);
  let base = g * ${SSD_PER_WG}u;
  var s = 0.0;
  for (var i = 0u; i < ${SSD_PER_WG / WG}u; i++) {
    let e = base + i * ${WG}u + lid;
    if (e < p.n) {
      let d = ldA(p.aOff + e) - ldB(p.bOff + e);
      s += d * d;
    }
  }
  red[lid] = s;
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h = h >> 1u) {
    if (lid < h) { red[lid] += red[lid + h]; }
    workgroupBarrier();
  }
  if (lid == 0u) { O[p.outOff + g] = red[0]; }
}`,
  };
}

export async function sumSquaredDiff(ctx: GpuContext, a: Storage, b: Storage): Promise<number> {
  const na = a.rows * a.cols;
  if (na !== b.rows * b.cols) fail(`sumSquaredDiff: ${na} values against ${b.rows * b.cols}`);
  if (na === 0) return 0;
  const k = ssdKernel(a.dtype, b.dtype);
  let segs: { n: number; wa: ReturnType<GpuContext['whole']>; wb: ReturnType<GpuContext['whole']> }[];
  if (a.rows === b.rows) {
    segs = ctx
      .segments(
        a.rows,
        [a, b].map((s) => ({ s, row0: 0 })),
      )
      .map((s) => ({ n: s.n * a.cols, wa: s.w[0], wb: s.w[1] }));
  } else {
    segs = [{ n: na, wa: ctx.whole(a, 'sumSquaredDiff'), wb: ctx.whole(b, 'sumSquaredDiff') }];
  }
  const groups = segs.map((s) => Math.ceil(s.n / SSD_PER_WG));
  const total = groups.reduce((x, y) => x + y, 0);
  const out = ctx.alloc(total * 4);
  let at = 0;
  segs.forEach((s, i) => {
    ctx.dispatch(
      k,
      new Params().u(s.n).u(s.wa.off).u(s.wb.off).u(at),
      [s.wa.binding, s.wb.binding, { buffer: out, offset: 0, size: out.size }],
      grid2(groups[i]),
    );
    at += groups[i];
  });
  const bytes = await ctx.readBytes([{ buffer: out, offset: 0, size: total * 4 }]);
  ctx.release(out);
  const v = new Float32Array(bytes.buffer, bytes.byteOffset, total);
  let sum = 0;
  for (const x of v) sum += x;
  return sum;
}
