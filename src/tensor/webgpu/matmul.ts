/**
 * linear (y = x w^T + b) as a tiled f32 GEMM, and the embedding gather.
 *
 * The GEMM: a 16x16 workgroup computes a BM x BN tile of y, each thread a TM x TN block of it
 * (read from shared memory as vec4s), K walked in steps of BK through shared memory. With
 * `prefetch` (the default) shared memory holds two stages: each thread fetches its part of the next
 * k step into registers before the current product and stores it into the other stage after it,
 * so global loads overlap the arithmetic and one barrier per step suffices (25.7 vs 23.1 TFLOP/s on
 * the H100 at 4096^3, BENCHMARKS.md).
 * 16-bit weights stay packed two per u32 and are widened while the tile is loaded. A weight (or
 * embedding table) larger than one storage binding is walked in row windows: each window of weight
 * rows produces its own columns of y.
 */
import { fail } from '../../errors.ts';
import type { DType } from '../tensor.ts';
import {
  type GemvTuning,
  type GpuContext,
  grid2,
  type Kernel,
  kernelOnce,
  Params,
  type Storage,
} from './context.ts';
import {
  arrayType,
  chunkArrayType,
  chunkLoadFns,
  chunksFit,
  FLAT_WG,
  f32Literal,
  loadFn,
  range,
  stridedLoop,
} from './wgsl.ts';

export interface GemmTile {
  /** outputs per thread along M and N (tile = 16 * tm x 16 * tn) */
  tm: number;
  tn: number;
  bk: number;
  /** two shared-memory stages; the next k step is fetched into registers during the product */
  prefetch?: boolean;
}

export const DEFAULT_TILE: GemmTile = { tm: 8, tn: 8, bk: 8, prefetch: true };

/** The tile loads of one k step: global -> registers (fetch) and registers -> shared memory (stash). */
function tileLoads(t: GemmTile) {
  const BM = 16 * t.tm;
  const BN = 16 * t.tn;
  const { bk: BK } = t;
  const one = (r: number, side: 'A' | 'B', k0: string) => {
    const [first, limit, ld, off] =
      side === 'A' ? ['m0', 'p.M', 'ldX', 'p.xOff'] : ['nb', 'p.N', 'ldW', 'p.wOff'];
    return `{ let idx = t + ${r * 256}u; let row = idx / ${BK}u; let kk = idx % ${BK}u; r${side}${r} = 0.0; if (${first} + row < ${limit} && ${k0} + kk < p.K) { r${side}${r} = ${ld}(${off} + (${first} + row) * p.K + ${k0} + kk); } }`;
  };
  const put = (r: number, side: 'A' | 'B', stage: string) => {
    const [size, tile] = side === 'A' ? [BM, 'As'] : [BN, 'Bs'];
    return `{ let idx = t + ${r * 256}u; let row = idx / ${BK}u; let kk = idx % ${BK}u; ${tile}[${stage} * ${(BK * size) / 4}u + (kk * ${size}u + row) / 4u][row % 4u] = r${side}${r}; }`;
  };
  const loadsA = (BM * BK) / 256;
  const loadsB = (BN * BK) / 256;
  const each = (f: (r: number, side: 'A' | 'B') => string) =>
    [
      ...Array.from({ length: loadsA }, (_, r) => f(r, 'A')),
      ...Array.from({ length: loadsB }, (_, r) => f(r, 'B')),
    ].join('\n    ');
  return {
    decl: each((r, side) => `var r${side}${r} = 0.0;`),
    fetch: (k0: string) => each((r, side) => one(r, side, k0)),
    stash: (stage: string) => each((r, side) => put(r, side, stage)),
  };
}

/** Packed integer weights: codes of `codeBits` in u32 words, scales/zeros per group of `group`. */
export interface PackedLayout {
  codeBits: 4 | 8;
  group: number;
  /** a per-column group index array is bound (GPTQ act_order) */
  groupOf: boolean;
  /** IQ4's non-linear grid: codes index these levels (levels[code] - zero) * scale */
  levels?: Int8Array;
  /** every group's zero point, where they are all the same (no zeros array is bound) */
  zero?: number;
  /** the scales are f16, two to a u32 (where f16 holds every one exactly: Q4_0, Q8_0, IQ4_NL's d) */
  scalesF16?: boolean;
}

