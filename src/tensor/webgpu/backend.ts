/**
 * The WebGPU backend: Dawn through the `webgpu` npm package in Node, `navigator.gpu` in a browser.
 * Ops record dispatches into a shared command encoder (submitted every few dozen dispatches or at a
 * read); `read` is the only host synchronization. Every result is f32, as on the CPU backend.
 */
import { fail } from '../../errors.ts';
import { type GgmlBlockType, ggmlBlockLayout, isBlockFormat } from '../../formats/ggml-codes.ts';
import type { FormatSpec, GgmlSpec, IntSpec } from '../../formats/spec.ts';
import { bf16ToF32, f16ToF32 } from '../dtype.ts';
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
  type KvRows,
  numel,
  type PackedWeight,
  type RmsNorm,
  type RopeTable,
  rowsIntSpec,
  shapeString,
  type Tensor,
} from '../tensor.ts';
import { attention, attentionCached } from './attention.ts';
import { type ContextOptions, ELEM_BYTES, GpuContext, layoutOf, type Storage } from './context.ts';
import { binary, copyRows, rope, scaleColumns, scaleRows, toF32 } from './elementwise.ts';
import { type FusedInput, type GemvOperand, gateUp, type KvTarget, qkvRope } from './gemv-fused.ts';
import {
  type Dot4Tile,
  Int8Gemm,
  type Int8Path,
  int8GemvScaled,
  scaleInt32 as scaleInt32Kernel,
} from './int8.ts';
import { kron } from './kron.ts';
import { concatRows, sliceRows, transpose } from './layout.ts';
import { DEFAULT_TILE, embedding, type GemmTile, linear } from './matmul.ts';
import { klDiv, nll, rmsnorm } from './norm.ts';
import { fakeQuant, quantizeRowsInt8, rmsnormQuantizeRowsInt8 } from './quant.ts';
import { ggmlFakeQuant } from './quant-ggml.ts';
import { iq1SearchFakeQuant, SEARCH_IQ1_TYPES } from './quant-iq1.ts';
import { iq4SearchFakeQuant, SEARCH_IQ4_TYPES } from './quant-iq4.ts';
import { kquantSearchFakeQuant, SEARCH_K_TYPES } from './quant-kquant.ts';
import { latticeSearchFakeQuant, SEARCH_LATTICE_TYPES } from './quant-lattice.ts';
import { columnStats, sumSquaredDiff } from './reduce.ts';

export class WebGpuTensor implements Tensor {
  constructor(
    readonly backend: WebGpuBackend,
    readonly shape: readonly number[],
    readonly dtype: DType,
    readonly storage: Storage,
  ) {}
  private released = false;
  /** Returns the buffer to the pool once; a second call does nothing. */
  dispose(): void {
    if (this.released) return;
    this.released = true;
    this.backend.ctx.releaseStorage(this.storage);
  }
}

export interface WebGpuOptions extends ContextOptions {
  /** Dawn toggles, e.g. ['enable-dawn-features=allow_unsafe_apis'] (default: $LLMQ_WEBGPU_FLAGS) */
  flags?: string[];
  gemmTile?: GemmTile;
  /** int8 GEMM kernel: 'auto' (default) uses subgroup matrices when the adapter has them */
  int8?: Int8Path | 'auto';
  /** tiling of the portable dot4 int8 kernel */
  dot4Tile?: Dot4Tile;
  /** decoding: the q/k/v and gate/up GEMVs apply the RMSNorm before them (see WebGpuBackend.normInGemv) */
  normInGemv?: boolean;
}

interface GpuModule {
  create(flags: string[]): GPU;
}

/** Dawn toggles from $LLMQ_WEBGPU_FLAGS (whitespace separated). */
export function envFlags(): string[] {
  return (globalThis.process?.env.LLMQ_WEBGPU_FLAGS ?? '').split(/\s+/).filter((f) => f !== '');
}

