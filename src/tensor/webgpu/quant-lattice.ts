/**
 * dequantize(quantize(x)) in llama.cpp's lattice types IQ3_XXS / IQ3_S / IQ2_XXS / IQ2_XS / IQ2_S
 * (super-blocks of 256) on the GPU, for the searches that only rank candidates (AWQ's scale and clip
 * searches): the float32 algorithm of formats/lattice.ts without an importance matrix (IQ2_XXS / IQ2_XS:
 * importance 1; IQ2_XXS's first scale is make_qp_quants'), not bit for bit (as the K-quant and IQ4
 * search kernels): in a near-tie of the scale search or of two grid neighbours the GPU may take the other
 * candidate, and an all-zero IQ3_S sub-block does not shift the ones after it as the file layout does.
 * Blocks llmq stores come from the exact host quantizer.
 *
 * One thread per sub-block (32 values; IQ2 16): the threads of a super-block first share their sums of
 * x^2 (IQ2's weights use sigma2); then each takes its sign masks (IQ3_XXS, IQ2_XXS, IQ2_XS: even parity
 * per 8), the
 * scale search over the trial reciprocals with each group (4 values; IQ2 8) rounded to the nearest
 * levels or, off the grid, to its best neighbour, the refit; then they exchange their scales through
 * workgroup memory for fp16 d and the 4-bit sub-block scales. The grid tables are one storage buffer:
 * per level combination its grid index, or its candidates' place in the list; the lists; each grid
 * point's levels, 4 bits each, in a u32.
 */
import { fail } from '../../errors.ts';
import { IQ2_S_SPEC, IQ2_XS_SPEC, IQ2_XXS_SPEC } from '../../formats/iq2.ts';
import { iq3Spec } from '../../formats/iq3.ts';
import { type GridSpec, gridOf, type LatticeSpec } from '../../formats/lattice.ts';
import type { GgmlSpec } from '../../formats/spec.ts';
import type { DType } from '../tensor.ts';
import type { GpuContext, Kernel, Storage } from './context.ts';
import { GGML_WG, ggmlKernelHeader, runBlockKernel } from './quant-ggml.ts';

type LatticeType = 'iq3_xxs' | 'iq3_s' | 'iq2_xxs' | 'iq2_xs' | 'iq2_s';
export const SEARCH_LATTICE_TYPES: readonly string[] = ['iq3_xxs', 'iq3_s', 'iq2_xxs', 'iq2_xs', 'iq2_s'];

const WG = GGML_WG;
const OFF_GRID = 0x80000000;
/** an off-grid entry: OFF_GRID | list start << COUNT_BITS | candidate count (IQ2_XS: up to 292) */
const COUNT_BITS = 10;

const IQ2_SPECS = { iq2_xxs: IQ2_XXS_SPEC, iq2_xs: IQ2_XS_SPEC, iq2_s: IQ2_S_SPEC };
const specOf = (type: LatticeType) =>
  type === 'iq3_xxs' || type === 'iq3_s' ? iq3Spec(type) : IQ2_SPECS[type];

/** The weight of value i without an importance matrix: a WGSL expression. */
const PLAIN_WEIGHT: Record<LatticeSpec['plainWeights'], string> = {
  x2: 'x[i] * x[i]',
  sigma: '0.25 * sigma2 + x[i] * x[i]',
  unit: 'sqrt(sigma2 + x[i] * x[i])',
};

/** The dequantizer's sub-block scale from fp16 d and the 4-bit ls: a WGSL expression. */
const SUB_BLOCK_SCALE: Record<LatticeType, string> = {
  iq3_xxs: 'dh * (0.5 + ls) * 0.5',
  iq3_s: 'dh * (1.0 + 2.0 * ls)',
  iq2_xxs: 'dh * (0.5 + ls) * 0.25',
  iq2_xs: 'dh * (0.5 + ls) * 0.25',
  iq2_s: 'dh * (0.5 + ls) * 0.25',
};