/** A group's scale: the scales array `S` (f32, or f16 pairs) at group `g`. */
export function scaleOf(pk: PackedLayout, S: string, g: string): string {
  return pk.scalesF16 ? `unpack2x16float(${S}[(${g}) >> 1u])[(${g}) & 1u]` : `${S}[${g}]`;
}

/** A group's zero point: the layout's one value, or the zeros array `Z` at group `g`. */
export function zeroOf(pk: PackedLayout, Z: string, g: string): string {
  return pk.zero === undefined ? `${Z}[${g}]` : f32Literal(pk.zero);
}

/** WGSL names a packed weight's arrays are declared under. */
export interface PackedNames {
  S: string;
  Z: string;
}

/**
 * The arrays a packed weight binds after its codes, in binding order, as [name, WGSL element type]:
 * scales (f32, or f16 pairs in u32), zeros unless one value, g_idx (GI).
 */
export function packedArrays(pk: PackedLayout, names: PackedNames = { S: 'S', Z: 'Z' }): string[][] {
  return [
    [names.S, pk.scalesF16 ? 'u32' : 'f32'],
    ...(pk.zero === undefined ? [[names.Z, 'f32']] : []),
    ...(pk.groupOf ? [['GI', 'i32']] : []),
  ];
}

/** Read-only storage declarations of `arrays` ([name, WGSL element type]) from binding `first` on. */
export function storageDecls(arrays: string[][], first: number): string {
  return arrays
    .map(([name, t], i) => `@group(0) @binding(${first + i}) var<storage, read> ${name}: array<${t}>;`)
    .join('\n');
}

/**
 * A grid of 16 int8 levels as a WGSL function of the code: the levels packed four to a u32 constant and
 * picked with selects and a sign-extending extractBits, so the GEMM never indexes an array at run time
 * (a private array would sit in slow local memory).
 */
export function levelTable(pk: PackedLayout): string {
  if (!pk.levels) return '';
  if (pk.levels.length !== 16)
    fail(`packed weights: a level grid of ${pk.levels.length} levels (16 expected)`);
  const words = Array.from({ length: 4 }, (_, w) => {
    const bytes = [0, 1, 2, 3].map((b) => (pk.levels![4 * w + b] & 0xff) << (8 * b));
    return `${(bytes.reduce((a, b) => a | b, 0) >>> 0).toString()}u`;
  });
  return `fn level(code: u32) -> f32 {
  let pair = select(vec2<u32>(${words[0]}, ${words[1]}), vec2<u32>(${words[2]}, ${words[3]}), code >= 8u);
  let word = select(pair.x, pair.y, (code & 4u) != 0u);
  return f32(extractBits(bitcast<i32>(word), (code & 3u) * 8u, 8u));
}`;
}
const codeValue = (pk: PackedLayout, code: string) => (pk.levels ? `level(${code})` : `f32(${code})`);

/** ldW for packed codes: element i = n * K + k of the (whole, unwindowed) weight, decoded. */
function packedLoadFn(pk: PackedLayout): string {
  const per = 32 / pk.codeBits;
  return `fn ldW(i: u32) -> f32 {
  let n = i / p.K;
  let code = (bitcast<u32>(W[i / ${per}u]) >> ((i % ${per}u) * ${pk.codeBits}u)) & ${(1 << pk.codeBits) - 1}u;
  let k = i - n * p.K;
  let g = n * (p.K / ${pk.group}u) + ${pk.groupOf ? 'u32(GI[k])' : `k / ${pk.group}u`};
  return (${codeValue(pk, 'code')} - ${zeroOf(pk, 'Z', 'g')}) * ${scaleOf(pk, 'S', 'g')};
}`;
}