async function gpuEntry(flags: string[]): Promise<GPU | undefined> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  let mod: GpuModule;
  try {
    mod = (await import('webgpu')) as unknown as GpuModule;
  } catch {
    return undefined;
  }
  try {
    return mod.create(flags);
  } catch {
    return undefined;
  }
}

const WANTED_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxStorageBuffersPerShaderStage',
] as const;

const WANTED_FEATURES = ['subgroups', 'chromium-experimental-subgroup-matrix', 'timestamp-query'];

interface Opened {
  /** the object from create(): Dawn is torn down when it is garbage collected, so keep it */
  gpu: GPU;
  adapter: GPUAdapter;
  device: GPUDevice;
}

async function deviceFrom(gpu: GPU): Promise<Opened | undefined> {
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' }).catch(() => null);
  if (!adapter) return undefined;
  const requiredLimits: Record<string, number> = {};
  for (const name of WANTED_LIMITS) requiredLimits[name] = adapter.limits[name];
  const requiredFeatures = WANTED_FEATURES.filter((f) => adapter.features.has(f)) as GPUFeatureName[];
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures }).catch(() => null);
  return device ? { gpu, adapter, device } : undefined;
}

/**
 * A device with the given Dawn toggles, retried without them when the adapter refuses them.
 * Undefined when no WebGPU adapter exists (no package, no Vulkan driver, no GPU).
 */
export async function openDevice(
  flags: string[] = envFlags(),
): Promise<(Opened & { flags: string[] }) | undefined> {
  const attempts = flags.length > 0 ? [flags, []] : [[]];
  for (const f of attempts) {
    const gpu = await gpuEntry(f);
    if (!gpu) continue;
    const got = await deviceFrom(gpu);
    if (got) return { ...got, flags: f };
  }
  return undefined;
}

/** Whether a WebGPU adapter can be created here. */
export async function webgpuAvailable(): Promise<boolean> {
  const got = await openDevice();
  got?.device.destroy();
  return got !== undefined;
}

export class WebGpuBackend implements Backend {
  readonly name = 'webgpu' as const;
  readonly ctx: GpuContext;
  /** more than one chunk of decode attention's keys: it splits them (its other kernels) */
  get warmUpKeys(): number {
    return this.ctx.attentionKeys + 8;
  }
  /** tile shape of the linear kernel (benchmarks try several) */
  gemmTile: GemmTile;
  /** the int8 GEMM and the kernel it picked */
  readonly int8: Int8Gemm;
  /**
   * Whether qkvRope / gateUp take a norm (one dispatch fewer each, a decode step 7 -> 5 a layer):
   * every workgroup then recomputes its rows' RMS, more GPU work for less host work and latency. Off
   * by default: on an H100 it made 8B-shaped decoding 9-12% slower, though llama-small's 9% faster
   * (BENCHMARKS.md); the int8 row quantizer's norm, computed once a row, is always fused.
   */
  normInGemv: boolean;

  private constructor(
    readonly gpu: GPU,
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo | undefined,
    opts: WebGpuOptions,
  ) {
    this.ctx = new GpuContext(
      device,
      new Set(device.features as unknown as Iterable<string>),
      adapterInfo,
      opts,
    );
    this.gemmTile = opts.gemmTile ?? DEFAULT_TILE;
    this.int8 = new Int8Gemm(this.ctx, undefined, opts.dot4Tile);
    this.normInGemv = opts.normInGemv ?? false;
  }

  /** Opens the default adapter; fails with a one-line error when there is none. */
  static async create(opts: WebGpuOptions = {}): Promise<WebGpuBackend> {
    const got = await openDevice(opts.flags);
    if (!got)
      return fail(
        'no WebGPU adapter: install the `webgpu` package and a Vulkan driver (on a machine without a GPU: Mesa lavapipe, package mesa-vulkan-drivers), or use --device cpu',
      );
    const backend = new WebGpuBackend(got.gpu, got.device, got.adapter.info, opts);
    await backend.int8.probe(opts.int8 ?? 'auto');
    return backend;
  }

