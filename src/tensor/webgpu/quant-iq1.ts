/**
 * dequantize(quantize(x)) in llama.cpp's IQ1_S / IQ1_M (super-blocks of 256) on the GPU, for the searches
 * that only rank candidates (AWQ's scale and clip searches): the float32 algorithm of formats/iq1.ts
 * without an importance matrix (IQ1_S: importance 1; IQ1_M: weights x^2, as C), not bit for bit (the GPU
 * may take the other candidate of a near-tie). Blocks llmq stores come from the exact host quantizer.
 *
 * One thread per sub-block (IQ1_S: 32 values, IQ1_M: 16): the threads of a super-block share their sums
 * of x^2 (sigma2); each sorts its values (insertion sort, stable as the host's), tries every split into
 * the levels -1, 0, 1 for each shift (IQ1_M: each group of 8 its own), puts each group of 8 on the grid
 * (the 2048-point grid's tables of webgpu/quant-lattice.ts: off the grid, the candidate nearest by
 * weighted distance), refits; then they exchange scales for d and the 3-bit scales (IQ1_M also sums
 * the least-squares refit of d across the super-block). A sub-block the host skips (all values near 0)
 * keeps grid point 0 as the file does, so it dequantizes to d (-1 + 0.125), not to 0.
 */
import { fail } from '../../errors.ts';
import { IQ1_GRID } from '../../formats/iq1.ts';
import type { GgmlSpec } from '../../formats/spec.ts';
import type { DType } from '../tensor.ts';
import type { GpuContext, Kernel, Storage } from './context.ts';
import { GGML_WG, ggmlKernelHeader, runBlockKernel } from './quant-ggml.ts';
import { gridSearchWgsl, gridTable } from './quant-lattice.ts';

type Iq1Type = 'iq1_s' | 'iq1_m';
export const SEARCH_IQ1_TYPES: readonly string[] = ['iq1_s', 'iq1_m'];

const WG = GGML_WG;

/** Per type: values per sub-block, the skip threshold, the plain weight, the stored d's fudge factor. */
const TYPE = {
  iq1_s: { sub: 32, eps: '1e-12', weight: 'sqrt(sigma2 + x[i] * x[i])', fudge: '1.125' },
  iq1_m: { sub: 16, eps: '1e-7', weight: 'x[i] * x[i]', fudge: '1.1125' },
} as const;

/** The split search of IQ1_S: prefix sums over the sorted values, both groups shifted alike. */
function splitS(sub: number): string {
  return `
    var sx: array<f32, ${sub + 1}>;
    var sw: array<f32, ${sub + 1}>;
    for (var j = 0u; j < ${sub}u; j++) {
      sx[j + 1u] = sx[j] + w[ord[j]] * x[ord[j]];
      sw[j + 1u] = sw[j] + w[ord[j]];
    }
    for (var i1 = 0u; i1 <= ${sub}u; i1++) {
      for (var i2 = i1; i2 <= ${sub}u; i2++) {
        for (var sh = 0u; sh < 2u; sh++) {
          let q0 = shifted(0u, sh == 1u);
          let q1 = shifted(1u, sh == 1u);
          let q2 = shifted(2u, sh == 1u);
          let qx = sx[i1] * q0 + (sx[i2] - sx[i1]) * q1 + (sx[${sub}u] - sx[i2]) * q2;
          let qq = sw[i1] * q0 * q0 + (sw[i2] - sw[i1]) * q1 * q1 + (sw[${sub}u] - sw[i2]) * q2 * q2;
          if (qq > 0.0 && qx * qx > best * qq) {
            scale = qx / qq;
            best = scale * qx;
            b1 = i1;
            b2 = i2;
            down = select(0u, 15u, sh == 1u);
          }
        }
      }
    }`;
}

