/**
 * int8 x int8 -> int32 GEMM: c[M,N] = a[M,K] b[N,K]^T, exact integer accumulation.
 *
 * Two kernels:
 * - `subgroup-matrix`: the tensor cores through `chromium-experimental-subgroup-matrix` (Vulkan
 *   cooperative matrices). One subgroup per workgroup computes TM x TN result tiles of 16x16 from
 *   left tiles (16 rows x 32 k) and right tiles (32 k x 16 columns) loaded straight from storage:
 *   a is row-major [M,K]; b [N,K] row-major is the right operand in column-major order. Needs
 *   M, N multiples of 16, K a multiple of 32, and the adapter's i8 16x16x32 -> i32 configuration.
 *   Older Dawn takes the layout as a bool argument, newer as a template argument: both are tried.
 * - `dot4`: a portable shared-memory tiled GEMM over packed words with dot4I8Packed (one 4-way
 *   int8 dot product per instruction); any M, N; K a multiple of 4.
 */
import { fail } from '../../errors.ts';
import type { GpuContext, Kernel, Storage } from './context.ts';
import { Params } from './context.ts';

export type Int8Path = 'subgroup-matrix' | 'dot4';

export interface SubgroupMatrixTile {
  /** 16x16 result tiles per subgroup along M and N */
  tm: number;
  tn: number;
}

export const DEFAULT_SGM_TILE: SubgroupMatrixTile = { tm: 4, tn: 2 };

type LoadSyntax = 'template' | 'argument';

const DOT4_TILE = 64;
const DOT4_BKW = 16; // words of K (64 int8) per shared-memory step