  /** A one-line description of the adapter. */
  describe(): string {
    const i = this.adapterInfo;
    return i ? [i.vendor, i.architecture, i.device, i.description].filter((s) => s).join(' ') : 'WebGPU';
  }

  /** Frees every buffer and the device. */
  destroy(): void {
    this.ctx.trim();
    this.device.destroy();
  }

  /** Waits for all submitted work (for timing). */
  sync(): Promise<void> {
    return this.ctx.sync();
  }

  private st(t: Tensor, op: string): Storage {
    if (!(t instanceof WebGpuTensor) || t.backend !== this)
      fail(`${op}: tensor is not on this WebGPU device`);
    return (t as WebGpuTensor).storage;
  }

  private wrap(s: Storage, shape: readonly number[]): Tensor {
    return new WebGpuTensor(this, [...shape], s.dtype, s);
  }

  upload(data: HostArray, shape: readonly number[], dtype: DType): Tensor {
    if (data.length !== numel(shape))
      fail(`upload: ${data.length} values do not fill shape ${shapeString(shape)}`);
    if (data.BYTES_PER_ELEMENT !== ELEM_BYTES[dtype])
      fail(`upload: ${data.constructor.name} does not hold ${dtype} data`);
    const { rows, cols } = layoutOf(shape);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return this.wrap(this.ctx.uploadStorage(rows, cols, dtype, bytes), shape);
  }

  async read(t: Tensor): Promise<Float32Array> {
    const s = this.st(t, 'read');
    const rowBytes = s.cols * ELEM_BYTES[s.dtype];
    const ranges: { buffer: GPUBuffer; offset: number; size: number }[] = [];
    const used: number[] = [];
    s.chunks.forEach((buffer, c) => {
      const bytes = Math.min(s.rowsPerChunk, s.rows - c * s.rowsPerChunk) * rowBytes;
      used.push(bytes);
      ranges.push({ buffer, offset: 0, size: Math.ceil(bytes / 4) * 4 });
    });
    const total = numel(t.shape);
    if (total === 0) return new Float32Array(0);
    const padded = await this.ctx.readBytes(ranges);
    const bytes = new Uint8Array(total * ELEM_BYTES[s.dtype]);
    let from = 0;
    let to = 0;
    used.forEach((n, c) => {
      bytes.set(padded.subarray(from, from + n), to);
      from += ranges[c].size;
      to += n;
    });
    return hostF32(bytes, s.dtype);
  }

  linear(x: Tensor, w: Tensor, bias?: Tensor): Tensor {
    return this.linearOf(x, w, bias, undefined, 'linear');
  }

  linearPacked(x: Tensor, w: PackedWeight, bias?: Tensor): Tensor {
    return this.linearOf(x, w, bias, undefined, 'linearPacked');
  }

  linearAdd(x: Tensor, w: Tensor | PackedWeight, residual: Tensor, bias?: Tensor): Tensor {
    return this.linearOf(x, w, bias, this.st(residual, 'linearAdd'), 'linearAdd');
  }

  gateUp(
    x: Tensor,
    gate: Tensor | PackedWeight,
    up: Tensor | PackedWeight,
    norm?: RmsNorm,
  ): Tensor | undefined {
    if (norm && !this.normInGemv) return undefined;
    const [g, u] = [gate, up].map((w) => this.gemvOperand(x, w, 'gateUp'));
    const out = gateUp(this.ctx, this.fusedInput(x, norm, 'gateUp'), g, u);
    return out && this.wrap(out, [x.shape[0], out.cols]);
  }

  gateUpInt8(x: IntRows, gate: IntRows, up: IntRows): Tensor | undefined {
    const [g, u] = [gate, up].map((w) => this.int8Operand(w, 'gateUp'));
    const out = gateUp(this.ctx, this.int8Input(x, 'gateUp'), g, u);
    return out && this.wrap(out, [x.codes.shape[0], out.cols]);
  }