/** The magnitude of level l (the spec's code levels 0..maxLevel) as a chain of selects. */
function magnitudeWgsl(spec: LatticeSpec): string {
  let expr = `${spec.codeLevels[0]}.0`;
  for (let l = 1; l <= spec.maxLevel; l++) expr = `select(${expr}, ${spec.codeLevels[l]}.0, l == ${l}u)`;
  return expr;
}

/** The grid tables as one u32 array: level combinations, candidate lists, then the points' levels. */
export function latticeTable(spec: GridSpec): { words: Uint32Array; listAt: number; pointsAt: number } {
  const g = gridOf(spec);
  const keys = g.index.length;
  const listAt = keys;
  const pointsAt = listAt + g.list.length;
  const words = new Uint32Array(pointsAt + g.points.length);
  for (let key = 0; key < keys; key++) {
    const count = g.start[key + 1] - g.start[key];
    if (count >= 1 << COUNT_BITS || g.start[key] >= 1 << (31 - COUNT_BITS))
      fail('lattice search: a candidate list does not fit its table entry');
    words[key] = g.index[key] >= 0 ? g.index[key] : (OFF_GRID | (g.start[key] << COUNT_BITS) | count) >>> 0;
  }
  words.set(g.list, listAt);
  for (let j = 0; j < g.points.length; j++)
    for (let i = 0; i < spec.group; i++) words[pointsAt + j] |= g.levels[spec.group * j + i] << (4 * i);
  return { words, listAt, pointsAt };
}

/**
 * make_qp_quants' scale of the magnitudes under weights w (IQ2_XXS's first scale), codes 0..nmax; a
 * negative magnitude (the parity flip) rounds to a negative code, which C stores in a uint8_t.
 */
function qpScaleWgsl(SUB: number, nmax: number): string {
  return `
fn stored(l: i32) -> i32 { return select(l, l + 256, l < 0); }
fn qpError(xv: ptr<function, array<f32, ${SUB}>>, w: ptr<function, array<f32, ${SUB}>>, iscale: f32, wrap: bool) -> f32 {
  let sc = 1.0 / iscale;
  var e = 0.0;
  for (var i = 0u; i < ${SUB}u; i++) {
    let r = i32(round(iscale * (*xv)[i]));
    let l = select(min(${nmax}, r), stored(r), wrap);
    let diff = (*xv)[i] - sc * f32(l);
    e += (*w)[i] * diff * diff;
  }
  return e;
}
fn qpScale(xv: ptr<function, array<f32, ${SUB}>>, w: ptr<function, array<f32, ${SUB}>>) -> f32 {
  var mx = 0.0;
  for (var i = 0u; i < ${SUB}u; i++) { mx = max(mx, (*xv)[i]); }
  if (mx < 1e-15) { return 0.0; }
  var iscale = ${nmax}.0 / mx;
  var best = qpError(xv, w, iscale, true);
  for (var k = -4; k <= 4; k++) {
    let cand = (0.1 * f32(k) + ${nmax}.0) / mx;
    let e = qpError(xv, w, cand, false);
    if (k != 0 && e < best) {
      best = e;
      iscale = cand;
    }
  }
  var L: array<i32, ${SUB}>;
  var slx = 0.0;
  var sl2 = 0.0;
  for (var i = 0u; i < ${SUB}u; i++) {
    let l = min(${nmax}, i32(round(iscale * (*xv)[i])));
    L[i] = stored(l);
    slx += (*w)[i] * (*xv)[i] * f32(l);
    sl2 += (*w)[i] * f32(l) * f32(l);
  }
  for (var round5 = 0; round5 < 5; round5++) {
    var changed = 0;
    for (var i = 0u; i < ${SUB}u; i++) {
      let li = f32(L[i]);
      var s1 = slx - (*w)[i] * (*xv)[i] * li;
      var s2 = sl2 - (*w)[i] * li * li;
      if (s1 > 0.0 && s2 > 0.0) {
        let nl = min(${nmax}, i32(round((*xv)[i] * s2 / s1)));
        if (nl != L[i]) {
          s1 += (*w)[i] * (*xv)[i] * f32(nl);
          s2 += (*w)[i] * f32(nl) * f32(nl);
          if (s1 * s1 * sl2 > slx * slx * s2) {
            L[i] = stored(nl);
            slx = s1;
            sl2 = s2;
            changed++;
          }
        }
      }
    }
    if (changed == 0) { break; }
  }
  return select(0.0, slx / sl2, sl2 > 0.0);
}`;
}