/**
 * Bindings of both linear kernels: params, x, w, bias, y, then packed scales/zeros/group index, then
 * the residual added to y (`residual`).
 */
function linearBindings(pk: PackedLayout | undefined, residual: boolean): Kernel['bindings'] {
  return [
    'uniform',
    'read',
    'read',
    'read',
    'write',
    ...(pk ? packedArrays(pk).map(() => 'read' as const) : []),
    ...(residual ? (['read'] as const) : []),
  ];
}

/**
 * The declarations both linear kernels share (their Params are filled by `linear`). `chunks` (GEMV
 * only): x and dense weights are bound four values an element (chunkArrayType) with ldX4 / ldW4.
 */
function linearHeader(
  dx: DType,
  dw: DType,
  db: DType,
  pk: PackedLayout | undefined,
  residual: boolean,
  chunks = false,
): string {
  const resBinding = linearBindings(pk, false).length;
  const wChunks = chunks && !pk;
  return `
struct P { M: u32, N: u32, K: u32, xOff: u32, wOff: u32, yOff: u32, ldy: u32, n0: u32, bOff: u32, hasBias: u32, rOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${chunks ? chunkArrayType(dx) : arrayType(dx)}>;
@group(0) @binding(2) var<storage, read> W: array<${wChunks ? chunkArrayType(dw) : arrayType(dw)}>;
@group(0) @binding(3) var<storage, read> B: array<${arrayType(db)}>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
${pk ? storageDecls(packedArrays(pk), 5) : ''}
${residual ? `@group(0) @binding(${resBinding}) var<storage, read> R: array<f32>;` : ''}
${pk ? levelTable(pk) : ''}
${chunks ? chunkLoadFns('ldX', 'X', dx) : loadFn('ldX', 'X', dx)}
${pk ? packedLoadFn(pk) : wChunks ? chunkLoadFns('ldW', 'W', dw) : loadFn('ldW', 'W', dw)}
${loadFn('ldB', 'B', db)}`;
}

/** Stores v, plus the bias and the residual where there are, at `at` (an index within y's window). */
function storeY(residual: boolean, at: string): string {
  return `if (p.hasBias != 0u) { v += ldB(p.bOff + n); }${residual ? `\n      v = v + R[p.rOff + ${at}];` : ''}
      Y[p.yOff + ${at}] = v;`;
}

/** IQ4 level grids' key text, by grid (a packed layout is rebuilt per call; its levels are not). */
const levelKeys = new WeakMap<Int8Array, string>();

export function weightKey(dw: DType, pk?: PackedLayout): string {
  if (!pk) return dw;
  let levels = pk.levels ? levelKeys.get(pk.levels) : '';
  if (levels === undefined) {
    levels = `lv${pk.levels!.join('_')}`;
    levelKeys.set(pk.levels!, levels);
  }
  return `packed${pk.codeBits}g${pk.group}${pk.groupOf ? 'i' : ''}${levels}${pk.zero === undefined ? '' : `z${pk.zero}`}${pk.scalesF16 ? 's16' : ''}`;
}

/** Rows of x up to which `linear` runs the matrix-vector kernel (decoding: one token at a time). */
export const GEMV_MAX_M = 4;
/** threads sharing one output column's dot products, and output columns per workgroup */
export const GEMV_LANES = 32;
export const GEMV_COLS = 8;
/** consecutive k a thread takes per step where x and the weights are read one value at a time */
const GEMV_KV = 8;

/**
 * Whether a GEMV reads x in chunks of four: an f32 x, K and every element offset multiples of 4, and
 * dense weights (`dw`; undefined for packed codes) of a dtype chunkArrayType binds.
 */
export function gemvChunks(t: GemvTuning, dx: DType, K: number, offsets: number[], dw?: DType): boolean {
  return t.chunks && dx === 'f32' && chunksFit(K, offsets, dw === undefined ? [] : [dw]);
}

/** Unrolled steps for M rows: fewer as M grows, so the loaded x chunks stay in registers. */
export const unrollFor = (t: GemvTuning, M: number) => Math.max(1, Math.floor(t.unroll / M));