  qkvRope(
    x: Tensor,
    weights: readonly [Tensor | PackedWeight, Tensor | PackedWeight, Tensor | PackedWeight],
    first: number,
    headDim: number,
    table: RopeTable,
    norm?: RmsNorm,
    into?: KvRows,
  ): [Tensor, Tensor, Tensor] | undefined {
    if (norm && !this.normInGemv) return undefined;
    const ops = weights.map((w) => this.gemvOperand(x, w, 'qkvRope')) as [
      GemvOperand,
      GemvOperand,
      GemvOperand,
    ];
    const input = this.fusedInput(x, norm, 'qkvRope');
    const outs = qkvRope(this.ctx, input, ops, first, headDim, table, this.kvTarget(into));
    return this.qkvTensors(outs, x.shape[0], into);
  }

  qkvRopeInt8(
    x: IntRows,
    weights: readonly [IntRows, IntRows, IntRows],
    first: number,
    headDim: number,
    table: RopeTable,
    into?: KvRows,
  ): [Tensor, Tensor, Tensor] | undefined {
    const ops = weights.map((w) => this.int8Operand(w, 'qkvRope')) as [GemvOperand, GemvOperand, GemvOperand];
    const outs = qkvRope(
      this.ctx,
      this.int8Input(x, 'qkvRope'),
      ops,
      first,
      headDim,
      table,
      this.kvTarget(into),
    );
    return this.qkvTensors(outs, x.codes.shape[0], into);
  }

  private kvTarget(into: KvRows | undefined): KvTarget | undefined {
    return into && { k: this.st(into.k, 'qkvRope'), v: this.st(into.v, 'qkvRope'), row: into.row };
  }

  /** qkvRope's outputs as tensors: k and v are into's own tensors where the op wrote them there. */
  private qkvTensors(
    outs: [Storage, Storage, Storage] | undefined,
    rows: number,
    into: KvRows | undefined,
  ): [Tensor, Tensor, Tensor] | undefined {
    if (!outs) return undefined;
    const q = this.wrap(outs[0], [rows, outs[0].cols]);
    if (into) return [q, into.k, into.v];
    return [q, this.wrap(outs[1], [rows, outs[1].cols]), this.wrap(outs[2], [rows, outs[2].cols])];
  }

  private fusedInput(x: Tensor, norm: RmsNorm | undefined, op: string): FusedInput {
    return { x: this.st(x, op), norm: norm && { weight: this.st(norm.weight, op), eps: norm.eps } };
  }

  rmsnormQuantizeRowsInt8(x: Tensor, norm: RmsNorm, spec?: IntSpec): IntRows | undefined {
    const s = rowsIntSpec(x, spec);
    const st = (t: Tensor) => this.st(t, 'rmsnormQuantizeRowsInt8');
    const out = rmsnormQuantizeRowsInt8(this.ctx, st(x), s, { weight: st(norm.weight), eps: norm.eps });
    return out && { codes: this.wrap(out.codes, x.shape), scales: this.wrap(out.scales, [x.shape[0]]) };
  }

  private int8Input(x: IntRows, op: string): FusedInput {
    return { x: this.st(x.codes, op), rowScales: this.st(x.scales, op) };
  }

  private int8Operand(w: IntRows, op: string): GemvOperand {
    return { w: this.st(w.codes, op), colScales: this.st(w.scales, op) };
  }

  private linearOf(
    x: Tensor,
    w: Tensor | PackedWeight,
    bias: Tensor | undefined,
    residual: Storage | undefined,
    op: string,
  ): Tensor {
    const { w: ws, packed } = this.gemvOperand(x, w, op);
    const b = bias ? this.st(bias, op) : undefined;
    const out = linear(this.ctx, this.st(x, op), ws, b, this.gemmTile, packed, residual);
    return this.wrap(out, [x.shape[0], out.cols]);
  }