/**
 * WGSL of a grid table bound at binding 3 (latticeTable's layout) and the search of its candidates:
 * T (the table: T[key] is a level combination's entry), lvl(j, i) (level i of grid point j), isOffGrid(e),
 * and bestNeighbour(e, x, w, k, scale, [extra,] L): of off-grid entry e's candidates, the one nearest by
 * w-weighted distance to the `group` values of group k of x, a candidate's level l standing for `value`
 * (a WGSL expression of l, scale and the extra parameter); its levels into L.
 */
export function gridSearchWgsl(
  table: Pick<GridTable, 'listAt' | 'pointsAt'>,
  sub: number,
  group: number,
  value: string,
  extra = '',
): string {
  const arr = `ptr<function, array<f32, ${sub}>>`;
  return `
@group(0) @binding(3) var<storage, read> T: array<u32>;
fn lvl(point: u32, i: u32) -> u32 { return (T[${table.pointsAt}u + point] >> (4u * i)) & 15u; }
fn isOffGrid(e: u32) -> bool { return (e & ${OFF_GRID}u) != 0u; }
fn bestNeighbour(e: u32, x: ${arr}, w: ${arr}, k: u32, scale: f32, ${extra ? `${extra}, ` : ''}L: ptr<function, array<u32, ${sub}>>) {
  let start = (e & 0x7fffffffu) >> ${COUNT_BITS}u;
  var best = 3.4e38;
  var pick = 0u;
  for (var n = start; n < start + (e & ${(1 << COUNT_BITS) - 1}u); n++) {
    let j = T[${table.listAt}u + n];
    var d2 = 0.0;
    for (var i = 0u; i < ${group}u; i++) {
      let l = lvl(j, i);
      let diff = ${value} - (*x)[${group}u * k + i];
      d2 += (*w)[${group}u * k + i] * diff * diff;
    }
    if (d2 < best) {
      best = d2;
      pick = j;
    }
  }
  for (var i = 0u; i < ${group}u; i++) { (*L)[${group}u * k + i] = lvl(pick, i); }
}`;
}