/**
 * The entry point of a matrix-vector kernel: thread (c, lane) accumulates `acc[m]` for output column n
 * with `loop`, the lanes' partial sums are added in shared memory, and lane m < M runs `store` with the
 * sum for row m in red[c * LANES * W + lane] (W = `width` sums a thread, M by default; a kernel with two
 * weights keeps the second's at acc[M + m], red[c * LANES * W + M + lane]). `column` declares n and
 * says whether the thread has one (by default the workgroup's GEMV_COLS consecutive columns below
 * p.N); `prologue` runs before the loop in every thread (uniform control flow: barriers allowed).
 * Needs FLAT_WG.
 */
export function gemvMain(
  acc: 'f32' | 'i32',
  M: number,
  loop: string,
  store: string,
  width = M,
  column = { decl: `let n = flatWg(wid, nwg) * ${GEMV_COLS}u + c;`, active: 'n < p.N' },
  prologue = '',
): string {
  const L = GEMV_LANES;
  return `${FLAT_WG}
var<workgroup> red: array<${acc}, ${GEMV_COLS * L * width}>;
@compute @workgroup_size(${GEMV_COLS * L})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let c = lid / ${L}u;
  let lane = lid % ${L}u;
  ${column.decl}${prologue}
  var acc: array<${acc}, ${width}>;
  if (${column.active}) {${loop}
  }
  for (var m = 0u; m < ${width}u; m++) { red[(c * ${L}u + lane) * ${width}u + m] = acc[m]; }
  for (var w = ${L / 2}u; w > 0u; w = w >> 1u) {
    workgroupBarrier();
    if (lane < w) {
      for (var m = 0u; m < ${width}u; m++) {
        red[(c * ${L}u + lane) * ${width}u + m] += red[(c * ${L}u + lane + w) * ${width}u + m];
      }
    }
  }
  workgroupBarrier();
  if (lane < ${M}u && ${column.active}) {
    ${store}
  }
}`;
}

/** The names a GEMV loop reads one weight through, and where its sums go in acc. */
export interface GemvWeight {
  /** dense: the load function (chunks: and `${ld}4`); packed: the code, scale and zero arrays */
  ld: string;
  W: string;
  S: string;
  Z: string;
  /** the weight window's first element */
  off: string;
  /** index of row 0's sum in acc */
  acc: number;
}

const ONE_WEIGHT: GemvWeight = { ld: 'ldW', W: 'W', S: 'S', Z: 'Z', off: 'p.wOff', acc: 0 };

/** WGSL of x[m, k] in a GEMV loop: ldX over x's window. */
export type XAt = (m: string, k: string) => string;
/** WGSL of the vec4 x[m, 4q .. 4q + 3] in a chunked GEMV loop: ldX4 over x's window. */
export type XChunk = (m: string, q: string) => string;
/** How a GEMV loop reads x: a value at a time, or (chunked) four. */
export type XRead = { at: XAt } | { chunk: XChunk };
const X_PLAIN: XAt = (m, k) => `ldX(p.xOff + ${m} * p.K + ${k})`;
const X_CHUNK: XChunk = (m, q) => `ldX4(p.xOff / 4u + ${m} * (p.K / 4u) + ${q})`;
/** x read plainly, in chunks or not */
export const plainX = (chunks: boolean): XRead => (chunks ? { chunk: X_CHUNK } : { at: X_PLAIN });

/** The loop of one dense weight: chunked where x is, else a value at a time. */
export function gemvDenseLoop(M: number, t: GemvTuning, wt: GemvWeight, x: XRead): string {
  return 'chunk' in x ? gemvChunkLoop(M, t, wt, x.chunk) : gemvScalarLoop(M, wt, x.at);
}