  /** A weight's storages for the linear kernels, checked against x. */
  private gemvOperand(x: Tensor, w: Tensor | PackedWeight, op: string): GemvOperand {
    if (!('codes' in w)) {
      if (x.shape.length !== 2 || w.shape.length !== 2 || x.shape[1] !== w.shape[1])
        fail(`${op}: input ${shapeString(x.shape)} does not match weight ${shapeString(w.shape)}`);
      return { w: this.st(w, op) };
    }
    if (x.shape.length !== 2 || x.shape[1] !== w.cols)
      fail(`${op}: input ${shapeString(x.shape)} does not match a ${w.rows}x${w.cols} weight`);
    return {
      w: this.st(w.codes, op),
      packed: {
        codeBits: w.codeBits,
        group: w.group,
        scales: this.st(w.scales, op),
        zeros: typeof w.zeros === 'number' ? undefined : this.st(w.zeros, op),
        zero: typeof w.zeros === 'number' ? w.zeros : undefined,
        scalesF16: w.scales.dtype === 'f16',
        groupOf: w.groupOf !== undefined,
        groupIndex: w.groupOf ? this.st(w.groupOf, op) : undefined,
        levels: w.levels,
        rows: w.rows,
      },
    };
  }

  matmulInt8(a: Tensor, b: Tensor): Tensor {
    if (a.shape.length !== 2 || b.shape.length !== 2)
      fail(`matmulInt8: expected 2-D operands, got ${shapeString(a.shape)} and ${shapeString(b.shape)}`);
    return this.wrap(this.int8.run(this.st(a, 'matmulInt8'), this.st(b, 'matmulInt8')), [
      a.shape[0],
      b.shape[0],
    ]);
  }

  quantizeRowsInt8(x: Tensor, spec?: IntSpec): IntRows {
    const s = rowsIntSpec(x, spec);
    const { codes, scales } = quantizeRowsInt8(this.ctx, this.st(x, 'quantizeRowsInt8'), s);
    return { codes: this.wrap(codes, x.shape), scales: this.wrap(scales, [x.shape[0]]) };
  }

  scaleInt32(acc: Tensor, rowScales: Tensor, colScales: Tensor, bias?: Tensor): Tensor {
    const b = bias ? this.st(bias, 'scaleInt32') : undefined;
    const out = scaleInt32Kernel(
      this.ctx,
      this.st(acc, 'scaleInt32'),
      this.st(rowScales, 'scaleInt32'),
      this.st(colScales, 'scaleInt32'),
      b,
    );
    return this.wrap(out, acc.shape);
  }

  linearInt8(x: IntRows, w: IntRows, bias?: Tensor, residual?: Tensor): Tensor | undefined {
    const st = (t: Tensor) => this.st(t, 'linearInt8');
    const y = int8GemvScaled(
      this.ctx,
      st(x.codes),
      st(w.codes),
      st(x.scales),
      st(w.scales),
      bias && st(bias),
      residual && st(residual),
    );
    return y && this.wrap(y, [x.codes.shape[0], w.codes.shape[0]]);
  }

  embedding(table: Tensor, ids: Int32Array): Tensor {
    const out = embedding(this.ctx, this.st(table, 'embedding'), ids);
    return this.wrap(out, [ids.length, table.shape[1]]);
  }

  rmsnorm(x: Tensor, weight: Tensor, eps: number): Tensor {
    return this.wrap(rmsnorm(this.ctx, this.st(x, 'rmsnorm'), this.st(weight, 'rmsnorm'), eps), x.shape);
  }

  rope(x: Tensor, positions: Int32Array, headDim: number, table: RopeTable): Tensor {
    if (positions.length !== x.shape[0]) fail(`rope: ${positions.length} positions for ${x.shape[0]} rows`);
    return this.wrap(rope(this.ctx, this.st(x, 'rope'), positions, headDim, table), x.shape);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, s: AttentionShape): Tensor {
    const out = attention(
      this.ctx,
      this.st(q, 'attention'),
      this.st(k, 'attention'),
      this.st(v, 'attention'),
      s,
    );
    return this.wrap(out, q.shape);
  }