function latticeWgsl(type: LatticeType, listAt: number, pointsAt: number): string {
  const s = specOf(type);

  const [SUB, G, per] = [s.subBlock, s.group, 256 / s.subBlock];
  const top = 2 * s.maxLevel + 1;
  return `
${gridSearchWgsl({ listAt, pointsAt }, SUB, G, 'scale * f32(2u * l + 1u)')}
var<workgroup> shScale: array<f32, ${WG}>;
var<workgroup> shSum: array<f32, ${WG}>;
/** the levels of group k nearest to xv * id, as a key; into L */
fn nearestKey(xv: ptr<function, array<f32, ${SUB}>>, k: u32, id: f32, L: ptr<function, array<u32, ${SUB}>>) -> u32 {
  var key = 0u;
  for (var i = 0u; i < ${G}u; i++) {
    let l = u32(clamp(round(0.5 * (id * (*xv)[${G}u * k + i] - 1.0)), 0.0, ${s.maxLevel}.0));
    (*L)[${G}u * k + i] = l;
    key |= l << (${s.levelBits}u * i);
  }
  return key;
}
/** (sum w x q, sum w q^2), q = 2L + 1 */
fn fitSums(xv: ptr<function, array<f32, ${SUB}>>, w: ptr<function, array<f32, ${SUB}>>, L: ptr<function, array<u32, ${SUB}>>) -> vec2<f32> {
  var s = vec2<f32>(0.0, 0.0);
  for (var i = 0u; i < ${SUB}u; i++) {
    let q = f32(2u * (*L)[i] + 1u);
    s += vec2<f32>((*w)[i] * (*xv)[i] * q, (*w)[i] * q * q);
  }
  return s;
}
${s.trialMax === 'qp' ? qpScaleWgsl(SUB, s.maxLevel + 2) : ''}
/** the dequantizer's magnitude of level l */
fn magnitude(l: u32) -> f32 { return ${magnitudeWgsl(s)}; }

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flatWg(wid, nwg) * ${WG}u + lid;
  let valid = g < p.n;
  let first = lid & ~${per - 1}u;
  var x: array<f32, ${SUB}>;
  var xv: array<f32, ${SUB}>;
  var w: array<f32, ${SUB}>;
  var wa: array<f32, ${SUB}>;
  var L: array<u32, ${SUB}>;
  var La: array<u32, ${SUB}>;
  var neg: array<u32, ${SUB / 8}>;
  var sum = 0.0;
  if (valid) {
    for (var i = 0u; i < ${SUB}u; i++) {
      x[i] = fv(ldBits(p.xOff + g * ${SUB}u + i));
      sum += x[i] * x[i];
    }
  }
  shSum[lid] = sum;
  workgroupBarrier();
  var total = 0.0;
  for (var j = 0u; j < ${per}u; j++) { total += shSum[first + j]; }
  let sigma2 = ${s.sigmaScale}.0 * total / 256.0;
  var scale = 0.0;
  var mx = 0.0;
  if (valid) {
    for (var i = 0u; i < ${SUB}u; i++) {
      w[i] = ${PLAIN_WEIGHT[s.plainWeights]};
      wa[i] = sqrt(w[i]);
      xv[i] = abs(x[i]);
    }
    for (var k = 0u; k < ${SUB / 8}u; k++) {
      var s = 0u;
      for (var i = 0u; i < 8u; i++) { if (x[8u * k + i] < 0.0) { s |= 1u << i; } }
${
  s.paritySigns
    ? `      if ((countOneBits(s) & 1u) == 1u) {
        var imin = 0u;
        var least = w[8u * k] * x[8u * k] * x[8u * k];
        for (var i = 1u; i < 8u; i++) {
          let a = w[8u * k + i] * x[8u * k + i] * x[8u * k + i];
          if (a < least) {
            least = a;
            imin = i;
          }
        }
        xv[8u * k + imin] = -xv[8u * k + imin];
        s ^= 1u << imin;
      }`
    : ''
}
      neg[k] = s;
    }
    for (var i = 0u; i < ${SUB}u; i++) { mx = max(mx, xv[i]); }
  }
  if (valid && mx ${s.skipBelow ? `>= ${s.skipBelow}` : '> 0.0'}) {
    var best = 0.0;
    scale = mx / ${top}.0;${
      s.trialMax === 'qp'
        ? `
    scale = qpScale(&xv, &w);
    mx = scale * ${s.maxLevel + 1}.0;`
        : ''
    }
    var offGrid = ${s.refit !== 'off-grid' ? `${(1 << (SUB / G)) - 1}u` : '0u'};
    for (var t = -${s.steps}; t <= ${s.steps} && mx > 0.0; t++) {
      let id = (${top}.0 + f32(t) * ${s.stepSize}) / mx;
      var off = 0u;
      for (var k = 0u; k < ${SUB / G}u; k++) {
        let e = T[nearestKey(&xv, k, id, &La)];
        if (isOffGrid(e)) {
          bestNeighbour(e, &xv, &wa, k, 1.0 / id, &La);
          off |= 1u << k;
        }
      }
      let s = fitSums(&xv, &w, &La);
      if (s.y > 0.0 && s.x * s.x > best * s.y) {
        scale = s.x / s.y;
        best = scale * s.x;
        L = La;
        offGrid = off;
      }
    }
    if (${s.refit === 'all' ? '' : 'offGrid != 0u && '}scale > 0.0) {
      for (var k = 0u; k < ${SUB / G}u; k++) {
        ${s.refit !== 'off-grid' ? '' : 'if ((offGrid & (1u << k)) == 0u) { continue; }'}
        let e = T[nearestKey(&xv, k, 1.0 / scale, &L)];
        if (isOffGrid(e)) { bestNeighbour(e, &xv, &wa, k, scale, &L); }
      }
      let s = fitSums(&xv, &w, &L);
      if (s.y > 0.0) { scale = s.x / s.y; }
    }
  }
  shScale[lid] = scale;
  workgroupBarrier();
  if (!valid) { return; }
  var maxScale = 0.0;
  for (var j = 0u; j < ${per}u; j++) { maxScale = max(maxScale, shScale[first + j]); }
  let d = maxScale / 31.0;
  let ls = select(0.0, clamp(round(0.5 * (scale / d - 1.0)), 0.0, 15.0), d > 0.0);
  let dh = f16(d * ${s.fudge});
  let db = ${SUB_BLOCK_SCALE[type]};
  for (var i = 0u; i < ${SUB}u; i++) {
    let l = L[i];
    let v = select(0.0, db * magnitude(l), scale > 0.0);
    let negative = ((neg[i / 8u] >> (i % 8u)) & 1u) == 1u;
    O[p.oOff + g * ${SUB}u + i] = fbits(select(v, -v, negative));
  }
}`;
}