function gemvScalarLoop(M: number, wt: GemvWeight, xAt: XAt): string {
  return `
    let wRow = ${wt.off} + n * p.K;
    for (var k0 = lane * ${GEMV_KV}u; k0 < p.K; k0 += ${GEMV_LANES * GEMV_KV}u) {
      for (var e = 0u; e < ${GEMV_KV}u; e++) {
        let k = k0 + e;
        if (k < p.K) {
          let w = ${wt.ld}(wRow + k);
          for (var m = 0u; m < ${M}u; m++) { acc[${wt.acc}u + m] += w * ${xAt('m', 'k')}; }
        }
      }
    }`;
}

/** WGSL of a GEMV lane's loop over `count` items (chunks of four values, or code words): stridedLoop over GEMV_LANES lanes. */
export function laneLoop(
  count: string,
  steps: number,
  load: (j: number, item: string) => string,
  use: (j: number) => string,
): string {
  return stridedLoop({ count, lane: 'lane', lanes: GEMV_LANES, steps, load, use });
}

/**
 * Lane l sums chunks l, l + LANES, ... of four values (laneLoop): a subgroup's loads of x and of the
 * weight each cover consecutive bytes (scalar loads 32 bytes apart made every load touch eight cache
 * lines).
 */
function gemvChunkLoop(M: number, t: GemvTuning, wt: GemvWeight, x4: XChunk): string {
  return `
    let wq = (${wt.off} + n * p.K) / 4u;
    let K4 = p.K / 4u;${laneLoop(
      'K4',
      unrollFor(t, M),
      (j, q) => `let w${j} = ${wt.ld}4(wq + ${q});
      ${range(M)
        .map((m) => `let x${j}_${m} = ${x4(`${m}u`, q)};`)
        .join(' ')}`,
      (j) =>
        range(M)
          .flatMap((m) =>
            ['x', 'y', 'z', 'w'].map((c) => `acc[${wt.acc + m}] += w${j}.${c} * x${j}_${m}.${c};`),
          )
          .join(' '),
    )}`;
}

/**
 * Packed codes, a word at a time: one load, one scale/zero lookup per word (groups are whole words
 * unless a g_idx maps each column), shifts instead of ldW's per-element divisions. Lanes take
 * consecutive words (laneLoop), so a subgroup's weight loads cover consecutive bytes; chunked, its x
 * loads do too. The sums are the same chunked or not, for any unroll.
 */
export function gemvPackedLoop(pk: PackedLayout, M: number, t: GemvTuning, wt: GemvWeight, x: XRead): string {
  const per = 32 / pk.codeBits;
  const wordGroups = !pk.groupOf && pk.group % per === 0;
  const group = (k: string) =>
    `n * (p.K / ${pk.group}u) + ${pk.groupOf ? `u32(GI[${k}])` : `${k} / ${pk.group}u`}`;
  const load = (j: number, kw: string) =>
    `let word${j} = bitcast<u32>(${wt.W}[wRow + ${kw}]);
      let k${j} = ${kw} * ${per}u;${
        'chunk' in x
          ? range(M)
              .flatMap((m) =>
                range(per / 4).map(
                  (c) => `\n      let x${j}_${m}_${c} = ${x.chunk(`${m}u`, `${kw} * ${per / 4}u + ${c}u`)};`,
                ),
              )
              .join('')
          : ''
      }`;
  const xValue = (j: number, m: number, e: number) =>
    'chunk' in x ? `x${j}_${m}_${e >> 2}[${e & 3}]` : x.at(`${m}u`, `k${j} + ${e}u`);
  const scaleZero = (k: string) => `let g = ${group(k)};
        let s = ${scaleOf(pk, wt.S, 'g')};
        let z = ${zeroOf(pk, wt.Z, 'g')};`;
  const use = (j: number) => {
    const elements = range(per).map(
      (e) => `{${
        wordGroups
          ? ''
          : `
        ${scaleZero(`k${j} + ${e}u`)}`
      }
        let w = (${codeValue(pk, `(word${j} >> ${e * pk.codeBits}u) & ${(1 << pk.codeBits) - 1}u`)} - z) * s;
        ${range(M)
          .map((m) => `acc[${wt.acc + m}] += w * ${xValue(j, m, e)};`)
          .join(' ')}
      }`,
    );
    return `${wordGroups ? scaleZero(`k${j}`) : ''}
      ${elements.join('\n      ')}`;
  };
  return `
    let words = p.K / ${per}u;
    let wRow = ${wt.off} / ${per}u + n * words;${laneLoop('words', unrollFor(t, M), load, use)}`;
}

