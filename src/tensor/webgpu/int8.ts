/**
 * int8 x int8 -> int32 GEMM: c[M,N] = a[M,K] b[N,K]^T, exact integer accumulation.
 *
 * Two kernels:
 * - `subgroup-matrix`: the tensor cores through `chromium-experimental-subgroup-matrix` (Vulkan
 *   cooperative matrices), i8 16x16x32 -> i32. Left tiles are 16 rows x 32 k of a (row-major
 *   [M,K]); right tiles 32 k x 16 columns, i.e. b [N,K] read column-major. The default 'shared'
 *   tiling stages slices of a and b in workgroup memory for 16 subgroups (see SubgroupMatrixTile;
 *   BENCHMARKS.md has the sweep); it needs M, N, K multiples of the workgroup tile.
 *   The WGSL of this feature changed between Dawn builds (layout as a template or a bool argument;
 *   offsets and strides in i8 elements or array words): probe() compiles each spelling and keeps
 *   the first that multiplies a test problem exactly.
 * - `dot4`: a portable shared-memory tiled GEMM over packed words with dot4I8Packed (one 4-way
 *   int8 dot product per instruction); any M, N; K a multiple of 4. Used for every other shape and
 *   on adapters without subgroup matrices (lavapipe).
 */
import { fail } from '../../errors.ts';
import type { GemvTuning, GpuContext, Kernel, Storage } from './context.ts';
import { grid2, Params } from './context.ts';
import { GEMV_COLS, GEMV_LANES, GEMV_MAX_M, gemvKey, gemvMain, laneLoop, unrollFor } from './matmul.ts';
import { chunksFit, FLAT_WG, range } from './wgsl.ts';

export type Int8Path = 'subgroup-matrix' | 'dot4';

/**
 * Subgroup-matrix tiling. 'direct': one subgroup per workgroup, operands loaded from storage.
 * 'shared': sgm x sgn subgroups per workgroup share A and B tiles of `bk` k staged in workgroup
 * memory. Each subgroup computes tm x tn result tiles of 16x16.
 */
export interface SubgroupMatrixTile {
  style: 'direct' | 'shared';
  tm: number;
  tn: number;
  sgm: number;
  sgn: number;
  bk: number;
}

export const DEFAULT_SGM_TILE: SubgroupMatrixTile = { style: 'shared', tm: 2, tn: 4, sgm: 4, sgn: 4, bk: 64 };

/**
 * How this Dawn build spells and counts: the layout as a template or a bool argument; offsets and
 * strides of an i8 matrix over an i32 array in i8 elements or in array words. The first variant
 * that compiles and computes a test product exactly is used.
 */
export interface Dialect {
  syntax: 'template' | 'argument';
  offset: 'i8' | 'word';
  stride: 'i8' | 'word';
}

const DIALECTS: Dialect[] = (['template', 'argument'] as const).flatMap((syntax) =>
  (['word', 'i8'] as const).flatMap((offset) =>
    (['word', 'i8'] as const).map((stride) => ({ syntax, offset, stride })),
  ),
);

/** dot4 tiling: a 16x16 workgroup, each thread t x t outputs; bkw words (4 int8 each) of k per step. */
export interface Dot4Tile {
  t: number;
  bkw: number;
}

export const DEFAULT_DOT4_TILE: Dot4Tile = { t: 8, bkw: 8 };

/** Declarations of the dot4 GEMM and GEMV: a and b as words of four int8, K in words (KW). */
const dot4Header = (chunks = false) => `
struct P { M: u32, N: u32, KW: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<${codeArray(chunks)}>;
@group(0) @binding(2) var<storage, read> B: array<${codeArray(chunks)}>;
@group(0) @binding(3) var<storage, read_write> C: array<i32>;`;

