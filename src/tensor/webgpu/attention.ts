/**
 * Causal grouped-query attention, flash style: a workgroup takes BQ consecutive queries of one
 * (sequence, head), one query per thread, and streams the keys/values it can see through shared
 * memory in tiles, keeping a running max / sum (online softmax) so scores never reach memory.
 */
import { fail } from '../../errors.ts';
import type { AttentionShape, CachedAttentionShape, DType } from '../tensor.ts';
import { type GpuContext, type Kernel, Params, type Storage, wholeBuffer } from './context.ts';
import {
  arrayType,
  chunkArrayType,
  chunkLoadFns,
  chunksFit,
  loadFn,
  NEG_BIG,
  range,
  stridedLoop,
} from './wgsl.ts';

const BQ = 64;

/** Keys per tile: K and V tiles together fill at most 16 KiB of shared memory. */
function keysPerTile(headDim: number): number {
  return Math.max(1, Math.min(32, Math.floor(16384 / (8 * headDim))));
}

function attentionKernel(dq: DType, dk: DType, dv: DType, headDim: number): Kernel {
  const DH = headDim;
  const BKV = keysPerTile(DH);
  return {
    key: `attention:${dq}:${dk}:${dv}:${DH}`,
    bindings: ['uniform', 'read', 'read', 'read', 'write'],
    code: () => `
struct P { seqLen: u32, H: u32, Hkv: u32, qOff: u32, kOff: u32, vOff: u32, oOff: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> Q: array<${arrayType(dq)}>;
@group(0) @binding(2) var<storage, read> K: array<${arrayType(dk)}>;
@group(0) @binding(3) var<storage, read> V: array<${arrayType(dv)}>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
var<workgroup> Ks: array<f32, ${BKV * DH}>;
var<workgroup> Vs: array<f32, ${BKV * DH}>;
${loadFn('ldQ', 'Q', dq)}
${loadFn('ldK', 'K', dk)}
${loadFn('ldV', 'V', dv)}
@compute @workgroup_size(${BQ})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wid.y;
  let b = wid.z;
  let kvh = h / (p.H / p.Hkv);
  let q0 = wid.x * ${BQ}u;
  let qi = q0 + lid;
  let live = qi < p.seqLen;
  let qRow = p.qOff + (b * p.seqLen + min(qi, p.seqLen - 1u)) * p.H * ${DH}u + h * ${DH}u;
  var q: array<f32, ${DH}>;
  var acc: array<f32, ${DH}>;
  for (var d = 0u; d < ${DH}u; d++) {
    q[d] = ldQ(qRow + d);
    acc[d] = 0.0;
  }
  var m = -3.0e38;
  var l = 0.0;
  let kvStride = p.Hkv * ${DH}u;
  let kEnd = min(p.seqLen, q0 + ${BQ}u);
  for (var k0 = 0u; k0 < kEnd; k0 += ${BKV}u) {
    for (var i = lid; i < ${BKV * DH}u; i += ${BQ}u) {
      let j = k0 + i / ${DH}u;
      var kv = 0.0;
      var vv = 0.0;
      if (j < p.seqLen) {
        let o = (b * p.seqLen + j) * kvStride + kvh * ${DH}u + i % ${DH}u;
        kv = ldK(p.kOff + o);
        vv = ldV(p.vOff + o);
      }
      Ks[i] = kv;
      Vs[i] = vv;
    }
    workgroupBarrier();
    if (live && k0 <= qi) {
      let n = min(${BKV}u, qi + 1u - k0);
      var s: array<f32, ${BKV}>;
      var tileMax = -3.0e38;
      for (var j = 0u; j < n; j++) {
        var dot = 0.0;
        for (var d = 0u; d < ${DH}u; d++) { dot += q[d] * Ks[j * ${DH}u + d]; }
        s[j] = dot * p.scale;
        tileMax = max(tileMax, s[j]);
      }
      let mNew = max(m, tileMax);
      let corr = exp(m - mNew);
      l = l * corr;
      for (var d = 0u; d < ${DH}u; d++) { acc[d] = acc[d] * corr; }
      for (var j = 0u; j < n; j++) {
        let e = exp(s[j] - mNew);
        l += e;
        for (var d = 0u; d < ${DH}u; d++) { acc[d] += e * Vs[j * ${DH}u + d]; }
      }
      m = mNew;
    }
    workgroupBarrier();
  }
  if (live) {
    let inv = 1.0 / l;
    let oRow = p.oOff + (b * p.seqLen + qi) * p.H * ${DH}u + h * ${DH}u;
    for (var d = 0u; d < ${DH}u; d++) { O[oRow + d] = acc[d] * inv; }
  }
}`,
  };
}

