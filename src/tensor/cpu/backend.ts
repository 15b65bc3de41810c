/** The CPU reference backend: TypeScript over shared typed arrays, matmul/attention on all cores. */
import { fail } from '../../errors.ts';
import { encode, fakeQuantRows } from '../../formats/index.ts';
import type { FormatSpec, IntSpec } from '../../formats/spec.ts';
import {
  type AttentionShape,
  type Backend,
  type CachedAttentionShape,
  type ColumnStats,
  checkCachedAttention,
  checkKlShapes,
  checkKron,
  checkWriteRows,
  type DType,
  type HostArray,
  type IntRows,
  numel,
  type PackedWeight,
  type RopeTable,
  rowsIntSpec,
  shapeString,
  type Tensor,
} from '../tensor.ts';
import { prepareAttention, wasmAttention } from './attention-wasm.ts';
import { attentionCachedRows } from './kernels.ts';
import { parallelFor, releaseShared, sharedF32, threadCount } from './pool.ts';
import { ensureWasmBytes, matmulUnits, packUnits, type WasmMatmul, wasmLayout, wasmMatmul } from './wasm.ts';

const EMPTY = new Float32Array(0);

export class CpuTensor implements Tensor {
  constructor(
    readonly backend: CpuBackend,
    readonly shape: readonly number[],
    readonly dtype: DType,
    public data: HostArray,
    /** the buffer was made for this tensor: dispose() may recycle it */
    private readonly owned = false,
  ) {}

  /** Recycles an owned buffer; the tensor is empty afterwards, so a later use fails loudly. */
  dispose(): void {
    if (this.owned && this.data.buffer instanceof SharedArrayBuffer) releaseShared(this.data.buffer);
    this.data = EMPTY;
  }
}

const BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, i8: 1, u8: 1 };

function isShared(a: HostArray): boolean {
  return a.buffer instanceof SharedArrayBuffer;
}

/** Minimum multiply-adds per thread before splitting a matmul across threads. */
const MIN_MACS_PER_THREAD = 1 << 20;

/** Below this many elements an elementwise op stays on one thread (a worker round trip costs more). */
const MIN_ELEMENTS_PER_THREAD = 1 << 16;

/** Side of the square tiles of transpose. */
const TRANSPOSE_TILE = 32;

export class CpuBackend implements Backend {
  readonly name = 'cpu' as const;

  upload(data: HostArray, shape: readonly number[], dtype: DType): Tensor {
    if (data.length !== numel(shape))
      fail(`upload: ${data.length} values do not fill shape ${shapeString(shape)}`);
    if (isShared(data)) return new CpuTensor(this, [...shape], dtype, data);
    const Ctor = data.constructor as new (b: SharedArrayBuffer) => HostArray;
    const copy = new Ctor(new SharedArrayBuffer(data.length * BYTES[dtype]));
    copy.set(data as never);
    return new CpuTensor(this, [...shape], dtype, copy);
  }

  /** Wraps a freshly computed result; the tensor owns (and may recycle) its buffer. */
  fromF32(data: Float32Array, shape: readonly number[]): CpuTensor {
    if (data.length !== numel(shape))
      fail(`result of ${data.length} values does not fill ${shapeString(shape)}`);
    const shared = isShared(data) ? data : sharedF32(data.length);
    if (shared !== data) shared.set(data);
    return new CpuTensor(this, [...shape], 'f32', shared, true);
  }

  /** A host copy: the tensor's own buffer may be recycled once it is disposed. */
  async read(t: Tensor): Promise<Float32Array> {
    const c = t as CpuTensor;
    return c.dtype === 'f32' ? (c.data as Float32Array).slice() : this.f32(t);
  }

  /** The f32 host view of a tensor (widened from 16-bit storage where needed). */
  f32(t: Tensor): Float32Array {
    const c = t as CpuTensor;
    if (c.dtype === 'f32') return c.data as Float32Array;
    if (c.dtype === 'bf16' || c.dtype === 'f16') return this.f32Into(t, sharedF32(c.data.length));
    return Float32Array.from(c.data as ArrayLike<number>);
  }

  /** Writes the f32 values of t into dst (shared memory), widening 16-bit storage in parallel. */
  private f32Into(t: Tensor, dst: Float32Array): Float32Array {
    const c = t as CpuTensor;
    if (c.dtype === 'bf16' || c.dtype === 'f16')
      parallelFor('widen16', [c.data as Uint16Array, dst, c.dtype === 'bf16' ? 1 : 0], dst.length, 1 << 18);
    else dst.set(this.f32(t));
    return dst;
  }

