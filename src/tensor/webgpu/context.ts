/**
 * The WebGPU plumbing under the backend: device limits, a buffer pool, a pipeline cache, lazily
 * submitted command encoders, uniform parameters, and the row "segments" that let every op work on
 * tensors larger than one storage binding (or one buffer).
 *
 * Tensor storage: a tensor is viewed as `rows x cols` (rows = shape[0], cols = the rest; a 1-D tensor
 * is `n x 1`) and stored as one or more GPUBuffers ("chunks") of whole rows, each at most
 * `maxBufferBytes`. A kernel never binds more than `maxBindingBytes` of one buffer: ops walk the rows
 * in segments, each binding a window (aligned to minStorageBufferOffsetAlignment) of every tensor
 * involved and passing the element offset of the segment's first row inside that window.
 */
import { fail } from '../../errors.ts';
import type { DType } from '../tensor.ts';
import { BindGroupCache, UniformCache } from './bind-cache.ts';
import { KernelProfiler, type KernelTime } from './profile.ts';

export const ELEM_BYTES: Record<DType, number> = { f32: 4, i32: 4, f16: 2, bf16: 2, i8: 1, u8: 1 };

export interface ContextOptions {
  /** largest window of one buffer a kernel binds (default: the device limit) */
  maxBindingBytes?: number;
  /** largest single buffer (default: the device limit) */
  maxBufferBytes?: number;
  /** bytes of freed buffers kept for reuse (default 1 GiB) */
  poolBytes?: number;
  /** dispatches recorded before the encoder is submitted (default 64) */
  dispatchesPerSubmit?: number;
  /**
   * dispatches in the first submit after the host waited for the GPU (a read): later submits double
   * up to dispatchesPerSubmit, so the GPU starts on a decode step while the host still records it
   * (default: dispatchesPerSubmit, no ramp)
   */
  firstSubmit?: number;
  /** reuse bind groups and uniform parameters across dispatches (default true; off only to measure) */
  reuseBindGroups?: boolean;
  /** 64 KiB pages of reused uniform parameters (default 32) */
  uniformPages?: number;
  /** how the GEMV kernels read their operands (default DEFAULT_GEMV) */
  gemv?: GemvTuning;
  /** keys a decode attention workgroup scores at once, rounded down to a power of two (default DEFAULT_ATTENTION_KEYS) */
  attentionKeys?: number;
  /** workgroups a decode attention aims for, splitting the keys to get them; 1: never split (default DEFAULT_ATTENTION_WORKGROUPS) */
  attentionWorkgroups?: number;
}

/** How the matrix-vector kernels read their operands (decoding; see matmul.ts's GEMV loops). */
export interface GemvTuning {
  /**
   * read x (f32) and dense f32/16-bit weights four values a load, consecutive lanes on consecutive
   * chunks, where K and the offsets are multiples of 4 (the default); off: the scalar loops. Also
   * the cached (decode) attention's key and value rows, whose sums it does not change.
   */
  chunks: boolean;
  /** chunks (packed weights: words) a lane loads before it multiplies them; the sums do not depend on it */
  unroll: number;
}
export const DEFAULT_GEMV: GemvTuning = { chunks: true, unroll: 2 };
/** Keys a decode attention workgroup scores at once unless ContextOptions.attentionKeys says otherwise. */
export const DEFAULT_ATTENTION_KEYS = 64;
/** Workgroups a decode attention aims for unless ContextOptions.attentionWorkgroups says otherwise. */
export const DEFAULT_ATTENTION_WORKGROUPS = 256;

const STORAGE_USAGE = 0x80 | 0x04 | 0x08; // STORAGE | COPY_SRC | COPY_DST
const UNIFORM_USAGE = 0x40; // UNIFORM
const MAP_READ_COPY_DST = 0x01 | 0x08; // MAP_READ | COPY_DST
const ARENA_BYTES = 1 << 16;
/** small host data (ids, positions) in mapped storage arenas; not counted as tensor storage */
const DATA_ARENA_USAGE = 0x80 | 0x08; // STORAGE | COPY_DST

/**
 * Buffers mapped at creation that small host data is written into, sub-allocated in order; they are
 * unmapped when the commands using them are submitted and destroyed after.
 */
class Arena {
  private buffers: GPUBuffer[] = [];
  private current: { buffer: GPUBuffer; view: DataView } | undefined;
  private used = ARENA_BYTES;