/** The split search of IQ1_M: prefix sums per half, each group of 8 shifted its own way. */
function splitM(sub: number): string {
  return `
    var px: array<vec2<f32>, ${sub + 1}>;
    var pw: array<vec2<f32>, ${sub + 1}>;
    for (var j = 0u; j < ${sub}u; j++) {
      let i = ord[j];
      let half = select(vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0), i >= 8u);
      px[j + 1u] = px[j] + half * (w[i] * x[i]);
      pw[j + 1u] = pw[j] + half * w[i];
    }
    for (var i1 = 0u; i1 <= ${sub}u; i1++) {
      for (var i2 = i1; i2 <= ${sub}u; i2++) {
        for (var k = 0u; k < 4u; k++) {
          var qx = 0.0;
          var qq = 0.0;
          for (var h = 0u; h < 2u; h++) {
            let dn = ((k >> (1u - h)) & 1u) == 1u;
            let q0 = shifted(0u, dn);
            let q1 = shifted(1u, dn);
            let q2 = shifted(2u, dn);
            qx += px[i1][h] * q0 + (px[i2][h] - px[i1][h]) * q1 + (px[${sub}u][h] - px[i2][h]) * q2;
            qq += pw[i1][h] * q0 * q0 + (pw[i2][h] - pw[i1][h]) * q1 * q1 + (pw[${sub}u][h] - pw[i2][h]) * q2 * q2;
          }
          if (qq > 0.0 && qx * qx > best * qq) {
            scale = qx / qq;
            best = scale * qx;
            b1 = i1;
            b2 = i2;
            down = ((k >> 1u) & 1u) | ((k & 1u) << 1u);
          }
        }
      }
    }`;
}