function dot4Kernel(): Kernel {
  return {
    key: 'int8gemm:dot4',
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
struct P { M: u32, N: u32, KW: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<u32>;
@group(0) @binding(2) var<storage, read> B: array<u32>;
@group(0) @binding(3) var<storage, read_write> C: array<i32>;
var<workgroup> As: array<u32, ${DOT4_TILE * DOT4_BKW}>;
var<workgroup> Bs: array<u32, ${DOT4_TILE * DOT4_BKW}>;
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let t = l.y * 16u + l.x;
  let m0 = wid.y * ${DOT4_TILE}u;
  let n0 = wid.x * ${DOT4_TILE}u;
  var acc: array<i32, 16>;
  for (var k0 = 0u; k0 < p.KW; k0 += ${DOT4_BKW}u) {
    for (var r = 0u; r < ${(DOT4_TILE * DOT4_BKW) / 256}u; r++) {
      let idx = t + r * 256u;
      let row = idx / ${DOT4_BKW}u;
      let kw = idx % ${DOT4_BKW}u;
      var a = 0u;
      var b = 0u;
      if (m0 + row < p.M && k0 + kw < p.KW) { a = A[(m0 + row) * p.KW + k0 + kw]; }
      if (n0 + row < p.N && k0 + kw < p.KW) { b = B[(n0 + row) * p.KW + k0 + kw]; }
      As[kw * ${DOT4_TILE}u + row] = a;
      Bs[kw * ${DOT4_TILE}u + row] = b;
    }
    workgroupBarrier();
    for (var kw = 0u; kw < ${DOT4_BKW}u; kw++) {
      var a: array<u32, 4>;
      var b: array<u32, 4>;
      for (var i = 0u; i < 4u; i++) {
        a[i] = As[kw * ${DOT4_TILE}u + l.y * 4u + i];
        b[i] = Bs[kw * ${DOT4_TILE}u + l.x * 4u + i];
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] += dot4I8Packed(a[i], b[j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + l.y * 4u + i;
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + l.x * 4u + j;
      if (m < p.M && n < p.N) { C[m * p.N + n] = acc[i * 4u + j]; }
    }
  }
}`,
  };
}

function sgmKernel(t: SubgroupMatrixTile, subgroupSize: number, syntax: LoadSyntax): Kernel {
  const L = 'subgroup_matrix_left<i8, 32, 16>';
  const R = 'subgroup_matrix_right<i8, 16, 32>';
  const load = (type: string, colMajor: boolean, ptr: string, off: string, stride: string) =>
    syntax === 'template'
      ? `subgroupMatrixLoad<${type}, ${colMajor ? 'col_major' : 'row_major'}>(${ptr}, ${off}, ${stride})`
      : `subgroupMatrixLoad<${type}>(${ptr}, ${off}, ${colMajor}, ${stride})`;
  const store = (off: string, value: string) =>
    syntax === 'template'
      ? `subgroupMatrixStore<row_major>(&C, ${off}, ${value}, p.N)`
      : `subgroupMatrixStore(&C, ${off}, ${value}, false, p.N)`;
  return {
    key: `int8gemm:sgm:${t.tm}x${t.tn}:${subgroupSize}:${syntax}`,
    bindings: ['uniform', 'read', 'read', 'write'],
    code: () => `
enable chromium_experimental_subgroup_matrix;
struct P { M: u32, N: u32, K: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<i32>;
@group(0) @binding(2) var<storage, read> B: array<i32>;
@group(0) @binding(3) var<storage, read_write> C: array<i32>;
@compute @workgroup_size(${subgroupSize})
fn main(@builtin(workgroup_id) wid: vec3<u32>) {
  let m0 = wid.y * ${16 * t.tm}u;
  let n0 = wid.x * ${16 * t.tn}u;
  var acc: array<subgroup_matrix_result<i32, 16, 16>, ${t.tm * t.tn}>;
  for (var k0 = 0u; k0 < p.K; k0 += 32u) {
    var a: array<${L}, ${t.tm}>;
    for (var i = 0u; i < ${t.tm}u; i++) {
      a[i] = ${load(L, false, '&A', `min(m0 + i * 16u, p.M - 16u) * p.K + k0`, 'p.K')};
    }
    for (var j = 0u; j < ${t.tn}u; j++) {
      let b = ${load(R, true, '&B', `min(n0 + j * 16u, p.N - 16u) * p.K + k0`, 'p.K')};
      for (var i = 0u; i < ${t.tm}u; i++) {
        acc[i * ${t.tn}u + j] = subgroupMatrixMultiplyAccumulate(a[i], b, acc[i * ${t.tn}u + j]);
      }
    }
  }
  for (var i = 0u; i < ${t.tm}u; i++) {
    for (var j = 0u; j < ${t.tn}u; j++) {
      if (m0 + i * 16u < p.M && n0 + j * 16u < p.N) {
        ${store('(m0 + i * 16u) * p.N + n0 + j * 16u', `acc[i * ${t.tn}u + j]`)};
      }
    }
  }
}`,
  };
}

/** The adapter's subgroup-matrix configurations (Dawn's GPUAdapterInfo extension). */
interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

/** Picks and compiles the int8 GEMM kernel this device can run. */
export class Int8Gemm {
  path: Int8Path = 'dot4';
  private sgm: Kernel | undefined;
  /** why the subgroup-matrix kernel is not used (when it is not) */
  reason = 'not probed';

  constructor(
    private readonly ctx: GpuContext,
    readonly sgmTile: SubgroupMatrixTile = DEFAULT_SGM_TILE,
  ) {}

  /** Tries the subgroup-matrix kernel (both WGSL syntaxes); keeps dot4 when none compiles. */
  async probe(want: Int8Path | 'auto' = 'auto'): Promise<void> {
    this.path = 'dot4';
    if (want === 'dot4') {
      this.reason = 'dot4 requested';
      return;
    }
    const info = this.ctx.adapterInfo as
      | (GPUAdapterInfo & { subgroupMatrixConfigs?: SubgroupMatrixConfig[]; subgroupMaxSize?: number })
      | undefined;
    const configs = info?.subgroupMatrixConfigs ?? [];
    const fits = configs.some(
      (c) =>
        c.componentType === 'i8' && c.resultComponentType === 'i32' && c.M === 16 && c.N === 16 && c.K === 32,
    );
    if (!this.ctx.features.has('chromium-experimental-subgroup-matrix') || !fits) {
      this.reason = 'adapter offers no i8 16x16x32 subgroup matrices';
      return;
    }
    const size = info?.subgroupMaxSize ?? 32;
    const errors: string[] = [];
    for (const syntax of ['template', 'argument'] as const) {
      const k = sgmKernel(this.sgmTile, size, syntax);
      const err = await this.ctx.tryCompile(k);
      if (!err) {
        this.sgm = k;
        this.path = 'subgroup-matrix';
        this.reason = '';
        return;
      }
      errors.push(`${syntax}: ${err}`);
    }
    this.reason = `subgroup-matrix kernel did not compile (${errors.join(' | ')})`;
    if (want === 'subgroup-matrix') fail(`WebGPU int8 GEMM: ${this.reason}`);
  }

  /** c[M,N] (i32) = a[M,K] b[N,K]^T for i8 a and b. */
  run(a: Storage, b: Storage): Storage {
    const M = a.rows;
    const N = b.rows;
    const K = a.cols;
    if (a.dtype !== 'i8' || b.dtype !== 'i8')
      fail(`matmulInt8: expected i8 operands, got ${a.dtype} and ${b.dtype}`);
    if (b.cols !== K) fail(`matmulInt8: a is ${M}x${K} but b is ${N}x${b.cols}`);
    if (K % 4 !== 0) fail(`matmulInt8: K = ${K} must be a multiple of 4`);
    const out = this.ctx.allocStorage(M, N, 'i32');
    const wa = this.ctx.whole(a, 'matmulInt8');
    const wb = this.ctx.whole(b, 'matmulInt8');
    const wc = this.ctx.whole(out, 'matmulInt8');
    if (this.sgm && M % 16 === 0 && N % 16 === 0 && K % 32 === 0) {
      const { tm, tn } = this.sgmTile;
      const grid = [Math.ceil(N / (16 * tn)), Math.ceil(M / (16 * tm))];
      this.ctx.dispatch(this.sgm, new Params().u(M).u(N).u(K), [wa.binding, wb.binding, wc.binding], grid);
    } else {
      const grid = [Math.ceil(N / DOT4_TILE), Math.ceil(M / DOT4_TILE)];
      this.ctx.dispatch(
        dot4Kernel(),
        new Params()
          .u(M)
          .u(N)
          .u(K / 4),
        [wa.binding, wb.binding, wc.binding],
        grid,
      );
    }
    return out;
  }
}