/**
 * y = x w^T for a few rows of x: memory-bound on the weight, so each weight is read once, by many
 * workgroups at once (GEMV_COLS outputs each), every output's K split over GEMV_LANES threads whose
 * partial sums meet in shared memory. The tiled GEMM would give a 1-row x only N / 128 workgroups.
 */
function gemvKernel(
  dx: DType,
  dw: DType,
  db: DType,
  M: number,
  pk: PackedLayout | undefined,
  residual: boolean,
  t: GemvTuning,
  chunks: boolean,
): Kernel {
  const L = GEMV_LANES;
  const wt = ONE_WEIGHT;
  return kernelOnce(
    `gemv:${dx}:${weightKey(dw, pk)}:${db}:${M}${residual ? ':res' : ''}:${gemvKey(t, chunks)}`,
    (key) => ({
      key,
      bindings: linearBindings(pk, residual),
      code: () => `${linearHeader(dx, dw, db, pk, residual, chunks)}
${gemvMain(
  'f32',
  M,
  pk ? gemvPackedLoop(pk, M, t, wt, plainX(chunks)) : gemvDenseLoop(M, t, wt, plainX(chunks)),
  `var v = red[c * ${L * M}u + lane];
    ${storeY(residual, 'lane * p.ldy + p.n0 + n')}`,
)}`,
    }),
  );
}

/** The part of a GEMV kernel's key its reading sets. */
export const gemvKey = (t: GemvTuning, chunks: boolean) => `${chunks ? 'c' : 's'}${t.unroll}`;

function gemmKernel(
  dx: DType,
  dw: DType,
  db: DType,
  t: GemmTile,
  pk: PackedLayout | undefined,
  residual: boolean,
): Kernel {
  return {
    key: `gemm:${dx}:${weightKey(dw, pk)}:${db}:${t.tm}x${t.tn}x${t.bk}${t.prefetch ? ':prefetch' : ''}${residual ? ':res' : ''}`,
    bindings: linearBindings(pk, residual),
    code: () => gemmCode(dx, dw, db, t, pk, residual),
  };
}

/** gemmKernel's WGSL, built when the pipeline is compiled (a prefill asks for the kernel every linear). */
function gemmCode(...args: Parameters<typeof gemmKernel>): string {
  const [dx, dw, db, t, pk, residual] = args;
  const BM = 16 * t.tm;
  const BN = 16 * t.tn;
  const { bk: BK } = t;
  const VM = t.tm / 4;
  const VN = t.tn / 4;
  const stages = t.prefetch ? 2 : 1;
  const loads = tileLoads(t);
  const product = (stage: string) => `
    for (var kk = 0u; kk < ${BK}u; kk++) {
      var a: array<vec4<f32>, ${VM}>;
      var b: array<vec4<f32>, ${VN}>;
      for (var i = 0u; i < ${VM}u; i++) { a[i] = As[${stage} * ${(BK * BM) / 4}u + kk * ${BM / 4}u + l.y * ${VM}u + i]; }
      for (var j = 0u; j < ${VN}u; j++) { b[j] = Bs[${stage} * ${(BK * BN) / 4}u + kk * ${BN / 4}u + l.x * ${VN}u + j]; }
      for (var i = 0u; i < ${t.tm}u; i++) {
        let ai = a[i / 4u][i % 4u];
        for (var j = 0u; j < ${VN}u; j++) { acc[i * ${VN}u + j] += ai * b[j]; }
      }
    }`;
  const loop = t.prefetch
    ? `
  ${loads.fetch('0u')}
  ${loads.stash('0u')}
  workgroupBarrier();
  var stage = 0u;
  for (var k0 = 0u; k0 < p.K; k0 += ${BK}u) {
    let more = k0 + ${BK}u < p.K;
    if (more) {
    ${loads.fetch(`(k0 + ${BK}u)`)}
    }${product('stage')}
    if (more) {
    ${loads.stash('(1u - stage)')}
    }
    workgroupBarrier();
    stage = 1u - stage;
  }`
    : `
  for (var k0 = 0u; k0 < p.K; k0 += ${BK}u) {
    ${loads.fetch('k0')}
    ${loads.stash('0u')}
    workgroupBarrier();${product('0u')}
    workgroupBarrier();
  }`;
  return `${linearHeader(dx, dw, db, pk, residual)}
// k-major tiles: As[stage][kk][row], Bs[stage][kk][col], four consecutive rows/cols per vec4
var<workgroup> As: array<vec4<f32>, ${(stages * BK * BM) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(stages * BK * BN) / 4}>;
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let t = l.y * 16u + l.x;
  let m0 = wid.y * ${BM}u;
  let nb = wid.x * ${BN}u;
  var acc: array<vec4<f32>, ${t.tm * VN}>;
  ${loads.decl}${loop}
  ${gemmStores(t, residual)}
}`;
}