  constructor(
    private readonly create: (size: number) => GPUBuffer,
    private readonly align: number,
  ) {}

  get empty(): boolean {
    return this.buffers.length === 0;
  }

  put(size: number, write: (view: DataView, offset: number) => void): GPUBufferBinding {
    if (size > ARENA_BYTES) {
      const own = this.create(size);
      this.buffers.push(own);
      write(new DataView(own.getMappedRange()), 0);
      return { buffer: own, offset: 0, size };
    }
    if (!this.current || this.used + size > ARENA_BYTES) {
      const buffer = this.create(ARENA_BYTES);
      this.buffers.push(buffer);
      this.current = { buffer, view: new DataView(buffer.getMappedRange()) };
      this.used = 0;
    }
    const offset = this.used;
    write(this.current.view, offset);
    this.used = Math.ceil((offset + size) / this.align) * this.align;
    return { buffer: this.current.buffer, offset, size };
  }

  unmap(): void {
    for (const b of this.buffers) b.unmap();
  }

  destroy(): void {
    for (const b of this.buffers) b.destroy();
    this.buffers = [];
    this.current = undefined;
    this.used = ARENA_BYTES;
  }
}

/** Size classes: powers of two below 64 KiB, then steps of 1/8 of the power of two (<= 12.5% waste). */
export function sizeClass(bytes: number): number {
  const b = Math.max(256, Math.ceil(bytes / 4) * 4);
  if (b <= 65536) return 2 ** Math.ceil(Math.log2(b));
  const p = 2 ** Math.floor(Math.log2(b));
  const step = p / 8;
  return Math.ceil(b / step) * step;
}

function classFloor(bytes: number): number {
  if (bytes <= 65536) return 2 ** Math.floor(Math.log2(bytes));
  const p = 2 ** Math.floor(Math.log2(bytes));
  const step = p / 8;
  return Math.floor(bytes / step) * step;
}

export type BindingKind = 'uniform' | 'read' | 'write';

/** A compute kernel: WGSL text, entry point `main`, bindings 0.. of group 0 in the given order. */
export interface Kernel {
  key: string;
  code: () => string;
  bindings: readonly BindingKind[];
}

const builtKernels = new Map<string, Kernel>();

/**
 * The kernel of `key`, made once: decoding asks for its kernels at every dispatch, and a key names
 * one kernel (the pipeline cache relies on it too).
 */
export function kernelOnce(key: string, make: (key: string) => Kernel): Kernel {
  let k = builtKernels.get(key);
  if (!k) builtKernels.set(key, (k = make(key)));
  return k;
}

/** Builder for a uniform struct of 4-byte scalar fields, in declaration order. */
export class Params {
  private readonly words: number[] = [];
  private readonly kinds: ('u' | 'i' | 'f')[] = [];
  /** the words as text, built as they are added: the uniform cache looks every dispatch's parameters up */
  private text = '';
  u(x: number): this {
    return this.push('u', x >>> 0);
  }
  i(x: number): this {
    return this.push('i', x | 0);
  }
  f(x: number): this {
    return this.push('f', x);
  }
  private push(kind: 'u' | 'i' | 'f', w: number): this {
    this.words.push(w);
    this.kinds.push(kind);
    this.text += `${kind}${Object.is(w, -0) ? '-0' : w}`;
    return this;
  }
  /** identifies the bytes writeTo writes (-0 apart from 0) */
  key(): string {
    return this.text;
  }
  get byteLength(): number {
    return Math.max(16, Math.ceil((this.words.length * 4) / 16) * 16);
  }
  writeTo(view: DataView, offset: number): void {
    this.words.forEach((w, k) => {
      const kind = this.kinds[k];
      if (kind === 'f') view.setFloat32(offset + 4 * k, w, true);
      else if (kind === 'i') view.setInt32(offset + 4 * k, w, true);
      else view.setUint32(offset + 4 * k, w, true);
    });
  }
}

/** Storage of one tensor: whole rows in one or more buffers. */
export interface Storage {
  readonly rows: number;
  readonly cols: number;
  readonly dtype: DType;
  readonly rowsPerChunk: number;
  readonly chunks: GPUBuffer[];
}

export function layoutOf(shape: readonly number[]): { rows: number; cols: number } {
  if (shape.length === 0) return { rows: 1, cols: 1 };
  const rows = shape[0];
  let cols = 1;
  for (let i = 1; i < shape.length; i++) cols *= shape[i];
  return { rows, cols };
}