function latticeKernel(type: LatticeType, dtype: DType, listAt: number, pointsAt: number): Kernel {
  return {
    key: `lattice-search:${type}:${dtype}`,
    bindings: ['uniform', 'read', 'write', 'read'],
    code: () => `${ggmlKernelHeader(dtype)}
${latticeWgsl(type, listAt, pointsAt)}`,
  };
}

/** A grid's tables on the device: the buffer to bind and where the lists and the points start in it. */
export interface GridTable {
  binding: GPUBufferBinding;
  listAt: number;
  pointsAt: number;
}

const tables = new WeakMap<GpuContext, Map<GridSpec, GridTable>>();

/** The grid's tables (latticeTable), uploaded once per device. */
export function gridTable(ctx: GpuContext, spec: GridSpec): GridTable {
  let byGrid = tables.get(ctx);
  if (!byGrid) tables.set(ctx, (byGrid = new Map()));
  let table = byGrid.get(spec);
  if (!table) {
    const { words, listAt, pointsAt } = latticeTable(spec);
    const buffer = ctx.createWith(new Uint8Array(words.buffer));
    byGrid.set(spec, (table = { binding: { buffer } as GPUBufferBinding, listAt, pointsAt }));
  }
  return table;
}

/**
 * The IQ3 / IQ2 round trip of x (rows of `lastDim` values, a multiple of 256) for a
 * search; f32 result of x's shape. Approximate: see the file comment.
 */
export function latticeSearchFakeQuant(
  ctx: GpuContext,
  x: Storage,
  lastDim: number,
  spec: GgmlSpec,
): Storage {
  if (!SEARCH_LATTICE_TYPES.includes(spec.type)) fail(`lattice search: no GPU kernel for ${spec.type}`);
  const type = spec.type as LatticeType;
  if (lastDim % 256 !== 0 || x.cols % 256 !== 0)
    fail(`${type}: super-blocks of 256 do not divide the row length ${lastDim}`);
  const table = gridTable(ctx, specOf(type));
  const sub = specOf(type).subBlock;
  return runBlockKernel(ctx, latticeKernel(type, x.dtype, table.listAt, table.pointsAt), x, sub, [
    table.binding,
  ]);
}