/**
 * The GEMM's stores of its tm x tn outputs, unrolled so that every acc index is a constant: with a loop's
 * run-time indices a compiler may move the whole accumulator array to (slow) local memory.
 */
function gemmStores(t: GemmTile, residual: boolean): string {
  const rows = range(t.tm).map((i) => {
    const cols = range(t.tn).map(
      (j) => `{ let n = nb + l.x * ${t.tn}u + ${j}u;
      if (n < p.N) {
      var v = acc[${i * (t.tn / 4) + (j >> 2)}].${'xyzw'[j & 3]};
      ${storeY(residual, 'm * p.ldy + p.n0 + n')}
    } }`,
    );
    return `{ let m = m0 + l.y * ${t.tm}u + ${i}u;
  if (m < p.M) {
    ${cols.join('\n    ')}
  } }`;
  });
  return rows.join('\n  ');
}

/** Packed weight storages for `linear` (see PackedWeight in tensor.ts). */
export interface PackedStorages extends PackedLayout {
  scales: Storage;
  /** absent where every group's zero point is `zero` */
  zeros?: Storage;
  groupIndex?: Storage;
  rows: number;
}

/**
 * y[M, N] = x[M, K] w[N, K]^T (+ bias[N]) (+ residual[M, N], added last). With `packed`, w holds
 * integer codes in u32 words that the kernel decodes with packed.scales / zeros; the packed weight
 * must fit one binding.
 */