export function attention(ctx: GpuContext, q: Storage, k: Storage, v: Storage, s: AttentionShape): Storage {
  const rows = s.batch * s.seqLen;
  const { numHeads: H, numKvHeads: Hkv, headDim: DH } = s;
  if (q.rows !== rows || q.cols !== H * DH)
    fail(`attention: q [${q.rows}, ${q.cols}] does not match ${JSON.stringify(s)}`);
  if (k.rows !== rows || k.cols !== Hkv * DH || v.rows !== rows || v.cols !== Hkv * DH)
    fail(`attention: k/v [${k.rows}, ${k.cols}] do not match ${JSON.stringify(s)}`);
  if (H % Hkv !== 0) fail(`attention: ${H} heads over ${Hkv} kv heads`);
  const out = ctx.allocStorage(rows, H * DH, 'f32');
  if (rows === 0) return out;
  const kernel = attentionKernel(q.dtype, k.dtype, v.dtype, DH);
  const parts = [q, k, v, out].map((t) => ({ s: t, row0: 0 }));
  for (const seg of ctx.segments(rows, parts, s.seqLen, 'attention')) {
    const [wq, wk, wv, wo] = seg.w;
    const params = new Params()
      .u(s.seqLen)
      .u(H)
      .u(Hkv)
      .u(wq.off)
      .u(wk.off)
      .u(wv.off)
      .u(wo.off)
      .f(1 / Math.sqrt(DH));
    const batch = seg.n / s.seqLen;
    ctx.dispatch(
      kernel,
      params,
      [wq.binding, wk.binding, wv.binding, wo.binding],
      [Math.ceil(s.seqLen / BQ), H, batch],
    );
  }
  return out;
}

/** Threads of a decode attention workgroup. */
const SPLIT_WG = 256;
/** Query heads a workgroup takes at most: they share each key and value row it loads. */
const MAX_HEADS = 8;
/** f32 values in each of the split kernel's per-head arrays at most (4 KiB): queries, scores. */
const HEAD_ARRAY = 1024;
/** Threads of the kernel merging the splits. */
const MERGE_WG = 64;

/** The compile-time shape of one cached-attention kernel. */
interface SplitShape {
  headDim: number;
  /** query heads per KV head */
  group: number;
  /** of those, heads a workgroup takes (a divisor of group) */
  heads: number;
  /** keys a workgroup scores at once, a chunk (a power of two) */
  keys: number;
  /** K and V rows read four values a load */
  chunks: boolean;
  /** one split: the workgroup writes the normalized output instead of a partial */
  final: boolean;
}

/** The largest divisor of `group` that is at most MAX_HEADS and keeps the queries within HEAD_ARRAY. */
function headsPerWorkgroup(group: number, headDim: number): number {
  let best = 1;
  for (let g = 1; g <= Math.min(group, MAX_HEADS); g++)
    if (group % g === 0 && g * headDim <= HEAD_ARRAY) best = g;
  return best;
}

/** The largest power of two at most `n` (n >= 1). */
const floorPow2 = (n: number) => 2 ** Math.floor(Math.log2(n));

/**
 * How the threads sum the values: a lane takes `width` dimensions (four where they divide the head,
 * read in one load with chunks), `lanes` of them cover the head's `units` (`upt` units a lane), and
 * `groups` groups of lanes take every groups-th key.
 */
function valueLanes(headDim: number) {
  const width = headDim % 4 === 0 ? 4 : 1;
  const units = headDim / width;
  const lanes = Math.min(units, SPLIT_WG);
  return { width, units, lanes, upt: Math.ceil(units / lanes), groups: Math.floor(SPLIT_WG / lanes) };
}

/** Shared memory of a split kernel: queries, scores and their reduction, the lanes' sums, the stats. */
function sharedBytes(t: Pick<SplitShape, 'headDim' | 'heads' | 'keys'>): number {
  const { width, lanes, groups } = valueLanes(t.headDim);
  return 4 * t.heads * t.headDim + 8 * t.heads * t.keys + 4 * width * lanes * groups + 8 * t.heads;
}