  linear(x: Tensor, w: Tensor, bias?: Tensor): Tensor {
    const [M, K] = x.shape;
    const [N, Kw] = w.shape;
    if (K !== Kw) fail(`linear: input ${shapeString(x.shape)} does not match weight ${shapeString(w.shape)}`);
    const splitB = N >= M ? 1 : 0;
    const units = splitB ? N : M;
    const minUnits = Math.max(4, Math.ceil(MIN_MACS_PER_THREAD / ((splitB ? M : N) * K)));
    const wasm = K > 0 ? wasmMatmul() : null;
    if (wasm) {
      const out = this.linearWasm(wasm, x, w, bias, M, N, K);
      if (out) return out;
    }
    const out = sharedF32(M * N);
    parallelFor(
      'matmulNT',
      [this.f32(x), this.f32(w), out, bias ? this.f32(bias) : null, M, N, K, splitB],
      units,
      minUnits,
    );
    return this.fromF32(out, [M, N]);
  }

  /**
   * linear through the WebAssembly SIMD tiles: the threads copy x and w into the shared wasm memory,
   * pack them there, multiply and copy the result out. Undefined when it does not fit.
   */
  private linearWasm(
    wasm: WasmMatmul,
    x: Tensor,
    w: Tensor,
    bias: Tensor | undefined,
    M: number,
    N: number,
    K: number,
  ): Tensor | undefined {
    const at = wasmLayout(M, N, K);
    if (!ensureWasmBytes(wasm, at.bytes)) return undefined;
    const view = (offset: number, n: number) => new Float32Array(wasm.memory.buffer, offset, n);
    // f32 and bf16 weights are copied by the pack kernel; f16 ones are widened here first
    const wSrc =
      w.dtype === 'f32' || w.dtype === 'bf16' ? ((w as CpuTensor).data as Float32Array | Uint16Array) : null;
    if (!wSrc) this.f32Into(w, view(at.wRaw, N * K));
    view(at.bias, at.ldc).fill(0);
    if (bias) view(at.bias, N).set(this.f32(bias));
    parallelFor(
      'packWasm',
      [this.f32(x), wSrc, at.xRaw, at.x, at.wRaw, at.w, M, N, K],
      packUnits(M, N),
      Math.ceil(2 ** 16 / (4 * K)),
    );
    const splitB = N >= M ? 1 : 0;
    const unitMacs = (splitB ? M * 8 : N * 4) * K;
    const out = sharedF32(M * N);
    parallelFor(
      'matmulWasm',
      [at.x, at.w, at.out, at.bias, out, M, N, K, splitB],
      matmulUnits(M, N, splitB),
      MIN_MACS_PER_THREAD / unitMacs,
    );
    return this.fromF32(out, [M, N]);
  }

  linearPacked(x: Tensor, w: PackedWeight, bias?: Tensor): Tensor {
    const { rows, cols, codeBits, group } = w;
    const data = (w.codes as CpuTensor).data;
    const words = new Uint32Array(data.buffer, data.byteOffset, data.length);
    const scales = this.f32(w.scales);
    const zeros = typeof w.zeros === 'number' ? undefined : this.f32(w.zeros);
    const zero = typeof w.zeros === 'number' ? w.zeros : 0;
    const per = 32 / codeBits;
    const mask = (1 << codeBits) - 1;
    const groupOf = w.groupOf ? this.f32(w.groupOf) : undefined;
    const values = sharedF32(rows * cols);
    for (let n = 0; n < rows; n++)
      for (let k = 0; k < cols; k++) {
        const i = n * cols + k;
        const code = (words[Math.floor(i / per)] >>> ((i % per) * codeBits)) & mask;
        const g = n * (cols / group) + (groupOf ? groupOf[k] : Math.floor(k / group));
        values[i] = Math.fround(((w.levels ? w.levels[code] : code) - (zeros ? zeros[g] : zero)) * scales[g]);
      }
    const weight = this.fromF32(values, [rows, cols]);
    const y = this.linear(x, weight, bias);
    weight.dispose();
    return y;
  }