export function linear(
  ctx: GpuContext,
  x: Storage,
  w: Storage,
  bias: Storage | undefined,
  tile: GemmTile = DEFAULT_TILE,
  packed?: PackedStorages,
  residual?: Storage,
): Storage {
  const M = x.rows;
  const K = x.cols;
  const N = packed ? packed.rows : w.rows;
  if (bias && bias.rows * bias.cols !== N)
    fail(`linear: bias of ${bias.rows * bias.cols} values for ${N} outputs`);
  const y = ctx.allocStorage(M, N, 'f32');
  if (M === 0 || N === 0) return y;
  const gemv = M <= GEMV_MAX_M;
  const db = bias?.dtype ?? 'f32';
  if (residual && (residual.rows !== M || residual.cols !== N))
    fail(`linear: a ${residual.rows}x${residual.cols} residual for a ${M}x${N} output`);
  const res = residual !== undefined;
  const kernel = (rows: number, chunks: boolean) =>
    gemv
      ? gemvKernel(x.dtype, w.dtype, db, rows, packed, res, ctx.gemv, chunks)
      : gemmKernel(x.dtype, w.dtype, db, tile, packed, res);
  const BM = 16 * tile.tm;
  const BN = 16 * tile.tn;
  const xParts = (residual ? [x, y, residual] : [x, y]).map((s) => ({ s, row0: 0 }));
  const wSegs = packed
    ? [{ r0: 0, n: N, w: [ctx.whole(w, 'packed linear'), ...(bias ? [ctx.whole(bias, 'linear bias')] : [])] }]
    : ctx.segments(
        N,
        (bias ? [w, bias] : [w]).map((s) => ({ s, row0: 0 })),
        1,
        'linear',
      );
  const extra = packed
    ? [packed.scales, packed.zeros, packed.groupIndex]
        .filter((s) => s !== undefined)
        .map((s) => ctx.whole(s, 'packed linear').binding)
    : [];
  for (const xs of ctx.segments(M, xParts, 1, 'linear')) {
    const [wx, wy, wr] = xs.w;
    for (const ws of wSegs) {
      const [ww, wb] = ws.w;
      const params = new Params()
        .u(xs.n)
        .u(ws.n)
        .u(K)
        .u(wx.off)
        .u(ww.off)
        .u(wy.off)
        .u(N)
        .u(ws.r0)
        .u(wb ? wb.off : 0)
        .u(bias ? 1 : 0)
        .u(wr ? wr.off : 0);
      const grid = gemv ? grid2(Math.ceil(ws.n / GEMV_COLS)) : [Math.ceil(ws.n / BN), Math.ceil(xs.n / BM)];
      const chunks =
        gemv &&
        gemvChunks(ctx.gemv, x.dtype, K, packed ? [wx.off] : [wx.off, ww.off], packed ? undefined : w.dtype);
      ctx.dispatch(
        kernel(xs.n, chunks),
        params,
        [
          wx.binding,
          ww.binding,
          wb ? wb.binding : ctx.dummy(),
          wy.binding,
          ...extra,
          ...(wr ? [wr.binding] : []),
        ],
        grid,
      );
    }
  }
  return y;
}

function gatherKernel(dt: DType): Kernel {
  return {
    key: `gather:${dt}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { n: u32, d: u32, tOff: u32, t0: u32, tRows: u32, oOff: u32, idOff: u32, single: i32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> T: array<${arrayType(dt)}>;
@group(0) @binding(2) var<storage, read> IDS: array<i32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
${loadFn('ldT', 'T', dt)}
${FLAT_WG}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flatWg(wid, nwg) * 256u + lid;
  if (e >= p.n * p.d) { return; }
  let r = e / p.d;
  // single >= 0: one id, passed in the parameters (a decode step then writes no host data buffer)
  var id = u32(p.single) - p.t0;
  if (p.single < 0) { id = u32(IDS[p.idOff + r]) - p.t0; }
  if (id >= p.tRows) { return; }
  O[p.oOff + e] = ldT(p.tOff + id * p.d + e % p.d);
}`,
  };
}

/** table[V, D] rows gathered by ids; each window of table rows fills the ids it holds. */
export function embedding(ctx: GpuContext, table: Storage, ids: Int32Array): Storage {
  const V = table.rows;
  const D = table.cols;
  for (const id of ids)
    if (id < 0 || id >= V) fail(`embedding: token id ${id} outside the vocabulary (${V})`);
  const out = ctx.allocStorage(ids.length, D, 'f32');
  if (ids.length === 0 || D === 0) return out;
  const single = ids.length === 1 ? ids[0] : -1;
  const idBinding =
    single >= 0 ? ctx.dummy() : ctx.hostData(new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength));
  const k = gatherKernel(table.dtype);
  const tSegs = ctx.segments(V, [{ s: table, row0: 0 }], 1, 'embedding');
  for (const os of ctx.segments(ids.length, [{ s: out, row0: 0 }], 1, 'embedding')) {
    for (const ts of tSegs) {
      const params = new Params()
        .u(os.n)
        .u(D)
        .u(ts.w[0].off)
        .u(ts.r0)
        .u(ts.n)
        .u(os.w[0].off)
        .u(os.r0)
        .i(single);
      ctx.dispatch(
        k,
        params,
        [ts.w[0].binding, idBinding, os.w[0].binding],
        grid2(Math.ceil((os.n * D) / 256)),
      );
    }
  }
  return out;
}