  attentionCached(q: Tensor, k: Tensor, v: Tensor, s: CachedAttentionShape): Tensor {
    checkCachedAttention(q, k, v, s);
    const [sq, sk, sv] = [q, k, v].map((t) => this.st(t, 'attentionCached'));
    return this.wrap(attentionCached(this.ctx, sq, sk, sv, s), q.shape);
  }

  writeRows(dst: Tensor, src: Tensor, at: number): void {
    checkWriteRows(dst, src, at);
    copyRows(this.ctx, this.st(src, 'writeRows'), 0, this.st(dst, 'writeRows'), at, src.shape[0]);
  }

  /** b viewed with a's row layout (same number of values). */
  private like(a: Tensor, b: Tensor, op: string): [Storage, Storage] {
    const sa = this.st(a, op);
    const sb = this.st(b, op);
    if (numel(a.shape) !== numel(b.shape))
      fail(`${op}: shapes ${shapeString(a.shape)} and ${shapeString(b.shape)} differ`);
    if (sa.rows === sb.rows) return [sa, sb];
    if (sb.chunks.length !== 1)
      fail(`${op}: shapes ${shapeString(a.shape)} and ${shapeString(b.shape)} differ`);
    return [sa, { ...sb, rows: sa.rows, cols: sa.cols, rowsPerChunk: Math.max(sa.rows, 1) }];
  }

  siluMul(gate: Tensor, up: Tensor): Tensor {
    const [a, b] = this.like(gate, up, 'siluMul');
    return this.wrap(binary(this.ctx, 'siluMul', a, b), gate.shape);
  }

  add(a: Tensor, b: Tensor): Tensor {
    const [sa, sb] = this.like(a, b, 'add');
    return this.wrap(binary(this.ctx, 'add', sa, sb), a.shape);
  }

  sub(a: Tensor, b: Tensor): Tensor {
    const [sa, sb] = this.like(a, b, 'sub');
    return this.wrap(binary(this.ctx, 'sub', sa, sb), a.shape);
  }

  scaleColumns(x: Tensor, s: Tensor): Tensor {
    const sx = this.st(x, 'scaleColumns');
    if (numel(s.shape) !== sx.cols) fail(`scaleColumns: ${numel(s.shape)} scales for ${sx.cols} columns`);
    return this.wrap(scaleColumns(this.ctx, sx, this.st(s, 'scaleColumns')), x.shape);
  }

  kron(x: Tensor, left: Tensor, right: Tensor): Tensor {
    checkKron(x, left, right);
    const out = kron(this.ctx, this.st(x, 'kron'), this.st(left, 'kron'), this.st(right, 'kron'));
    return this.wrap(out, x.shape);
  }

  scaleRows(x: Tensor, s: Tensor): Tensor {
    const sx = this.st(x, 'scaleRows');
    const ss = this.st(s, 'scaleRows');
    if (ss.rows * ss.cols !== sx.rows) fail(`scaleRows: ${ss.rows * ss.cols} scales for ${sx.rows} rows`);
    const vec =
      ss.rows === sx.rows ? ss : { ...ss, rows: sx.rows, cols: 1, rowsPerChunk: Math.max(sx.rows, 1) };
    return this.wrap(scaleRows(this.ctx, sx, vec), x.shape);
  }

  klDiv(p: Tensor, q: Tensor): Tensor {
    const [M] = checkKlShapes(p, q);
    return this.wrap(klDiv(this.ctx, this.st(p, 'klDiv'), this.st(q, 'klDiv')), [M, 2]);
  }