/** A bound window of one tensor for one segment. */
export interface Window {
  binding: GPUBufferBinding;
  /** element offset, inside the binding, of the segment's first row */
  off: number;
}

export interface Segment {
  /** first row of the segment, relative to the walk's start */
  r0: number;
  n: number;
  w: Window[];
}

export interface SegmentPart {
  s: Storage;
  /** row of `s` that corresponds to row 0 of the walk */
  row0: number;
}

export class GpuContext {
  readonly maxBindingBytes: number;
  readonly maxBufferBytes: number;
  readonly align: number;
  readonly uniformAlign: number;
  readonly maxWorkgroupStorage: number;
  readonly maxInvocations: number;
  readonly maxStorageBuffers: number;
  readonly maxGroups: number;
  private readonly poolLimit: number;
  private readonly perSubmit: number;
  private readonly firstSubmit: number;
  /** dispatches the current submit takes */
  private submitAt: number;

  private readonly free = new Map<number, GPUBuffer[]>();
  private pooledBytes = 0;
  private readonly pipelines = new Map<
    string,
    { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout }
  >();

  private encoder: GPUCommandEncoder | undefined;
  private pass: GPUComputePassEncoder | undefined;
  private dispatches = 0;
  private readonly uniforms: Arena;
  private readonly hostArena: Arena;
  private readonly uniformCache: UniformCache | undefined;
  readonly bindGroups: BindGroupCache | undefined;
  /** the window `whole` computed for a storage (weights are bound whole by every decode GEMV) */
  private readonly wholeWindows = new WeakMap<Storage, Window>();
  /** bytes allocated through this context and not destroyed (pooled buffers included), and their peak */
  liveBytes = 0;
  peakBytes = 0;
  /** dispatches recorded since the context was made (benchmarks count them per token) */
  recorded = 0;
  /** how the GEMV kernels read their operands (benchmarks switch it between runs) */
  gemv: GemvTuning;
  /** keys a decode attention workgroup scores at once (ContextOptions.attentionKeys) */
  attentionKeys: number;
  /** workgroups a decode attention aims for (ContextOptions.attentionWorkgroups) */
  attentionWorkgroups: number;

  constructor(
    readonly device: GPUDevice,
    readonly features: ReadonlySet<string>,
    readonly adapterInfo: GPUAdapterInfo | undefined,
    opts: ContextOptions = {},
  ) {
    const lim = device.limits;
    const bindLimit = Math.floor(lim.maxStorageBufferBindingSize / 4) * 4;
    this.maxBindingBytes = Math.min(bindLimit, Math.floor((opts.maxBindingBytes ?? bindLimit) / 4) * 4);
    const bufLimit = Math.floor(lim.maxBufferSize / 4) * 4;
    this.maxBufferBytes = Math.min(bufLimit, Math.floor((opts.maxBufferBytes ?? bufLimit) / 4) * 4);
    this.align = lim.minStorageBufferOffsetAlignment;
    this.uniformAlign = Math.max(16, lim.minUniformBufferOffsetAlignment);
    this.maxWorkgroupStorage = lim.maxComputeWorkgroupStorageSize;
    this.maxInvocations = lim.maxComputeInvocationsPerWorkgroup;
    this.maxStorageBuffers = lim.maxStorageBuffersPerShaderStage;
    this.maxGroups = lim.maxComputeWorkgroupsPerDimension;
    this.poolLimit = opts.poolBytes ?? 1 << 30;
    this.perSubmit = opts.dispatchesPerSubmit ?? 64;
    this.firstSubmit = Math.min(opts.firstSubmit ?? this.perSubmit, this.perSubmit);
    this.submitAt = this.firstSubmit;
    this.gemv = opts.gemv ?? DEFAULT_GEMV;
    this.attentionKeys = opts.attentionKeys ?? DEFAULT_ATTENTION_KEYS;
    if (!(this.attentionKeys >= 1)) fail(`WebGPU: attentionKeys ${this.attentionKeys} must be at least 1`);
    this.attentionWorkgroups = opts.attentionWorkgroups ?? DEFAULT_ATTENTION_WORKGROUPS;
    if (!(this.attentionWorkgroups >= 1))
      fail(`WebGPU: attentionWorkgroups ${this.attentionWorkgroups} must be at least 1`);
    if (opts.reuseBindGroups ?? true) {
      this.bindGroups = new BindGroupCache();
      this.uniformCache = new UniformCache(device, this.uniformAlign, opts.uniformPages ?? 32);
    }
    const transient = (buffer: GPUBuffer) => {
      this.bindGroups?.markTransient(buffer);
      return buffer;
    };
    this.uniforms = new Arena((size) => transient(this.create(size, UNIFORM_USAGE, true)), this.uniformAlign);
    this.hostArena = new Arena((size) => transient(this.create(size, DATA_ARENA_USAGE, true)), this.align);
    if (this.maxBindingBytes < 1024) fail(`WebGPU: binding limit ${this.maxBindingBytes} bytes is too small`);
    // dawn.node aborts the process when an uncapturederror listener is installed (lavapipe,
    // webgpu 0.6), so errors are collected by an error scope kept open between host reads.
    this.openScopes();
  }