/**
 * Attention against a KV cache, split over the keys (flash decoding): a workgroup takes a run of
 * chunks of `keys` consecutive keys of one query, for `heads` query heads of one KV head, so each key
 * and value row is read once for all of them. Per chunk its threads score every (head, key) pair into
 * shared memory and reduce each head's max and exp-sum by trees (rescaling what earlier chunks
 * summed, online softmax); then groups of threads take every KG-th key, a lane per value unit (four
 * dimensions where they divide the head), and at the end the groups' sums are added in group order.
 * With one split the workgroup writes the output; otherwise its (max, sum, unnormalized output) and
 * mergeKernel combines the splits. The splits are as many as fill ctx.attentionWorkgroups workgroups.
 */
function splitAttentionKernel(dq: DType, dk: DType, dv: DType, t: SplitShape): Kernel {
  const { headDim: DH, heads: GW, keys: CK, chunks, final } = t;
  return {
    key: `attentionSplit:${dq}:${dk}:${dv}:${DH}:${t.group}:${GW}:${CK}${chunks ? ':c' : ''}${final ? ':final' : ''}`,
    bindings: ['uniform', 'read', 'read', 'read', 'write', ...(final ? [] : (['write'] as const))],
    code: () => splitAttentionCode(dq, dk, dv, t),
  };
}