function iq1Wgsl(type: Iq1Type, listAt: number, pointsAt: number): string {
  const { sub, eps, weight, fudge } = TYPE[type];
  const per = 256 / sub;
  const groups = sub / 8;
  return `
${gridSearchWgsl({ listAt, pointsAt }, sub, 8, 'scale * shifted(l, dn)', 'dn: bool')}
var<workgroup> shA: array<f32, ${WG}>;
var<workgroup> shB: array<f32, ${WG}>;
/** level l (0, 1, 2: the value l - 1) shifted by 0.125, down or up */
fn shifted(l: u32, dn: bool) -> f32 { return f32(l) - 1.0 + select(0.125, -0.125, dn); }
/** the sum over the super-block's sub-blocks of a per-thread value in shA */
fn superSum(first: u32) -> f32 {
  var s = 0.0;
  for (var j = 0u; j < ${per}u; j++) { s += shA[first + j]; }
  return s;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flatWg(wid, nwg) * ${WG}u + lid;
  let valid = g < p.n;
  let first = lid & ~${per - 1}u;
  var x: array<f32, ${sub}>;
  var w: array<f32, ${sub}>;
  var L: array<u32, ${sub}>;
  var sum = 0.0;
  var mx = 0.0;
  if (valid) {
    for (var i = 0u; i < ${sub}u; i++) {
      x[i] = fv(ldBits(p.xOff + g * ${sub}u + i));
      sum += x[i] * x[i];
      mx = max(mx, abs(x[i]));
    }
  }
  shA[lid] = sum;
  workgroupBarrier();
  let sigma2 = 2.0 * superSum(first) / 256.0;
  workgroupBarrier();
  for (var i = 0u; i < ${sub}u; i++) { w[i] = ${weight}; }
  var scale = 0.0;
  // bit k: group k shifted down
  var down = 0u;
  if (valid && mx >= ${eps}) {
    var ord: array<u32, ${sub}>;
    for (var i = 0u; i < ${sub}u; i++) {
      var j = i;
      while (j > 0u && x[ord[j - 1u]] > x[i]) {
        ord[j] = ord[j - 1u];
        j--;
      }
      ord[j] = i;
    }
    var best = -3.4e38;
    var b1 = ${sub + 1}u;
    var b2 = 0u;
    ${type === 'iq1_s' ? splitS(sub) : splitM(sub)}
    if (b1 <= ${sub}u) {
      for (var j = 0u; j < ${sub}u; j++) { L[ord[j]] = select(select(2u, 1u, j < b2), 0u, j < b1); }
      if (scale < 0.0) {
        for (var i = 0u; i < ${sub}u; i++) { L[i] = 2u - L[i]; }
        scale = -scale;
        down ^= ${(1 << groups) - 1}u;
      }
      var moved = false;
      for (var k = 0u; k < ${groups}u; k++) {
        var key = 0u;
        for (var i = 0u; i < 8u; i++) { key |= L[8u * k + i] << (2u * i); }
        let e = T[key];
        if (isOffGrid(e)) {
          bestNeighbour(e, &x, &w, k, scale, ((down >> k) & 1u) == 1u, &L);
          moved = true;
        }
      }
      if (moved) {
        var qx = 0.0;
        var qq = 0.0;
        for (var i = 0u; i < ${sub}u; i++) {
          let q = shifted(L[i], ((down >> (i / 8u)) & 1u) == 1u);
          qx += w[i] * q * x[i];
          qq += w[i] * q * q;
        }
        if (qx > 0.0 && qq > 0.0) { scale = qx / qq; }
      }
    } else {
      scale = 0.0;
    }
  }
  shB[lid] = scale;
  workgroupBarrier();
  var maxScale = 0.0;
  for (var j = 0u; j < ${per}u; j++) { maxScale = max(maxScale, shB[first + j]); }
  var d = maxScale / 15.0;
  let l = select(0.0, clamp(round(0.5 * (scale / d - 1.0)), 0.0, 7.0), d > 0.0);
${
  type === 'iq1_m'
    ? `  // the least-squares d over the super-block with the 3-bit scales fixed
  var qx = 0.0;
  var qq = 0.0;
  for (var i = 0u; i < ${sub}u; i++) {
    let q = shifted(L[i], ((down >> (i / 8u)) & 1u) == 1u) * (2.0 * l + 1.0);
    qx += w[i] * q * x[i];
    qq += w[i] * q * q;
  }
  shA[lid] = qx;
  workgroupBarrier();
  let sumQx = superSum(first);
  workgroupBarrier();
  shA[lid] = qq;
  workgroupBarrier();
  let sumQq = superSum(first);
  if (maxScale > 0.0 && sumQq > 0.0) { d = sumQx / sumQq; }`
    : ''
}
  if (!valid) { return; }
  let dl = f16(d * ${fudge}) * (2.0 * l + 1.0);
  for (var i = 0u; i < ${sub}u; i++) {
    let v = select(0.0, dl * shifted(L[i], ((down >> (i / 8u)) & 1u) == 1u), maxScale > 0.0);
    O[p.oOff + g * ${sub}u + i] = fbits(v);
  }
}`;
}

function iq1Kernel(type: Iq1Type, dtype: DType, listAt: number, pointsAt: number): Kernel {
  return {
    key: `iq1-search:${type}:${dtype}`,
    bindings: ['uniform', 'read', 'write', 'read'],
    code: () => `${ggmlKernelHeader(dtype)}
${iq1Wgsl(type, listAt, pointsAt)}`,
  };
}

/**
 * The IQ1_S / IQ1_M round trip of x (rows of `lastDim` values, a multiple of 256) for a search; f32
 * result of x's shape. Approximate: see the file comment.
 */
export function iq1SearchFakeQuant(ctx: GpuContext, x: Storage, lastDim: number, spec: GgmlSpec): Storage {
  if (!SEARCH_IQ1_TYPES.includes(spec.type)) fail(`IQ1 search: no GPU kernel for ${spec.type}`);
  const type = spec.type as Iq1Type;
  if (lastDim % 256 !== 0 || x.cols % 256 !== 0)
    fail(`${type}: super-blocks of 256 do not divide the row length ${lastDim}`);
  const table = gridTable(ctx, IQ1_GRID);
  return runBlockKernel(ctx, iq1Kernel(type, x.dtype, table.listAt, table.pointsAt), x, TYPE[type].sub, [
    table.binding,
  ]);
}