  private dummyBuffer: GPUBuffer | undefined;

  /** A small zero buffer bound where a kernel's optional input is absent. */
  dummy(): GPUBufferBinding {
    this.dummyBuffer ??= this.createWith(new Uint8Array(16));
    return { buffer: this.dummyBuffer, offset: 0, size: 16 };
  }

  private openScopes(): void {
    this.device.pushErrorScope('out-of-memory');
    this.device.pushErrorScope('validation');
  }

  /** Throws the first device error (validation, out of memory) since the last check. */
  async checkError(): Promise<void> {
    // pop both scopes and reopen them before awaiting: concurrent host reads each check errors,
    // and interleaved pops would otherwise pop scopes that are not there
    const validation = this.device.popErrorScope();
    const oom = this.device.popErrorScope();
    this.openScopes();
    const err = (await validation) ?? (await oom);
    if (err) throw new Error(`WebGPU error: ${err.message.split('\n')[0]}`);
  }

  // ---------------------------------------------------------------- buffers

  /** A storage buffer of at least `bytes` bytes (from the pool when possible). */
  alloc(bytes: number): GPUBuffer {
    if (bytes > this.maxBufferBytes)
      fail(`WebGPU: ${bytes} bytes exceed the buffer limit ${this.maxBufferBytes}`);
    let size = sizeClass(bytes);
    if (size > this.maxBufferBytes) size = Math.ceil(bytes / 4) * 4;
    const list = this.free.get(size);
    const reused = list?.pop();
    if (reused) {
      this.pooledBytes -= reused.size;
      return reused;
    }
    return this.create(size, STORAGE_USAGE);
  }

  private create(size: number, usage: number, mappedAtCreation = false): GPUBuffer {
    let buf: GPUBuffer;
    try {
      buf = this.device.createBuffer({ size, usage, mappedAtCreation });
    } catch (e) {
      return fail(`WebGPU: could not allocate ${size} bytes: ${(e as Error).message}`);
    }
    if (usage === STORAGE_USAGE) {
      this.liveBytes += size;
      this.peakBytes = Math.max(this.peakBytes, this.liveBytes);
    }
    return buf;
  }

  /** A new storage buffer holding `bytes` (padded to 4 bytes), written through a mapping (no queue write). */
  createWith(bytes: Uint8Array): GPUBuffer {
    const size = Math.max(4, Math.ceil(bytes.byteLength / 4) * 4);
    const buf = this.create(size, STORAGE_USAGE, true);
    new Uint8Array(buf.getMappedRange()).set(bytes);
    buf.unmap();
    return buf;
  }

  /** Returns a buffer to the pool (or destroys it when the pool is full). Safe with pending work. */
  release(buf: GPUBuffer): void {
    const key = classFloor(buf.size);
    if (this.pooledBytes + buf.size > this.poolLimit) {
      this.flush();
      this.liveBytes -= buf.size;
      this.bindGroups?.forget(buf);
      buf.destroy();
      return;
    }
    let list = this.free.get(key);
    if (!list) this.free.set(key, (list = []));
    list.push(buf);
    this.pooledBytes += buf.size;
  }

  /** Destroys every pooled buffer. */
  trim(): void {
    this.flush();
    for (const list of this.free.values())
      for (const b of list) {
        this.liveBytes -= b.size;
        this.bindGroups?.forget(b);
        b.destroy();
      }
    this.free.clear();
    this.pooledBytes = 0;
  }

  // -------------------------------------------------------------- storage