/** splitAttentionKernel's WGSL (built only when the pipeline is compiled: a decode step asks for the kernel every layer). */
function splitAttentionCode(dq: DType, dk: DType, dv: DType, t: SplitShape): string {
  const { headDim: DH, heads: GW, keys: CK, chunks } = t;
  const { width, units, lanes, upt, groups: KG } = valueLanes(DH);
  const U = width === 4 ? 'vec4<f32>' : 'f32';
  const kvLoads = chunks
    ? `${chunkLoadFns('ldK', 'K', dk)}\n${chunkLoadFns('ldV', 'V', dv)}`
    : `${loadFn('ldK', 'K', dk)}\n${loadFn('ldV', 'V', dv)}`;
  const dot = chunks
    ? `for (var c = 0u; c < ${units}u; c++) {
        let kk = ldK4((p.kOff + o) / 4u + c);
        let qq = g * ${DH}u + 4u * c;
        dot += qs[qq] * kk.x;
        dot += qs[qq + 1u] * kk.y;
        dot += qs[qq + 2u] * kk.z;
        dot += qs[qq + 3u] * kk.w;
      }`
    : `for (var d = 0u; d < ${DH}u; d++) { dot += qs[g * ${DH}u + d] * ldK(p.kOff + o + d); }`;
  const unitAt = (u: number) => `lane + ${u * lanes}u`;
  const valueAt = (row: string, u: number) => {
    const unit = `min(${unitAt(u)}, ${units - 1}u)`;
    if (chunks) return `ldV4((p.vOff + ${row}) / 4u + ${unit})`;
    if (width === 1) return `ldV(p.vOff + ${row} + ${unit})`;
    return `vec4<f32>(${range(4)
      .map((c) => `ldV(p.vOff + ${row} + 4u * ${unit} + ${c}u)`)
      .join(', ')})`;
  };
  const valueLoop = stridedLoop({
    count: 'n',
    lane: 'kg',
    lanes: KG,
    steps: 4,
    load: (j, item) =>
      `let row${j} = (key0 + ${item}) * kvStride + kvh * ${DH}u;
      ${range(upt)
        .map((u) => `let v${j}_${u} = ${valueAt(`row${j}`, u)};`)
        .join('\n      ')}`,
    use: (j) =>
      range(upt)
        .map(
          (u) =>
            `if (${unitAt(u)} < ${units}u) { ${range(GW)
              .map((g) => `acc[${g * upt + u}] += sc[${g * CK}u + i${j}] * v${j}_${u};`)
              .join(' ')} }`,
        )
        .join('\n      '),
  });
  const write = (sum: string, u: number) => {
    const unit = unitAt(u);
    const dims =
      width === 4 ? range(4).map((c) => [`4u * (${unit}) + ${c}u`, `${sum}[${c}]`]) : [[unit, sum]];
    return t.final
      ? dims.map(([d, v]) => `O[oRow + ${d}] = ${v} / stat[g].y;`).join('\n        ')
      : dims.map(([d, v]) => `PA[pRow * ${DH}u + ${d}] = ${v};`).join('\n        ');
  };
  const merge = range(upt)
    .map(
      (u) => `
    workgroupBarrier();
    if (kg < ${KG}u) { part[kg * ${lanes}u + lane] = acc[g * ${upt}u + ${u}u]; }
    workgroupBarrier();
    if (lid < ${lanes}u && ${unitAt(u)} < ${units}u) {
      var sum = part[lane];
      for (var t = 1u; t < ${KG}u; t++) { sum += part[t * ${lanes}u + lane]; }
      ${write('sum', u)}
    }`,
    )
    .join('');
  const tree = (op: (a: string, b: string) => string) => `
  for (var w = ${CK / 2}u; w > 0u; w = w >> 1u) {
    workgroupBarrier();
    for (var i = lid; i < ${GW}u * w; i += ${SPLIT_WG}u) {
      let a = (i / w) * ${CK}u + i % w;
      red[a] = ${op('red[a]', 'red[a + w]')};
    }
  }
  workgroupBarrier();`;
  return `
struct P { past: u32, H: u32, Hkv: u32, qOff: u32, kOff: u32, vOff: u32, oOff: u32, scale: f32, splits: u32, chunks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> Q: array<${arrayType(dq)}>;
@group(0) @binding(2) var<storage, read> K: array<${chunks ? chunkArrayType(dk) : arrayType(dk)}>;
@group(0) @binding(3) var<storage, read> V: array<${chunks ? chunkArrayType(dv) : arrayType(dv)}>;
${
  t.final
    ? '@group(0) @binding(4) var<storage, read_write> O: array<f32>;'
    : `@group(0) @binding(4) var<storage, read_write> PA: array<f32>;
@group(0) @binding(5) var<storage, read_write> PML: array<vec2<f32>>;`
}
var<workgroup> qs: array<f32, ${GW * DH}>;
var<workgroup> sc: array<f32, ${GW * CK}>;
var<workgroup> red: array<f32, ${GW * CK}>;
var<workgroup> part: array<${U}, ${KG * lanes}>;
var<workgroup> stat: array<vec2<f32>, ${GW}>;
var<workgroup> corr: array<f32, ${GW}>;
${loadFn('ldQ', 'Q', dq)}
${kvLoads}
@compute @workgroup_size(${SPLIT_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let s = wid.x;
  let kvh = wid.y / ${t.group / GW}u;
  let h0 = kvh * ${t.group}u + (wid.y % ${t.group / GW}u) * ${GW}u;
  let qi = wid.z;
  for (var i = lid; i < ${GW * DH}u; i += ${SPLIT_WG}u) { qs[i] = ldQ(p.qOff + (qi * p.H + h0) * ${DH}u + i); }
  if (lid < ${GW}u) { stat[lid] = vec2<f32>(${NEG_BIG}, 0.0); }
  let visible = p.past + qi + 1u;
  let kvStride = p.Hkv * ${DH}u;
  let lane = lid % ${lanes}u;
  let kg = lid / ${lanes}u;
  var acc: array<${U}, ${GW * upt}>;
  let cEnd = min((s + 1u) * p.chunks, (visible + ${CK - 1}u) / ${CK}u);
  for (var c = s * p.chunks; c < cEnd; c++) {
    let key0 = c * ${CK}u;
    let n = min(${CK}u, visible - key0);
    workgroupBarrier();
    for (var i = lid; i < ${GW * CK}u; i += ${SPLIT_WG}u) {
      let g = i / ${CK}u;
      let j = i % ${CK}u;
      var score = ${NEG_BIG};
      if (j < n) {
        let o = (key0 + j) * kvStride + kvh * ${DH}u;
        var dot = 0.0;
        ${dot}
        score = dot * p.scale;
      }
      sc[i] = score;
      red[i] = score;
    }
    ${tree((a, b) => `max(${a}, ${b})`)}
    if (lid < ${GW}u) {
      let m = max(stat[lid].x, red[lid * ${CK}u]);
      corr[lid] = exp(stat[lid].x - m);
      stat[lid].x = m;
    }
    workgroupBarrier();
    for (var i = lid; i < ${GW * CK}u; i += ${SPLIT_WG}u) {
      let e = select(0.0, exp(sc[i] - stat[i / ${CK}u].x), i % ${CK}u < n);
      sc[i] = e;
      red[i] = e;
    }
    ${tree((a, b) => `${a} + ${b}`)}
    if (lid < ${GW}u) { stat[lid].y = stat[lid].y * corr[lid] + red[lid * ${CK}u]; }
    ${range(GW * upt)
      .map((a) => `acc[${a}] = acc[${a}] * corr[${Math.floor(a / upt)}];`)
      .join('\n    ')}
    if (kg < ${KG}u) {${valueLoop}
    }
  }
  for (var g = 0u; g < ${GW}u; g++) {
    let oRow = p.oOff + (qi * p.H + h0 + g) * ${DH}u;
    let pRow = (qi * p.H + h0 + g) * p.splits + s;${merge}
  }
  ${t.final ? '' : `if (lid < ${GW}u) { PML[(qi * p.H + h0 + lid) * p.splits + s] = stat[lid]; }`}
}`;
}