  nll(logits: Tensor, targets: Int32Array): Tensor {
    const s = this.st(logits, 'nll');
    if (targets.length !== s.rows) fail(`nll: ${targets.length} targets for ${s.rows} rows`);
    return this.wrap(nll(this.ctx, s, targets), [s.rows]);
  }

  fakeQuant(x: Tensor, spec: FormatSpec): Tensor {
    const lastDim = x.shape.length === 0 ? 1 : x.shape[x.shape.length - 1];
    if (isBlockFormat(spec))
      fail(
        `fakeQuant: ${spec.type} has no WebGPU kernel; quantize its weights through fakeQuantWeight (host) or on the CPU backend`,
      );
    const storage = this.st(x, 'fakeQuant');
    return this.wrap(
      spec.kind === 'ggml'
        ? ggmlFakeQuant(this.ctx, storage, lastDim, spec)
        : fakeQuant(this.ctx, storage, lastDim, spec),
      x.shape,
    );
  }

  searchFakeQuant(x: Tensor, spec: GgmlSpec): Tensor | undefined {
    const lastDim = x.shape[x.shape.length - 1] ?? 1;
    const search = SEARCH_IQ4_TYPES.includes(spec.type)
      ? iq4SearchFakeQuant
      : SEARCH_LATTICE_TYPES.includes(spec.type)
        ? latticeSearchFakeQuant
        : SEARCH_IQ1_TYPES.includes(spec.type)
          ? iq1SearchFakeQuant
          : SEARCH_K_TYPES.includes(spec.type)
            ? kquantSearchFakeQuant
            : undefined;
    if (!search || lastDim % ggmlBlockLayout(spec.type as GgmlBlockType).values !== 0) return undefined;
    return this.wrap(search(this.ctx, this.st(x, 'searchFakeQuant'), lastDim, spec), x.shape);
  }

  columnStats(x: Tensor): Promise<ColumnStats> {
    return columnStats(this.ctx, this.st(x, 'columnStats'));
  }

  sliceRows(x: Tensor, start: number, end: number): Tensor {
    return this.wrap(sliceRows(this.ctx, this.st(x, 'sliceRows'), start, end), [
      end - start,
      ...x.shape.slice(1),
    ]);
  }

  concatRows(parts: readonly Tensor[]): Tensor {
    const out = concatRows(
      this.ctx,
      parts.map((p) => this.st(p, 'concatRows')),
    );
    return this.wrap(out, [out.rows, ...parts[0].shape.slice(1)]);
  }

  transpose(x: Tensor): Tensor {
    if (x.shape.length !== 2) fail(`transpose: expected a 2-D tensor, got ${shapeString(x.shape)}`);
    return this.wrap(transpose(this.ctx, this.st(x, 'transpose')), [x.shape[1], x.shape[0]]);
  }

  toF32(x: Tensor): Tensor {
    return this.wrap(toF32(this.ctx, this.st(x, 'toF32')), x.shape);
  }

  sumSquaredDiff(a: Tensor, b: Tensor): Promise<number> {
    const [sa, sb] = this.like(a, b, 'sumSquaredDiff');
    return sumSquaredDiff(this.ctx, sa, sb);
  }
}

function hostF32(bytes: Uint8Array, dtype: DType): Float32Array {
  const buf = bytes.buffer;
  switch (dtype) {
    case 'f32':
      return new Float32Array(buf, bytes.byteOffset, bytes.byteLength / 4);
    case 'bf16':
      return bf16ToF32(new Uint16Array(buf, bytes.byteOffset, bytes.byteLength / 2));
    case 'f16':
      return f16ToF32(new Uint16Array(buf, bytes.byteOffset, bytes.byteLength / 2));
    case 'i32':
      return Float32Array.from(new Int32Array(buf, bytes.byteOffset, bytes.byteLength / 4));
    case 'i8':
      return Float32Array.from(new Int8Array(buf, bytes.byteOffset, bytes.byteLength));
    case 'u8':
      return Float32Array.from(bytes);
  }
}