  allocStorage(rows: number, cols: number, dtype: DType): Storage {
    return this.chunked(rows, cols, dtype, (_r, n, rowBytes) => this.alloc(Math.max(4, n * rowBytes)));
  }

  /** Storage filled with host bytes (row-major), each chunk created mapped. */
  uploadStorage(rows: number, cols: number, dtype: DType, bytes: Uint8Array): Storage {
    return this.chunked(rows, cols, dtype, (r, n, rowBytes) =>
      this.createWith(bytes.subarray(r * rowBytes, (r + n) * rowBytes)),
    );
  }

  /** Storage of whole rows in buffers of at most maxBufferBytes; chunk(first row, rows, row bytes) makes one. */
  private chunked(
    rows: number,
    cols: number,
    dtype: DType,
    chunk: (r: number, n: number, rowBytes: number) => GPUBuffer,
  ): Storage {
    const rowBytes = cols * ELEM_BYTES[dtype];
    if (rowBytes > this.maxBufferBytes) fail(`WebGPU: a row of ${rowBytes} bytes exceeds the buffer limit`);
    const rowsPerChunk =
      rowBytes === 0 ? Math.max(rows, 1) : Math.max(1, Math.floor(this.maxBufferBytes / rowBytes));
    const chunks: GPUBuffer[] = [];
    for (let r = 0; r < Math.max(rows, 1); r += rowsPerChunk)
      chunks.push(chunk(r, Math.min(rowsPerChunk, rows - r), rowBytes));
    return { rows, cols, dtype, rowsPerChunk, chunks };
  }

  releaseStorage(s: Storage): void {
    for (const b of s.chunks) this.release(b);
    s.chunks.length = 0;
    this.wholeWindows.delete(s);
  }

  /** Rows from `part.row0` on that fit one window of one chunk (at least 1). */
  private fit(s: Storage, row: number): { chunk: number; local: number; n: number } {
    const chunk = Math.floor(row / s.rowsPerChunk);
    const local = row - chunk * s.rowsPerChunk;
    const chunkRows = Math.min(s.rowsPerChunk, s.rows - chunk * s.rowsPerChunk);
    const rowBytes = s.cols * ELEM_BYTES[s.dtype];
    if (rowBytes === 0) return { chunk, local, n: chunkRows - local };
    const start = Math.floor((local * rowBytes) / this.align) * this.align;
    // rows r with roundUp4((local + r) * rowBytes) - start <= maxBinding
    const n = Math.floor((start + this.maxBindingBytes - 3) / rowBytes) - local;
    if (n < 1) fail(`WebGPU: a row of ${rowBytes} bytes exceeds the binding limit ${this.maxBindingBytes}`);
    return { chunk, local, n: Math.min(n, chunkRows - local) };
  }

  window(s: Storage, chunk: number, local: number, n: number): Window {
    const eb = ELEM_BYTES[s.dtype];
    const rowBytes = s.cols * eb;
    const buffer = s.chunks[chunk];
    if (!buffer) fail('WebGPU: tensor used after dispose');
    const startByte = local * rowBytes;
    const start = Math.floor(startByte / this.align) * this.align;
    const end = Math.min(buffer.size, Math.max(start + 4, Math.ceil(((local + n) * rowBytes) / 4) * 4));
    return { binding: { buffer, offset: start, size: end - start }, off: (startByte - start) / eb };
  }

  /**
   * Splits `n` rows, walked in step by every part, into segments in which each part lies in one
   * window; segment lengths are multiples of `multiple` (except where the walk ends).
   */
  segments(n: number, parts: readonly SegmentPart[], multiple = 1, what = 'op'): Segment[] {
    const out: Segment[] = [];
    let r = 0;
    while (r < n || (n === 0 && out.length === 0)) {
      let step = Math.max(n - r, 0);
      const fits = parts.map((p) => this.fit(p.s, p.row0 + r));
      for (const f of fits) step = Math.min(step, f.n);
      if (step < n - r && multiple > 1) {
        step = Math.floor(step / multiple) * multiple;
        if (step === 0)
          fail(
            `WebGPU ${what}: ${multiple} rows of one unit do not fit the binding limit ${this.maxBindingBytes}`,
          );
      }
      out.push({
        r0: r,
        n: step,
        w: parts.map((p, k) => this.window(p.s, fits[k].chunk, fits[k].local, Math.max(step, 1))),
      });
      if (n === 0) break;
      r += step;
    }
    return out;
  }