/** Combines the splits' (max, sum, unnormalized output) of each (query, head) into its output row. */
function mergeKernel(headDim: number): Kernel {
  return {
    key: `attentionMerge:${headDim}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { H: u32, splits: u32, oOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> PA: array<f32>;
@group(0) @binding(2) var<storage, read> PML: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@compute @workgroup_size(${MERGE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * p.H + wid.x;
  let base = row * p.splits;
  var m = ${NEG_BIG};
  for (var s = 0u; s < p.splits; s++) { m = max(m, PML[base + s].x); }
  var l = 0.0;
  for (var s = 0u; s < p.splits; s++) { l += PML[base + s].y * exp(PML[base + s].x - m); }
  for (var d = lid; d < ${headDim}u; d += ${MERGE_WG}u) {
    var a = 0.0;
    for (var s = 0u; s < p.splits; s++) { a += PA[(base + s) * ${headDim}u + d] * exp(PML[base + s].x - m); }
    O[p.oOff + row * ${headDim}u + d] = a / l;
  }
}`,
  };
}

export function attentionCached(
  ctx: GpuContext,
  q: Storage,
  k: Storage,
  v: Storage,
  s: CachedAttentionShape,
): Storage {
  const { queries, numHeads: H, numKvHeads: Hkv, headDim: DH } = s;
  const out = ctx.allocStorage(queries, H * DH, 'f32');
  if (queries === 0) return out;
  const [wq, wk, wv, wo] = [q, k, v, out].map((t) => ctx.whole(t, 'attentionCached'));
  const group = H / Hkv;
  const heads = headsPerWorkgroup(group, DH);
  let keys = Math.min(floorPow2(ctx.attentionKeys), floorPow2(HEAD_ARRAY / heads));
  while (keys > 1 && sharedBytes({ headDim: DH, heads, keys }) > ctx.maxWorkgroupStorage) keys /= 2;
  if (sharedBytes({ headDim: DH, heads, keys }) > ctx.maxWorkgroupStorage)
    fail(
      `attentionCached: head_dim ${DH} needs more workgroup memory than this device's ${ctx.maxWorkgroupStorage} bytes`,
    );
  // enough workgroups to fill the GPU, each taking whole chunks of `keys` keys
  const nChunks = Math.ceil((s.past + queries) / keys);
  const rowGroups = queries * Hkv * (group / heads);
  const perSplit = Math.ceil(
    nChunks / Math.min(nChunks, Math.max(1, Math.ceil(ctx.attentionWorkgroups / rowGroups))),
  );
  const splits = Math.ceil(nChunks / perSplit);
  const chunks = ctx.gemv.chunks && chunksFit(DH, [wk.off, wv.off], [k.dtype, v.dtype]);
  const shape: SplitShape = { headDim: DH, group, heads, keys, chunks, final: splits === 1 };
  const params = new Params()
    .u(s.past)
    .u(H)
    .u(Hkv)
    .u(wq.off)
    .u(wk.off)
    .u(wv.off)
    .u(wo.off)
    .f(1 / Math.sqrt(DH))
    .u(splits)
    .u(perSplit);
  const grid = [splits, Hkv * (group / heads), queries];
  const kernel = splitAttentionKernel(q.dtype, k.dtype, v.dtype, shape);
  if (shape.final) {
    ctx.dispatch(kernel, params, [wq.binding, wk.binding, wv.binding, wo.binding], grid);
    return out;
  }
  const [paBytes, mlBytes] = [queries * H * splits * DH * 4, queries * H * splits * 8];
  const [partial, stats] = [ctx.alloc(paBytes), ctx.alloc(mlBytes)];
  const [wp, ws] = [wholeBuffer(partial, paBytes), wholeBuffer(stats, mlBytes)];
  ctx.dispatch(kernel, params, [wq.binding, wk.binding, wv.binding, wp, ws], grid);
  ctx.dispatch(mergeKernel(DH), new Params().u(H).u(splits).u(wo.off), [wp, ws, wo.binding], [H, queries]);
  ctx.release(partial);
  ctx.release(stats);
  return out;
}