  matmulInt8(a: Tensor, b: Tensor): Tensor {
    const [M, K] = a.shape;
    const [N, Kb] = b.shape;
    if (a.dtype !== 'i8' || b.dtype !== 'i8')
      fail(`matmulInt8: expected i8 operands, got ${a.dtype} and ${b.dtype}`);
    if (K !== Kb || a.shape.length !== 2 || b.shape.length !== 2)
      fail(`matmulInt8: a ${shapeString(a.shape)} does not match b ${shapeString(b.shape)}`);
    if (K % 4 !== 0) fail(`matmulInt8: K = ${K} must be a multiple of 4`);
    const x = (a as CpuTensor).data as Int8Array;
    const w = (b as CpuTensor).data as Int8Array;
    const out = new Int32Array(new SharedArrayBuffer(M * N * 4));
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let acc = 0;
        for (let k = 0, xo = m * K, wo = n * K; k < K; k++) acc += x[xo + k] * w[wo + k];
        out[m * N + n] = acc;
      }
    return new CpuTensor(this, [M, N], 'i32', out);
  }

  quantizeRowsInt8(x: Tensor, spec?: IntSpec): IntRows {
    const s = rowsIntSpec(x, spec);
    const [M, K] = x.shape;
    const enc = encode(this.f32(x), M, K, s);
    const offset = 2 ** (s.bits - 1);
    const codes = new Int8Array(new SharedArrayBuffer(M * K));
    for (let i = 0; i < codes.length; i++) codes[i] = enc.codes[i] - offset; // offset-binary -> two's complement
    return { codes: new CpuTensor(this, [M, K], 'i8', codes), scales: this.fromF32(enc.scales, [M]) };
  }

  scaleInt32(acc: Tensor, rowScales: Tensor, colScales: Tensor, bias?: Tensor): Tensor {
    const [M, N] = acc.shape;
    const a = (acc as CpuTensor).data as Int32Array;
    const rs = this.f32(rowScales);
    const cs = this.f32(colScales);
    if (rs.length !== M || cs.length !== N)
      fail(`scaleInt32: ${rs.length} row and ${cs.length} column scales for ${M}x${N}`);
    const b = bias ? this.f32(bias) : undefined;
    const out = sharedF32(M * N);
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        const y = Math.fround(Math.fround(a[m * N + n] * rs[m]) * cs[n]);
        out[m * N + n] = b ? Math.fround(y + b[n]) : y;
      }
    return this.fromF32(out, [M, N]);
  }

  embedding(table: Tensor, ids: Int32Array): Tensor {
    const [V, D] = table.shape;
    const out = sharedF32(ids.length * D);
    const src = (table as CpuTensor).data;
    const widen = table.dtype === 'bf16' || table.dtype === 'f16';
    ids.forEach((id, r) => {
      if (id < 0 || id >= V) fail(`embedding: token id ${id} outside the vocabulary (${V})`);
      if (!widen) {
        out.set((src as Float32Array).subarray(id * D, (id + 1) * D), r * D);
        return;
      }
      const row = this.f32(this.upload((src as Uint16Array).slice(id * D, (id + 1) * D), [D], table.dtype));
      out.set(row, r * D);
    });
    return this.fromF32(out, [ids.length, D]);
  }

  rmsnorm(x: Tensor, weight: Tensor, eps: number): Tensor {
    const [M, D] = x.shape;
    const src = this.f32(x);
    const w = this.f32(weight);
    const out = sharedF32(M * D);
    parallelFor('rmsnormRows', [src, w, out, D, eps], M, Math.ceil(MIN_ELEMENTS_PER_THREAD / D));
    return this.fromF32(out, [M, D]);
  }

  rope(x: Tensor, positions: Int32Array, headDim: number, table: RopeTable): Tensor {
    const [M, width] = x.shape;
    if (positions.length !== M) fail(`rope: ${positions.length} positions for ${M} rows`);
    const src = this.f32(x);
    const out = sharedF32(M * width);
    const half = headDim / 2;
    const cos = new Float32Array(half);
    const sin = new Float32Array(half);
    for (let r = 0; r < M; r++) {
      for (let i = 0; i < half; i++) {
        // PyTorch forms the angle as an f32 product, then cos/sin in f32.
        const angle = Math.fround(positions[r] * table.invFreq[i]);
        cos[i] = Math.fround(Math.cos(angle)) * table.attentionScaling;
        sin[i] = Math.fround(Math.sin(angle)) * table.attentionScaling;
      }
      for (let h = 0; h < width; h += headDim) {
        const o = r * width + h;
        for (let i = 0; i < half; i++) {
          const a = src[o + i];
          const b = src[o + i + half];
          out[o + i] = a * cos[i] - b * sin[i];
          out[o + i + half] = b * cos[i] + a * sin[i];
        }
      }
    }
    return this.fromF32(out, [M, width]);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, s: AttentionShape): Tensor {
    const rows = s.batch * s.seqLen;
    if (q.shape[0] !== rows || q.shape[1] !== s.numHeads * s.headDim)
      fail(`attention: q ${shapeString(q.shape)} does not match ${JSON.stringify(s)}`);
    if (s.numHeads % s.numKvHeads !== 0) fail(`attention: ${s.numHeads} heads over ${s.numKvHeads} kv heads`);
    const out = sharedF32(rows * s.numHeads * s.headDim);
    const wasm = wasmAttention();
    const job = wasm && prepareAttention(wasm, this.f32(q), this.f32(k), this.f32(v), s, threadCount());
    if (job) {
      parallelFor('attentionBlocks', [...job.args], job.units);
      out.set(job.out);
      return this.fromF32(out, q.shape);
    }
    parallelFor(
      'attentionHeads',
      [this.f32(q), this.f32(k), this.f32(v), out, s.seqLen, s.numHeads, s.numKvHeads, s.headDim],
      s.batch * s.numHeads,
    );
    return this.fromF32(out, q.shape);
  }

  attentionCached(q: Tensor, k: Tensor, v: Tensor, s: CachedAttentionShape): Tensor {
    checkCachedAttention(q, k, v, s);
    const out = sharedF32(numel(q.shape));
    attentionCachedRows(this.f32(q), this.f32(k), this.f32(v), out, s);
    return this.fromF32(out, q.shape);
  }

  writeRows(dst: Tensor, src: Tensor, at: number): void {
    checkWriteRows(dst, src, at);
    const cols = numel(src.shape) / src.shape[0];
    (dst as CpuTensor).data.set(this.f32(src), at * cols);
  }

  /** One loop per op: a shared loop over a callback goes megamorphic in V8 (~25 ns an element). */
  private map2(a: Tensor, b: Tensor, op: 'add' | 'sub' | 'siluMul'): Tensor {
    if (numel(a.shape) !== numel(b.shape))
      fail(`${op}: shapes ${shapeString(a.shape)} and ${shapeString(b.shape)} differ`);
    const x = this.f32(a);
    const y = this.f32(b);
    const out = sharedF32(x.length);
    const code = { add: 0, sub: 1, siluMul: 2 }[op];
    parallelFor('map2Elements', [x, y, out, code], x.length, MIN_ELEMENTS_PER_THREAD);
    return this.fromF32(out, a.shape);
  }

  siluMul(gate: Tensor, up: Tensor): Tensor {
    return this.map2(gate, up, 'siluMul');
  }

  add(a: Tensor, b: Tensor): Tensor {
    return this.map2(a, b, 'add');
  }

  sub(a: Tensor, b: Tensor): Tensor {
    return this.map2(a, b, 'sub');
  }

  scaleColumns(x: Tensor, s: Tensor): Tensor {
    const [M, N] = x.shape;
    const src = this.f32(x);
    const scale = this.f32(s);
    if (scale.length !== N) fail(`scaleColumns: ${scale.length} scales for ${N} columns`);
    const out = sharedF32(M * N);
    for (let r = 0; r < M; r++) for (let j = 0; j < N; j++) out[r * N + j] = src[r * N + j] * scale[j];
    return this.fromF32(out, [M, N]);
  }

  kron(x: Tensor, left: Tensor, right: Tensor): Tensor {
    const [rows, n1, n2] = checkKron(x, left, right);
    const src = this.f32(x);
    const a = this.f32(left);
    const b = this.f32(right);
    const n = n1 * n2;
    const out = sharedF32(rows * n);
    const t = new Float32Array(n);
    for (let r = 0; r < rows; r++) {
      const o = r * n;
      t.fill(0);
      for (let i = 0; i < n1; i++)
        for (let j = 0; j < n2; j++) {
          const v = src[o + i * n2 + j];
          for (let c = 0; c < n2; c++) t[i * n2 + c] += v * b[j * n2 + c];
        }
      for (let i = 0; i < n1; i++)
        for (let k = 0; k < n1; k++) {
          const f = a[i * n1 + k];
          for (let c = 0; c < n2; c++) out[o + k * n2 + c] += f * t[i * n2 + c];
        }
    }
    return this.fromF32(out, [rows, n]);
  }

  scaleRows(x: Tensor, s: Tensor): Tensor {
    const [M, N] = x.shape;
    const src = this.f32(x);
    const scale = this.f32(s);
    if (scale.length !== M) fail(`scaleRows: ${scale.length} scales for ${M} rows`);
    const out = sharedF32(M * N);
    for (let r = 0; r < M; r++) for (let j = 0; j < N; j++) out[r * N + j] = src[r * N + j] * scale[r];
    return this.fromF32(out, [M, N]);
  }

  nll(logits: Tensor, targets: Int32Array): Tensor {
    const [M, V] = logits.shape;
    if (targets.length !== M) fail(`nll: ${targets.length} targets for ${M} rows`);
    const out = sharedF32(M);
    const sharedTargets = new Int32Array(new SharedArrayBuffer(M * 4));
    sharedTargets.set(targets);
    parallelFor('nllRows', [this.f32(logits), sharedTargets, out, V], M, 16);
    return this.fromF32(out, [M]);
  }

  klDiv(p: Tensor, q: Tensor): Tensor {
    const [M, V] = checkKlShapes(p, q);
    const out = sharedF32(M * 2);
    parallelFor('klRows', [this.f32(p), this.f32(q), out, V], M, 16);
    return this.fromF32(out, [M, 2]);
  }

  fakeQuant(x: Tensor, spec: FormatSpec): Tensor {
    const cols = x.shape[x.shape.length - 1];
    const rows = numel(x.shape) / cols;
    return this.fromF32(fakeQuantRows(this.f32(x), rows, cols, spec), x.shape);
  }

  async columnStats(x: Tensor): Promise<ColumnStats> {
    const [M, N] = x.shape;
    const src = this.f32(x);
    const absMax = new Float32Array(N);
    const sum = new Float64Array(N);
    for (let r = 0; r < M; r++) {
      for (let j = 0; j < N; j++) {
        const a = Math.abs(src[r * N + j]);
        if (a > absMax[j]) absMax[j] = a;
        sum[j] += a;
      }
    }
    return { absMax, absMean: Float32Array.from(sum, (s) => s / M) };
  }

  sliceRows(x: Tensor, start: number, end: number): Tensor {
    const cols = numel(x.shape) / x.shape[0];
    const src = this.f32(x);
    const out = sharedF32((end - start) * cols);
    out.set(src.subarray(start * cols, end * cols));
    return this.fromF32(out, [end - start, ...x.shape.slice(1)]);
  }

  concatRows(parts: readonly Tensor[]): Tensor {
    const cols = numel(parts[0].shape) / parts[0].shape[0];
    const rows = parts.reduce((n, p) => n + p.shape[0], 0);
    const out = sharedF32(rows * cols);
    let offset = 0;
    for (const p of parts) {
      const src = this.f32(p);
      out.set(src, offset);
      offset += src.length;
    }
    return this.fromF32(out, [rows, ...parts[0].shape.slice(1)]);
  }

  transpose(x: Tensor): Tensor {
    const [M, N] = x.shape;
    const src = this.f32(x);
    const out = sharedF32(M * N);
    // in square tiles, so that both the reads and the strided writes stay in cache
    for (let r0 = 0; r0 < M; r0 += TRANSPOSE_TILE) {
      const r1 = Math.min(M, r0 + TRANSPOSE_TILE);
      for (let c0 = 0; c0 < N; c0 += TRANSPOSE_TILE) {
        const c1 = Math.min(N, c0 + TRANSPOSE_TILE);
        for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * M + r] = src[r * N + c];
      }
    }
    return this.fromF32(out, [N, M]);
  }

  toF32(x: Tensor): Tensor {
    const src = this.f32(x);
    const out = sharedF32(src.length);
    out.set(src);
    return this.fromF32(out, x.shape);
  }

  async sumSquaredDiff(a: Tensor, b: Tensor): Promise<number> {
    const x = this.f32(a);
    const y = this.f32(b);
    let s = 0;
    for (let i = 0; i < x.length; i++) s += (x[i] - y[i]) ** 2;
    return s;
  }
}