function dot4Kernel({ t, bkw }: Dot4Tile): Kernel {
  const tile = 16 * t;
  return {
    key: `int8gemm:dot4:${t}:${bkw}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `${dot4Header()}
var<workgroup> As: array<u32, ${tile * bkw}>;
var<workgroup> Bs: array<u32, ${tile * bkw}>;
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let t = l.y * 16u + l.x;
  let m0 = wid.y * ${tile}u;
  let n0 = wid.x * ${tile}u;
  var acc: array<i32, ${t * t}>;
  for (var k0 = 0u; k0 < p.KW; k0 += ${bkw}u) {
    for (var r = 0u; r < ${(tile * bkw) / 256}u; r++) {
      let idx = t + r * 256u;
      let row = idx / ${bkw}u;
      let kw = idx % ${bkw}u;
      var a = 0u;
      var b = 0u;
      if (m0 + row < p.M && k0 + kw < p.KW) { a = A[(m0 + row) * p.KW + k0 + kw]; }
      if (n0 + row < p.N && k0 + kw < p.KW) { b = B[(n0 + row) * p.KW + k0 + kw]; }
      As[kw * ${tile}u + row] = a;
      Bs[kw * ${tile}u + row] = b;
    }
    workgroupBarrier();
    for (var kw = 0u; kw < ${bkw}u; kw++) {
      var a: array<u32, ${t}>;
      var b: array<u32, ${t}>;
      for (var i = 0u; i < ${t}u; i++) {
        a[i] = As[kw * ${tile}u + l.y * ${t}u + i];
        b[i] = Bs[kw * ${tile}u + l.x * ${t}u + i];
      }
      for (var i = 0u; i < ${t}u; i++) {
        for (var j = 0u; j < ${t}u; j++) { acc[i * ${t}u + j] += dot4I8Packed(a[i], b[j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < ${t}u; i++) {
    let m = m0 + l.y * ${t}u + i;
    for (var j = 0u; j < ${t}u; j++) {
      let n = n0 + l.x * ${t}u + j;
      if (m < p.M && n < p.N) { C[m * p.N + n] = acc[i * ${t}u + j]; }
    }
  }
}`,
  };
}

/** WGSL snippets for one dialect: i8 matrix loads from i32 arrays, i32 result stores. */
function dialectOps(d: Dialect) {
  const units = (x: string, unit: 'i8' | 'word') => (unit === 'i8' ? x : `(${x}) / 4u`);
  const load = (type: string, colMajor: boolean, ptr: string, off: string, stride: string) => {
    const o = units(off, d.offset);
    const st = units(stride, d.stride);
    return d.syntax === 'template'
      ? `subgroupMatrixLoad<${type}, ${colMajor ? 'col_major' : 'row_major'}>(${ptr}, ${o}, ${st})`
      : `subgroupMatrixLoad<${type}>(${ptr}, ${o}, ${colMajor}, ${st})`;
  };
  const store = (off: string, value: string) =>
    d.syntax === 'template'
      ? `subgroupMatrixStore<row_major>(&C, ${off}, ${value}, p.N)`
      : `subgroupMatrixStore(&C, ${off}, ${value}, false, p.N)`;
  return { load, store };
}

const LEFT = 'subgroup_matrix_left<i8, 32, 16>';
const RIGHT = 'subgroup_matrix_right<i8, 16, 32>';

function sgmHeader(operand: 'i32' | 'vec4<i32>'): string {
  return `
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
struct P { M: u32, N: u32, K: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<${operand}>;
@group(0) @binding(2) var<storage, read> B: array<${operand}>;
@group(0) @binding(3) var<storage, read_write> C: array<i32>;`;
}

/** tm x tn index pairs, row-major. */
function tilePairs(t: SubgroupMatrixTile): [number, number][] {
  return Array.from({ length: t.tm * t.tn }, (_, q) => [Math.floor(q / t.tn), q % t.tn]);
}

/**
 * One k step of 32 on the subgroup's tm x tn tiles, fully unrolled into named variables (arrays of
 * subgroup matrices indexed in loops end up in local memory).
 */
function mmaStep(t: SubgroupMatrixTile, left: (i: number) => string, right: (j: number) => string): string {
  const lines = [
    ...Array.from({ length: t.tm }, (_, i) => `let a${i} = ${left(i)};`),
    ...Array.from({ length: t.tn }, (_, j) => `let b${j} = ${right(j)};`),
    ...tilePairs(t).map(
      ([i, j]) => `acc${i}_${j} = subgroupMatrixMultiplyAccumulate(a${i}, b${j}, acc${i}_${j});`,
    ),
  ];
  return `{\n      ${lines.join('\n      ')}\n    }`;
}

function accDeclarations(t: SubgroupMatrixTile): string {
  return tilePairs(t)
    .map(([i, j]) => `var acc${i}_${j}: subgroup_matrix_result<i32, 16, 16>;`)
    .join('\n  ');
}

/**
 * Stores the accumulators of the subgroup whose tile starts at (m0, n0); with `guard`, tiles past
 * the matrix edge are skipped (only where the condition is uniform across the workgroup).
 */
function sgmStores(t: SubgroupMatrixTile, d: Dialect, guard: boolean): string {
  const { store } = dialectOps(d);
  return tilePairs(t)
    .map(([i, j]) => {
      const st = `${store(`(m0 + ${16 * i}u) * p.N + n0 + ${16 * j}u`, `acc${i}_${j}`)};`;
      return guard ? `if (m0 + ${16 * i}u < p.M && n0 + ${16 * j}u < p.N) { ${st} }` : st;
    })
    .join('\n  ');
}

/** One subgroup per workgroup; operands straight from storage (rows clamped inside the matrix). */
function sgmDirectKernel(t: SubgroupMatrixTile, subgroupSize: number, d: Dialect): Kernel {
  const { load } = dialectOps(d);
  const step = mmaStep(
    t,
    (i) => load(LEFT, false, '&A', `min(m0 + ${16 * i}u, p.M - 16u) * p.K + k0`, 'p.K'),
    (j) => load(RIGHT, true, '&B', `min(n0 + ${16 * j}u, p.N - 16u) * p.K + k0`, 'p.K'),
  );
  return {
    key: `int8gemm:sgm-direct:${t.tm}x${t.tn}:${subgroupSize}:${JSON.stringify(d)}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `${sgmHeader('i32')}
@compute @workgroup_size(${subgroupSize})
fn main(@builtin(workgroup_id) wid: vec3<u32>) {
  let m0 = wid.y * ${16 * t.tm}u;
  let n0 = wid.x * ${16 * t.tn}u;
  ${accDeclarations(t)}
  for (var k0 = 0u; k0 < p.K; k0 += 32u) ${step}
  ${sgmStores(t, d, true)}
}`,
  };
}

/** Padding of each staged row (bytes): keeps the rows of a tile off the same shared-memory banks. */
const ROW_PAD = 16;

/**
 * sgm x sgn subgroups per workgroup; each k step stages the workgroup's bk-wide slices of A and B
 * rows in workgroup memory (16-byte loads), then every subgroup multiplies its tiles from there.
 * Needs M, N, K multiples of the workgroup tile (no edge handling: subgroup-matrix stores must
 * stay in uniform control flow, and the subgroup index is not uniform across the workgroup).
 */
function sgmSharedKernel(t: SubgroupMatrixTile, subgroupSize: number, d: Dialect): Kernel {
  const { load } = dialectOps(d);
  const [BM, BN] = sharedTileShape(t);
  const BKV = t.bk / 16; // vec4<i32> per staged row slice
  const rowBytes = t.bk + ROW_PAD;
  const rowWords = rowBytes / 4;
  const threads = subgroupSize * t.sgm * t.sgn;
  // each thread carries its share of the next k step in registers while the current one computes
  const share = (rows: number) => Math.ceil((rows * BKV) / threads);
  const fetch = (reg: string, src: string, rows: number, first: string) =>
    Array.from({ length: share(rows) }, (_, r) => {
      const idx = `li + ${r * threads}u`;
      return `if (${idx} < ${rows * BKV}u) { ${reg}[${r}] = ${src}[(${first} + (${idx}) / ${BKV}u) * KV + next + (${idx}) % ${BKV}u]; }`;
    }).join('\n      ');
  const stash = (reg: string, dst: string, rows: number) =>
    Array.from({ length: share(rows) }, (_, r) => {
      const idx = `li + ${r * threads}u`;
      const at = `(${idx}) / ${BKV}u * ${rowWords}u + (${idx}) % ${BKV}u * 4u`;
      return `if (${idx} < ${rows * BKV}u) { let at = ${at}; let v = ${reg}[${r}]; ${dst}[at] = v.x; ${dst}[at + 1u] = v.y; ${dst}[at + 2u] = v.z; ${dst}[at + 3u] = v.w; }`;
    }).join('\n    ');
  const steps = Array.from({ length: t.bk / 32 }, (_, s) =>
    mmaStep(
      t,
      (i) => load(LEFT, false, '&As', `(wm + ${16 * i}u) * ${rowBytes}u + ${32 * s}u`, `${rowBytes}u`),
      (j) => load(RIGHT, true, '&Bs', `(wn + ${16 * j}u) * ${rowBytes}u + ${32 * s}u`, `${rowBytes}u`),
    ),
  ).join('\n    ');
  return {
    key: `int8gemm:sgm-shared:${t.tm}x${t.tn}:${t.sgm}x${t.sgn}:${t.bk}:${subgroupSize}:${JSON.stringify(d)}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `${sgmHeader('vec4<i32>')}
var<workgroup> As: array<i32, ${BM * rowWords}>;
var<workgroup> Bs: array<i32, ${BN * rowWords}>;
@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let sg = li / ${subgroupSize}u;
  let wm = (sg / ${t.sgn}u) * ${16 * t.tm}u;
  let wn = (sg % ${t.sgn}u) * ${16 * t.tn}u;
  let m0 = wid.y * ${BM}u + wm;
  let n0 = wid.x * ${BN}u + wn;
  let KV = p.K / 16u;
  ${accDeclarations(t)}
  var ra: array<vec4<i32>, ${share(BM)}>;
  var rb: array<vec4<i32>, ${share(BN)}>;
  var next = 0u;
  ${fetch('ra', 'A', BM, `wid.y * ${BM}u`)}
  ${fetch('rb', 'B', BN, `wid.x * ${BN}u`)}
  for (var k0 = 0u; k0 < KV; k0 += ${BKV}u) {
    ${stash('ra', 'As', BM)}
    ${stash('rb', 'Bs', BN)}
    workgroupBarrier();
    next = k0 + ${BKV}u;
    if (next < KV) {
      ${fetch('ra', 'A', BM, `wid.y * ${BM}u`)}
      ${fetch('rb', 'B', BN, `wid.x * ${BN}u`)}
    }
    ${steps}
    workgroupBarrier();
  }
  ${sgmStores(t, d, false)}
}`,
  };
}

/** Rows of A and of B one workgroup covers. */
function sharedTileShape(t: SubgroupMatrixTile): [number, number] {
  return t.style === 'direct' ? [16 * t.tm, 16 * t.tn] : [16 * t.tm * t.sgm, 16 * t.tn * t.sgn];
}

export function sgmKernel(t: SubgroupMatrixTile, subgroupSize: number, d: Dialect): Kernel {
  return t.style === 'direct' ? sgmDirectKernel(t, subgroupSize, d) : sgmSharedKernel(t, subgroupSize, d);
}

/** The adapter's subgroup-matrix configurations (Dawn's GPUAdapterInfo extension). */
interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

/** A small random problem and its exact product, to check a kernel before trusting it. */
function testProblem(t: SubgroupMatrixTile): {
  M: number;
  N: number;
  K: number;
  a: Int8Array;
  b: Int8Array;
  c: Int32Array;
} {
  const [bm, bn] = sharedTileShape(t);
  const [M, N, K] = t.style === 'direct' ? [80, 96, 160] : [2 * bm, 3 * bn, 3 * Math.max(t.bk, 32)];
  let state = 12345;
  const next = () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return ((state >>> 16) & 0xff) - 128;
  };
  const a = Int8Array.from({ length: M * K }, next);
  const b = Int8Array.from({ length: N * K }, next);
  const c = new Int32Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let sum = 0;
      for (let k = 0; k < K; k++) sum += a[m * K + k] * b[n * K + k];
      c[m * N + n] = sum;
    }
  return { M, N, K, a, b, c };
}

/** c = a b^T for a few rows of a: GEMV_COLS outputs per workgroup, each K split over GEMV_LANES threads. */
function dot4GemvKernel(M: number, t: GemvTuning, chunks: boolean): Kernel {
  const L = GEMV_LANES;
  return {
    key: `int8gemv:dot4:${M}:${gemvKey(t, chunks)}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `${dot4Header(chunks)}
${gemvMain('i32', M, dot4GemvLoop(M, t, chunks), `C[lane * p.N + n] = red[c * ${L * M}u + lane];`)}`,
  };
}

/**
 * WGSL of an output of the integer path: the i32 sum times its row's and its column's scale, in this
 * order; every kernel that fuses the scaling uses it, so all round alike.
 */
export const scaledSum = (sum: string, rowScale: string, colScale: string) =>
  `f32(${sum}) * ${rowScale} * ${colScale}`;

/** The arrays, K (in words) and offsets (in words) a dot4 GEMV loop reads, and where its sums go in acc. */
export interface Dot4Operands {
  A: string;
  B: string;
  K: string;
  aOff: string;
  bOff: string;
  acc: number;
}

const PLAIN_DOT4: Dot4Operands = { A: 'A', B: 'B', K: 'p.KW', aOff: '0u', bOff: '0u', acc: 0 };

/** Whether a dot4 GEMV reads its codes a vec4<u32> (16 int8) a load: K and the offsets (in words) multiples of 4. */
export function int8Chunks(t: GemvTuning, KW: number, wordOffsets: number[]): boolean {
  return t.chunks && chunksFit(KW, wordOffsets, []);
}

/** The array type a dot4 GEMV binds its codes as. */
export const codeArray = (chunks: boolean) => (chunks ? 'vec4<u32>' : 'u32');

/**
 * The per-lane loop of the dot4 GEMV. Chunked: lane l takes vec4 words l, l + LANES, ... (a
 * subgroup's loads cover consecutive bytes), `unroll` of them loaded before they are multiplied;
 * else four consecutive words a step. Integer sums: the order does not change them.
 */
export function dot4GemvLoop(
  M: number,
  t: GemvTuning,
  chunks: boolean,
  o: Dot4Operands = PLAIN_DOT4,
): string {
  if (!chunks)
    return `
    let bRow = ${o.bOff} + n * ${o.K};
    for (var w0 = lane * 4u; w0 < ${o.K}; w0 += ${GEMV_LANES * 4}u) {
      for (var j = 0u; j < 4u; j++) {
        let kw = w0 + j;
        if (kw >= ${o.K}) { break; }
        let b = ${o.B}[bRow + kw];
        for (var m = 0u; m < ${M}u; m++) { acc[${o.acc}u + m] += dot4I8Packed(${o.A}[${o.aOff} + m * ${o.K} + kw], b); }
      }
    }`;
  const rows = range(M);
  return `
    let bRow = (${o.bOff} + n * ${o.K}) / 4u;
    let K4 = ${o.K} / 4u;${laneLoop(
      'K4',
      unrollFor(t, M),
      (j, q) => `let b${j} = ${o.B}[bRow + ${q}];
      ${rows.map((m) => `let a${j}_${m} = ${o.A}[(${o.aOff} + ${m}u * ${o.K}) / 4u + ${q}];`).join(' ')}`,
      (j) =>
        rows
          .map(
            (m) =>
              `acc[${o.acc + m}] += ${['x', 'y', 'z', 'w'].map((c) => `dot4I8Packed(a${j}_${m}.${c}, b${j}.${c})`).join(' + ')};`,
          )
          .join(' '),
    )}`;
}

/**
 * y = f32(a b^T) * rowScales[m] * colScales[n] (+ bias[n]) (+ residual[m, n]) for a few rows of a:
 * the dot4 GEMV with scaleInt32's expressions (and the residual added last) in its store.
 */
function dot4GemvScaledKernel(M: number, t: GemvTuning, chunks: boolean): Kernel {
  return {
    key: `int8gemv-scaled:dot4:${M}:${gemvKey(t, chunks)}`,
    bindings: ['uniform', 'read', 'read', 'read', 'read', 'read', 'read', 'write'],
    code: () => `
struct P { M: u32, N: u32, KW: u32, hasBias: u32, hasRes: u32, rOff: u32, yOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<${codeArray(chunks)}>;
@group(0) @binding(2) var<storage, read> B: array<${codeArray(chunks)}>;
@group(0) @binding(3) var<storage, read> RS: array<f32>;
@group(0) @binding(4) var<storage, read> CS: array<f32>;
@group(0) @binding(5) var<storage, read> Bias: array<f32>;
@group(0) @binding(6) var<storage, read> R: array<f32>;
@group(0) @binding(7) var<storage, read_write> Y: array<f32>;
${gemvMain(
  'i32',
  M,
  dot4GemvLoop(M, t, chunks),
  `var y = ${scaledSum(`red[c * ${GEMV_LANES * M}u + lane]`, 'RS[lane]', 'CS[n]')};
    if (p.hasBias != 0u) { y += Bias[n]; }
    if (p.hasRes != 0u) { y = y + R[p.rOff + lane * p.N + n]; }
    Y[p.yOff + lane * p.N + n] = y;`,
)}`,
  };
}

/**
 * matmulInt8 then scaleInt32 (then the residual added) in one dispatch for a few rows of a
 * (decoding); undefined for more rows or operands larger than one binding.
 */
export function int8GemvScaled(
  ctx: GpuContext,
  a: Storage,
  b: Storage,
  rowScales: Storage,
  colScales: Storage,
  bias: Storage | undefined,
  residual: Storage | undefined,
): Storage | undefined {
  const [M, N, K] = [a.rows, b.rows, a.cols];
  if (M === 0 || M > GEMV_MAX_M || b.cols !== K || K % 4 !== 0) return undefined;
  if (residual && (residual.rows !== M || residual.cols !== N))
    fail(`int8 linear: a ${residual.rows}x${residual.cols} residual for a ${M}x${N} output`);
  const ins = [a, b, rowScales, colScales].map((s) => ctx.wholeIfFits(s));
  const rw = residual ? ctx.wholeIfFits(residual) : undefined;
  // the kernel indexes a, b and the scales from their bindings' starts
  if (ins.some((w) => w?.off !== 0) || (residual && !rw)) return undefined;
  const y = ctx.allocStorage(M, N, 'f32');
  const yw = ctx.whole(y, 'int8 linear');
  const params = new Params()
    .u(M)
    .u(N)
    .u(K / 4)
    .u(bias ? 1 : 0)
    .u(rw ? 1 : 0)
    .u(rw?.off ?? 0)
    .u(yw.off);
  const optional = (s: Storage | undefined) => (s ? ctx.whole(s, 'int8 linear').binding : ctx.dummy());
  ctx.dispatch(
    dot4GemvScaledKernel(M, ctx.gemv, int8Chunks(ctx.gemv, K / 4, [0, 0])),
    params,
    [...ins.map((w) => w!.binding), optional(bias), rw ? rw.binding : ctx.dummy(), yw.binding],
    grid2(Math.ceil(N / GEMV_COLS)),
  );
  return y;
}

/** Picks the int8 GEMM kernel this device runs correctly. */
export class Int8Gemm {
  path: Int8Path = 'dot4';
  private sgm: Kernel | undefined;
  /** the subgroup-matrix dialect in use, or why subgroup matrices are not used */
  reason = 'not probed';

  constructor(
    private readonly ctx: GpuContext,
    readonly sgmTile: SubgroupMatrixTile = DEFAULT_SGM_TILE,
    readonly dot4Tile: Dot4Tile = DEFAULT_DOT4_TILE,
  ) {}

  /**
   * Compiles the subgroup-matrix kernel in each dialect and keeps the first that multiplies a test
   * problem exactly; dot4 otherwise (or when asked for).
   */
  async probe(want: Int8Path | 'auto' = 'auto'): Promise<void> {
    this.path = 'dot4';
    this.sgm = undefined;
    if (want === 'dot4') {
      this.reason = 'dot4 requested';
      return;
    }
    const info = this.ctx.adapterInfo as
      | (GPUAdapterInfo & { subgroupMatrixConfigs?: SubgroupMatrixConfig[]; subgroupMaxSize?: number })
      | undefined;
    const fits = (info?.subgroupMatrixConfigs ?? []).some(
      (c) =>
        c.componentType === 'i8' && c.resultComponentType === 'i32' && c.M === 16 && c.N === 16 && c.K === 32,
    );
    if (!this.ctx.features.has('chromium-experimental-subgroup-matrix') || !fits) {
      this.reason = 'adapter offers no i8 16x16x32 subgroup matrices';
    } else {
      const failures: string[] = [];
      for (const dialect of DIALECTS) {
        const k = sgmKernel(this.sgmTile, info?.subgroupMaxSize ?? 32, dialect);
        const err = await this.ctx.tryCompile(k);
        if (!err && (await this.exact(k))) {
          this.sgm = k;
          this.path = 'subgroup-matrix';
          this.reason = JSON.stringify(dialect);
          return;
        }
        failures.push(`${JSON.stringify(dialect)}: ${err ?? 'wrong results'}`);
      }
      this.reason = `no subgroup-matrix dialect worked (${failures.join(' | ')})`;
    }
    if (want === 'subgroup-matrix') fail(`WebGPU int8 GEMM: ${this.reason}`);
  }

  private async exact(k: Kernel): Promise<boolean> {
    const t = testProblem(this.sgmTile);
    const a = this.ctx.uploadStorage(t.M, t.K, 'i8', new Uint8Array(t.a.buffer));
    const b = this.ctx.uploadStorage(t.N, t.K, 'i8', new Uint8Array(t.b.buffer));
    const c = this.dispatch(k, a, b);
    const bytes = await this.ctx.readBytes([{ buffer: c.chunks[0], offset: 0, size: t.M * t.N * 4 }]);
    const got = new Int32Array(bytes.buffer, bytes.byteOffset, t.M * t.N);
    for (const s of [a, b, c]) this.ctx.releaseStorage(s);
    return got.every((v, i) => v === t.c[i]);
  }

  /** Records c = a b^T with the given subgroup-matrix kernel, or the dot4 kernel when there is none. */
  private dispatch(sgm: Kernel | undefined, a: Storage, b: Storage): Storage {
    const [M, N, K] = [a.rows, b.rows, a.cols];
    const out = this.ctx.allocStorage(M, N, 'i32');
    const bindings = [a, b, out].map((s) => this.ctx.whole(s, 'matmulInt8').binding);
    // subgroup-matrix kernels count K in int8 values, dot4 in words of four
    const params = new Params()
      .u(M)
      .u(N)
      .u(sgm ? K : K / 4);
    const [bm, bn] = sgm ? sharedTileShape(this.sgmTile) : [16 * this.dot4Tile.t, 16 * this.dot4Tile.t];
    this.ctx.dispatch(sgm ?? dot4Kernel(this.dot4Tile), params, bindings, [
      Math.ceil(N / bn),
      Math.ceil(M / bm),
    ]);
    return out;
  }

  private gemv(a: Storage, b: Storage): Storage {
    const [M, N, K] = [a.rows, b.rows, a.cols];
    const out = this.ctx.allocStorage(M, N, 'i32');
    if (M === 0 || N === 0) return out;
    const bindings = [a, b, out].map((s) => this.ctx.whole(s, 'matmulInt8').binding);
    const params = new Params()
      .u(M)
      .u(N)
      .u(K / 4);
    const chunks = int8Chunks(this.ctx.gemv, K / 4, [0, 0]);
    this.ctx.dispatch(
      dot4GemvKernel(M, this.ctx.gemv, chunks),
      params,
      bindings,
      grid2(Math.ceil(N / GEMV_COLS)),
    );
    return out;
  }

  /** c[M,N] (i32) = a[M,K] b[N,K]^T for i8 a and b. */
  run(a: Storage, b: Storage): Storage {
    const [M, N, K] = [a.rows, b.rows, a.cols];
    if (a.dtype !== 'i8' || b.dtype !== 'i8')
      fail(`matmulInt8: expected i8 operands, got ${a.dtype} and ${b.dtype}`);
    if (b.cols !== K) fail(`matmulInt8: a is ${M}x${K} but b is ${N}x${b.cols}`);
    if (K % 4 !== 0) fail(`matmulInt8: K = ${K} must be a multiple of 4`);
    if (M <= GEMV_MAX_M) return this.gemv(a, b);
    const t = this.sgmTile;
    const [bm, bn] = sharedTileShape(t);
    const useSgm =
      this.sgm &&
      (t.style === 'direct'
        ? M % 16 === 0 && N % 16 === 0 && K % 32 === 0
        : M % bm === 0 && N % bn === 0 && K % t.bk === 0);
    return this.dispatch(useSgm ? this.sgm : undefined, a, b);
  }
}

const EPILOGUE_WG = 256;

const epilogueKernel: Kernel = {
  key: 'int8-epilogue',
  bindings: ['uniform', 'read', 'read', 'read', 'read', 'write'],
  code: () => `
struct P { n: u32, N: u32, hasBias: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> C: array<i32>;
@group(0) @binding(2) var<storage, read> RS: array<f32>;
@group(0) @binding(3) var<storage, read> CS: array<f32>;
@group(0) @binding(4) var<storage, read> B: array<f32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
${FLAT_WG}
@compute @workgroup_size(${EPILOGUE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flatWg(wid, nwg) * ${EPILOGUE_WG}u + lid;
  if (i >= p.n) { return; }
  let m = i / p.N;
  let n = i % p.N;
  var y = ${scaledSum('C[i]', 'RS[m]', 'CS[n]')};
  if (p.hasBias != 0u) { y += B[n]; }
  Y[i] = y;
}`,
};

/** y[m, n] = f32(acc[m, n]) * rowScales[m] * colScales[n] (+ bias[n]), f32 [M, N]. */
export function scaleInt32(
  ctx: GpuContext,
  acc: Storage,
  rowScales: Storage,
  colScales: Storage,
  bias: Storage | undefined,
): Storage {
  const [M, N] = [acc.rows, acc.cols];
  if (rowScales.rows * rowScales.cols !== M || colScales.rows * colScales.cols !== N)
    fail(
      `scaleInt32: ${rowScales.rows * rowScales.cols} row and ${colScales.rows * colScales.cols} column scales for ${M}x${N}`,
    );
  const out = ctx.allocStorage(M, N, 'f32');
  if (M * N === 0) return out;
  const w = (s: Storage) => ctx.whole(s, 'scaleInt32').binding;
  ctx.dispatch(
    epilogueKernel,
    new Params()
      .u(M * N)
      .u(N)
      .u(bias ? 1 : 0),
    [w(acc), w(rowScales), w(colScales), bias ? w(bias) : ctx.dummy(), w(out)],
    grid2(Math.ceil((M * N) / EPILOGUE_WG)),
  );
  return out;
}