  /** The whole tensor as one window (vectors, small tables); fails when it does not fit one. */
  whole(s: Storage, what: string): Window {
    return (
      this.wholeIfFits(s) ?? fail(`WebGPU ${what}: a ${s.rows}x${s.cols} tensor does not fit one binding`)
    );
  }

  /** The whole tensor as one window, or undefined when it does not fit one. */
  wholeIfFits(s: Storage): Window | undefined {
    let w = this.wholeWindows.get(s);
    if (!w) {
      const segs = this.segments(s.rows, [{ s, row0: 0 }]);
      if (segs.length !== 1) return undefined;
      w = segs[0].w[0];
      this.wholeWindows.set(s, w);
    }
    return w;
  }

  // ------------------------------------------------------------ pipelines

  pipeline(k: Kernel): { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout } {
    let p = this.pipelines.get(k.key);
    if (!p) {
      const layout = this.bindGroupLayout(k);
      const module = this.device.createShaderModule({ code: k.code(), label: k.key });
      const pipeline = this.device.createComputePipeline({
        label: k.key,
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: 'main' },
      });
      p = { pipeline, layout };
      this.pipelines.set(k.key, p);
    }
    return p;
  }

  /**
   * A kernel's bindings as a layout. A uniform at binding 0 takes a dynamic offset: bind groups are
   * cached without it, so parameters that change every decode step (a position, the cached length)
   * move only the offset instead of needing a new bind group.
   */
  private bindGroupLayout(k: Kernel): GPUBindGroupLayout {
    return this.device.createBindGroupLayout({
      entries: k.bindings.map((kind, binding) => ({
        binding,
        visibility: 4, // COMPUTE
        buffer:
          kind === 'uniform'
            ? { type: 'uniform', hasDynamicOffset: binding === 0 }
            : { type: kind === 'read' ? 'read-only-storage' : 'storage' },
      })),
    });
  }

  /** Compiles a kernel asynchronously; resolves to an error message or undefined. */
  async tryCompile(k: Kernel): Promise<string | undefined> {
    try {
      this.device.pushErrorScope('validation');
      const module = this.device.createShaderModule({ code: k.code(), label: k.key });
      const info = await module.getCompilationInfo();
      const errors = info.messages.filter((m) => m.type === 'error');
      const scopeErr = await this.device.popErrorScope();
      if (errors.length > 0) return errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ');
      if (scopeErr) return scopeErr.message;
      const layout = this.bindGroupLayout(k);
      const pipeline = await this.device.createComputePipelineAsync({
        label: k.key,
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: 'main' },
      });
      this.pipelines.set(k.key, { pipeline, layout });
      return undefined;
    } catch (e) {
      return (e as Error).message;
    }
  }

  // ------------------------------------------------------------- encoding

  private enc(): GPUCommandEncoder {
    this.encoder ??= this.device.createCommandEncoder();
    return this.encoder;
  }

  private params(p: Params): GPUBufferBinding {
    const write = (view: DataView, offset = 0) => p.writeTo(view, offset);
    return this.uniformCache?.get(p.key(), p.byteLength, write) ?? this.uniforms.put(p.byteLength, write);
  }

  /**
   * Small host data a kernel reads (token ids, positions), valid for the work recorded before the next
   * flush: written into a mapped arena, so no buffer is created per call and no queue write can race
   * the commands already recorded.
   */
  hostData(bytes: Uint8Array): GPUBufferBinding {
    const size = Math.max(4, Math.ceil(bytes.byteLength / 4) * 4);
    return this.hostArena.put(size, (view, offset) =>
      new Uint8Array(view.buffer, view.byteOffset + offset, bytes.byteLength).set(bytes),
    );
  }

  /** Records one dispatch. `bindings` follow the kernel's order (the uniform, if any, is `params`). */
  dispatch(
    k: Kernel,
    params: Params | undefined,
    bindings: GPUBufferBinding[],
    grid: readonly number[],
  ): void {
    const [x, y = 1, z = 1] = grid;
    if (x === 0 || y === 0 || z === 0) return;
    if (x > this.maxGroups || y > this.maxGroups || z > this.maxGroups)
      fail(`WebGPU ${k.key}: grid ${x}x${y}x${z} exceeds ${this.maxGroups} workgroups per dimension`);
    const { pipeline, layout } = this.pipeline(k);
    let all = params ? [this.params(params), ...bindings] : bindings;
    if (all.length !== k.bindings.length)
      throw new Error(`${k.key}: ${all.length} bindings for ${k.bindings.length}`);
    const offsets: number[] = [];
    if (k.bindings[0] === 'uniform') {
      const { buffer, offset = 0, size } = all[0];
      offsets.push(offset);
      all = [{ buffer, offset: 0, size }, ...all.slice(1)];
    }
    const create = () =>
      this.device.createBindGroup({
        layout,
        entries: all.map((resource, binding) => ({ binding, resource })),
      });
    const group = this.bindGroups ? this.bindGroups.get(k.key, all, create) : create();
    if (this.profiler) {
      if (this.profiler.full) this.flush();
      this.pass?.end();
      this.pass = this.enc().beginComputePass({ timestampWrites: this.profiler.writes(k.key) });
    }
    this.pass ??= this.enc().beginComputePass();
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, group, offsets);
    this.pass.dispatchWorkgroups(x, y, z);
    if (this.profiler) {
      this.pass.end();
      this.pass = undefined;
    }
    this.recorded++;
    if (++this.dispatches >= this.submitAt) this.flush();
  }

  /** Records a buffer-to-buffer copy (sizes and offsets multiples of 4). */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number): void {
    if (size === 0) return;
    this.pass?.end();
    this.pass = undefined;
    this.enc().copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
  }

  /** Submits everything recorded so far. */
  flush(): void {
    if (!this.encoder && this.uniforms.empty && this.hostArena.empty) return;
    this.pass?.end();
    this.pass = undefined;
    if (this.encoder) this.profiler?.resolve(this.encoder);
    this.uniforms.unmap();
    this.hostArena.unmap();
    const cmd = this.encoder?.finish();
    this.encoder = undefined;
    if (cmd) this.device.queue.submit([cmd]);
    this.uniforms.destroy();
    this.hostArena.destroy();
    this.dispatches = 0;
    this.submitAt = Math.min(2 * this.submitAt, this.perSubmit);
    this.uniformCache?.submitted();
  }

  /** Copies ranges of buffers to the host: one staging buffer, one submit, one mapAsync. */
  async readBytes(
    ranges: readonly { buffer: GPUBuffer; offset: number; size: number }[],
  ): Promise<Uint8Array> {
    const total = ranges.reduce((n, r) => n + r.size, 0);
    const staging = this.create(Math.max(4, Math.ceil(total / 4) * 4), MAP_READ_COPY_DST);
    let at = 0;
    for (const r of ranges) {
      this.copy(r.buffer, r.offset, staging, at, r.size);
      at += r.size;
    }
    this.flush();
    try {
      await staging.mapAsync(1 /* READ */);
      this.submitAt = this.firstSubmit;
    } catch (e) {
      await this.checkError();
      throw new Error(`WebGPU: reading back failed: ${(e as Error).message}`);
    }
    const out = new Uint8Array(total);
    out.set(new Uint8Array(staging.getMappedRange(), 0, total));
    staging.unmap();
    staging.destroy();
    await this.checkError();
    return out;
  }

  private profiler: KernelProfiler | undefined;

  /** Times every dispatch from now on (one pass each) until stopProfile; needs 'timestamp-query'. */
  startProfile(): void {
    if (!this.features.has('timestamp-query'))
      fail('WebGPU profile: the device has no timestamp-query feature');
    this.profiler ??= new KernelProfiler(this.device, this.perSubmit);
  }

  /** Stops timing; GPU time per kernel key, most first. */
  async stopProfile(): Promise<KernelTime[]> {
    const profiler = this.profiler;
    if (!profiler) return [];
    this.flush();
    this.profiler = undefined;
    const times = await profiler.stop();
    await this.checkError();
    return times;
  }

  /** Resolves when all submitted work has finished. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.submitAt = this.firstSubmit;
    await this.checkError();
  }
}

/** A binding of the first `bytes` of a raw buffer, rounded up to 8 bytes. */
export function wholeBuffer(buf: GPUBuffer, bytes: number): GPUBufferBinding {
  return { buffer: buf, offset: 0, size: Math.max(8, Math.ceil(bytes / 8) * 8) };
}

/** Splits `count` workgroups into a 2-D grid within the per-dimension limit. */
export function grid2(count: number, max = 65535): [number, number] {
  if (count <= max) return [Math.max(count, 0), 1];
  const y = Math.ceil(count / max);
  return [Math.ceil(count / y), y];
}
