/**
 * The Tensor + Backend API every algorithm is written against (DESIGN.md "Layers").
 *
 * Ops are synchronous and return new device-resident tensors; the only way back to the host is
 * the explicit, asynchronous `read`. This maps directly onto WebGPU (encode now, read later) and
 * onto the CPU backend (work happens at once, `read` resolves immediately).
 *
 * Shapes: activations are 2-D [rows, features] with rows = batch x sequence; linear weights use the
 * Hugging Face nn.Linear layout [out, in].
 */
import { fail } from '../errors.ts';
import type { FormatSpec, GgmlSpec, IntSpec } from '../formats/spec.ts';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'i8' | 'u8';

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly backend: Backend;
  /** Frees device memory now (WebGPU); a no-op where the garbage collector suffices. */
  dispose(): void;
}

export type HostArray = Float32Array | Uint16Array | Int32Array | Int8Array | Uint8Array;

export interface AttentionShape {
  /** Independent sequences in the batch; rows = batch x seqLen. */
  batch: number;
  seqLen: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/** Attention of new rows of one sequence against a KV cache (generation). */
export interface CachedAttentionShape {
  /** new rows of q, at positions past .. past + queries - 1 */
  queries: number;
  /** cache rows before them; keys [0, past + queries) are valid */
  past: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

export interface RopeTable {
  /** inverse frequencies, headDim / 2 of them, already adjusted for rope_scaling */
  invFreq: Float32Array;
  /** multiplies cos and sin (YaRN-style attention scaling; 1 otherwise) */
  attentionScaling: number;
}

export interface ColumnStats {
  /** per column max |x| */
  absMax: Float32Array;
  /** per column mean |x| */
  absMean: Float32Array;
}

/**
 * An RMSNorm a fused op applies to its input x first (the decoder's norms before q/k/v and gate/up):
 * the op then equals itself on rmsnorm(x, weight, eps).
 */
export interface RmsNorm {
  weight: Tensor;
  eps: number;
}

/** Rows quantized to integer codes: i8 codes [rows, cols] and one f32 scale a row (x per token, W per output channel). */
export interface IntRows {
  codes: Tensor;
  scales: Tensor;
}

/** A KV cache layer's key and value tensors and the row new positions go to (qkvRope's `into`). */
export interface KvRows {
  k: Tensor;
  v: Tensor;
  row: number;
}

/**
 * The optional Backend ops that fuse several others (decoding); a backend without them, or one that
 * answers undefined, runs the separate ops with the same results.
 */
export const FUSED_OPS = [
  'qkvRope',
  'gateUp',
  'linearAdd',
  'linearInt8',
  'qkvRopeInt8',
  'gateUpInt8',
  'rmsnormQuantizeRowsInt8',
] as const satisfies readonly (keyof Backend)[];

/**
 * Integer weight codes packed in 32-bit words, decoded inside the GEMM:
 * w[n, k] = (code[n, k] - zeros[g]) * scales[g] with g = n * (cols / group) + (groupOf[k] or k / group).
 */
export interface PackedWeight {
  /** i32 tensor [rows, cols * codeBits / 32]: code k of a row sits at bits (k % per) * codeBits of word k / per */
  codes: Tensor;
  /** [rows * cols / group]: f32, or f16 where f16 holds every scale exactly (llama.cpp's fp16 d) */
  scales: Tensor;
  /**
   * f32 [rows * cols / group], or one number where every group has the same zero point (symmetric
   * INT: 2^(bits - 1); Q4_0 / Q8_0: their code offset; IQ grids: 0), so the device holds no array of it
   */
  zeros: Tensor | number;
  rows: number;
  cols: number;
  /** bits per stored code: 4 (formats of 2-4 bits) or 8 */
  codeBits: 4 | 8;
  /** columns sharing one scale (cols for per-row scales) */
  group: number;
  /** i32 [cols]: the scale group of each column when it is not k / group (GPTQ act_order g_idx) */
  groupOf?: Tensor;
  /** a non-linear grid (IQ4_NL / IQ4_XS): a weight is (levels[code] - zero) * scale instead */
  levels?: Int8Array;
}

/** The device tensors a packed weight holds: codes, scales, zeros where they are an array, g_idx. */
export function packedTensors(p: PackedWeight | undefined): Tensor[] {
  if (!p) return [];
  return [
    p.codes,
    p.scales,
    ...(typeof p.zeros === 'number' ? [] : [p.zeros]),
    ...(p.groupOf ? [p.groupOf] : []),
  ];
}

export interface Backend {
  readonly name: 'cpu' | 'webgpu';
  /**
   * Where kernels are compiled on their first use (a warm-up run moves that cost out of the first
   * request): the cached keys past which a decode step has run every kind of kernel it will run.
   */
  readonly warmUpKeys?: number;

  /** Copies host data to the device. bf16/f16 data is given as raw Uint16Array bits. */
  upload(data: HostArray, shape: readonly number[], dtype: DType): Tensor;
  /** Explicit host read, converted to f32 (integer dtypes keep their values). */
  read(t: Tensor): Promise<Float32Array>;

  /** y[M,N] = x[M,K] w[N,K]^T (+ bias[N]); x f32, w f32/bf16/f16, result f32. */
  linear(x: Tensor, w: Tensor, bias?: Tensor): Tensor;
  /** y[M,N] = x[M,K] w^T (+ bias) for integer-coded weights decoded in the GEMM (equal to linear over the decoded values). */
  linearPacked(x: Tensor, w: PackedWeight, bias?: Tensor): Tensor;
  /**
   * residual + linear(x, w, bias) in one op, equal to add(residual, linear(...)) (optional: WebGPU
   * adds it in the GEMM's store; the model adds where a backend lacks it).
   */
  linearAdd?(x: Tensor, w: Tensor | PackedWeight, residual: Tensor, bias?: Tensor): Tensor;
  /**
   * siluMul(linear(x, gate), linear(x, up)) in one op where the backend can (optional; undefined
   * where it does not apply, and the caller runs the three ops). With `norm`, of rmsnorm(x) instead
   * (undefined where the backend does not fuse the norm: the caller norms first).
   */
  gateUp?(
    x: Tensor,
    gate: Tensor | PackedWeight,
    up: Tensor | PackedWeight,
    norm?: RmsNorm,
  ): Tensor | undefined;
  /**
   * [rope(linear(x, wq)), rope(linear(x, wk)), linear(x, wv)] at positions first, first + 1, ... in
   * one op where the backend can (optional; undefined where it does not apply). With `norm`, of
   * rmsnorm(x) instead. With `into`, k and v may be written straight into into.k / into.v from row
   * into.row on: then those two tensors themselves are returned as k and v.
   */
  qkvRope?(
    x: Tensor,
    weights: readonly [Tensor | PackedWeight, Tensor | PackedWeight, Tensor | PackedWeight],
    first: number,
    headDim: number,
    table: RopeTable,
    norm?: RmsNorm,
    into?: KvRows,
  ): [Tensor, Tensor, Tensor] | undefined;
  /**
   * quantizeRowsInt8(rmsnorm(x, norm.weight, norm.eps), spec) in one op where the backend can
   * (optional; undefined where it does not apply).
   */
  rmsnormQuantizeRowsInt8?(x: Tensor, norm: RmsNorm, spec?: IntSpec): IntRows | undefined;
  /** gateUp over int8 codes: siluMul of the two scaled int8 products (optional; undefined where it does not apply). */
  gateUpInt8?(x: IntRows, gate: IntRows, up: IntRows): Tensor | undefined;
  /** qkvRope over int8 codes: the three scaled int8 products, q and k rotated (optional). */
  qkvRopeInt8?(
    x: IntRows,
    weights: readonly [IntRows, IntRows, IntRows],
    first: number,
    headDim: number,
    table: RopeTable,
    into?: KvRows,
  ): [Tensor, Tensor, Tensor] | undefined;
  /** c[M,N] = a[M,K] b[N,K]^T for i8 a and b, exact, as i32 (K a multiple of 4). */
  matmulInt8(a: Tensor, b: Tensor): Tensor;
  /**
   * Symmetric per-row INT of x [M,K] as i8 codes [M,K] and f32 scales [M], the grid of fakeQuant with
   * `spec` (its values are code x scale): INT8 per row when not given; any symmetric per-row INT spec
   * of at most 8 bits, with or without clip (W4A4 runs on the int8 GEMM this way). K a multiple of 4.
   */
  quantizeRowsInt8(x: Tensor, spec?: IntSpec): IntRows;
  /** f32(acc[m,n]) * rowScales[m] * colScales[n] (+ bias[n]) for an i32 acc [M,N]. */
  scaleInt32(acc: Tensor, rowScales: Tensor, colScales: Tensor, bias?: Tensor): Tensor;
  /**
   * scaleInt32(matmulInt8(x.codes, w.codes), x.scales, w.scales, bias) (+ residual, added last) in one
   * op where the backend can (optional: WebGPU for a few rows; undefined where it does not apply).
   */
  linearInt8?(x: IntRows, w: IntRows, bias?: Tensor, residual?: Tensor): Tensor | undefined;
  /** table[V,D] rows gathered by ids -> [ids.length, D] f32. */
  embedding(table: Tensor, ids: Int32Array): Tensor;
  /** x / rms(x) * weight, per row. */
  rmsnorm(x: Tensor, weight: Tensor, eps: number): Tensor;
  /** Rotate-half RoPE on x [rows, heads * headDim]; positions are per row. */
  rope(x: Tensor, positions: Int32Array, headDim: number, table: RopeTable): Tensor;
  /** Causal grouped-query attention of q [rows, H*Dh], k/v [rows, Hkv*Dh] -> [rows, H*Dh]. */
  attention(q: Tensor, k: Tensor, v: Tensor, shape: AttentionShape): Tensor;
  /**
   * Causal GQA attention of q [queries, H*Dh] (positions past ..) against rows [0, past + queries) of
   * k/v caches [capacity, Hkv*Dh] -> [queries, H*Dh]: query i sees keys 0 .. past + i.
   */
  attentionCached(q: Tensor, k: Tensor, v: Tensor, shape: CachedAttentionShape): Tensor;
  /** Copies src's rows into dst's rows [at, at + rows of src), in place (a KV cache append); f32 dst. */
  writeRows(dst: Tensor, src: Tensor, at: number): void;
  /** silu(gate) * up, elementwise. */
  siluMul(gate: Tensor, up: Tensor): Tensor;
  add(a: Tensor, b: Tensor): Tensor;
  sub(a: Tensor, b: Tensor): Tensor;
  /** x[:, j] * s[j] for every row. */
  scaleColumns(x: Tensor, s: Tensor): Tensor;
  /** x[i, :] * s[i] for every column. */
  scaleRows(x: Tensor, s: Tensor): Tensor;
  /**
   * Kronecker-factored transform of each row: x [rows, n1 * n2] read per row as X [n1, n2] becomes
   * left^T X right, i.e. x (left ⊗ right); left [n1, n1], right [n2, n2] (FlatQuant's online transform).
   */
  kron(x: Tensor, left: Tensor, right: Tensor): Tensor;
  /** Per-row negative log-likelihood of targets under softmax(logits) -> [rows] f32. */
  nll(logits: Tensor, targets: Int32Array): Tensor;
  /**
   * Per row of two [rows, vocab] logit tensors: [KL(softmax(p) || softmax(q)) in nats, 1 if the argmax
   * of p equals that of q else 0] -> [rows, 2] f32.
   */
  klDiv(p: Tensor, q: Tensor): Tensor;
  /** Quantize-dequantize along rows (groups/blocks run along the last dimension). */
  fakeQuant(x: Tensor, spec: FormatSpec): Tensor;
  /**
   * Where a device has one: llama.cpp's Q4_K / Q5_K / Q6_K round trip for searches that only rank
   * candidates, the same float32 algorithm as fakeQuant's but not bit for bit (webgpu/quant-kquant.ts).
   */
  searchFakeQuant?(x: Tensor, spec: GgmlSpec): Tensor | undefined;
  /** Per-column |x| max and mean (calibration statistics). */
  columnStats(x: Tensor): Promise<ColumnStats>;
  /** Rows [start, end) of a 2-D tensor. */
  sliceRows(x: Tensor, start: number, end: number): Tensor;
  /** Concatenates 2-D tensors along rows. */
  concatRows(parts: readonly Tensor[]): Tensor;
  /** 2-D transpose. */
  transpose(x: Tensor): Tensor;
  /** Converts to f32 (no-op copy for f32). */
  toF32(x: Tensor): Tensor;
  /** Sum of squared differences, read to the host. */
  sumSquaredDiff(a: Tensor, b: Tensor): Promise<number>;
}

/** [rows, vocab] of two same-shaped 2-D logit tensors, or one clear error. */
export function checkKlShapes(p: Tensor, q: Tensor): [number, number] {
  if (p.shape.length !== 2 || p.shape.join('x') !== q.shape.join('x'))
    fail(
      `klDiv: logits must be two 2-D tensors of one shape, got ${p.shape.join('x')} and ${q.shape.join('x')}`,
    );
  return [p.shape[0], p.shape[1]];
}

/** Checks a cached attention's operands against its shape (both backends). */
export function checkCachedAttention(q: Tensor, k: Tensor, v: Tensor, s: CachedAttentionShape): void {
  const { queries, past, numHeads: H, numKvHeads: Hkv, headDim: Dh } = s;
  const what = `attentionCached (${queries} queries after ${past})`;
  if (q.shape[0] !== queries || q.shape[1] !== H * Dh)
    fail(`${what}: q ${shapeString(q.shape)} is not [${queries}, ${H * Dh}]`);
  for (const c of [k, v])
    if (c.shape[1] !== Hkv * Dh || c.shape[0] < past + queries)
      fail(`${what}: cache ${shapeString(c.shape)} lacks ${past + queries} rows of ${Hkv * Dh}`);
  if (H % Hkv !== 0) fail(`${what}: ${H} heads over ${Hkv} kv heads`);
}

/** [rows, n1, n2] of a kron's operands, or one clear error. */
export function checkKron(x: Tensor, left: Tensor, right: Tensor): [number, number, number] {
  const square = (t: Tensor) => t.shape.length === 2 && t.shape[0] === t.shape[1];
  if (!square(left) || !square(right) || x.shape.length !== 2)
    fail(
      `kron: factors must be square and x 2-D, got ${shapeString(left.shape)}, ${shapeString(right.shape)}, x ${shapeString(x.shape)}`,
    );
  const [n1, n2] = [left.shape[0], right.shape[0]];
  if (x.shape[1] !== n1 * n2) fail(`kron: x rows of ${x.shape[1]} are not ${n1} x ${n2}`);
  return [x.shape[0], n1, n2];
}

/** The INT8 symmetric per-row format quantizeRowsInt8 uses by default. */
export const INT8_ROW_SYM: IntSpec = { kind: 'int', bits: 8, symmetric: true, granularity: 'row' };

/** The spec a quantizeRowsInt8 call quantizes to, or one clear error. */
export function rowsIntSpec(x: Tensor, spec: IntSpec = INT8_ROW_SYM): IntSpec {
  if (x.shape.length !== 2) fail(`quantizeRowsInt8: expected a 2-D tensor, got ${shapeString(x.shape)}`);
  if (x.shape[1] % 4 !== 0) fail(`quantizeRowsInt8: the row length ${x.shape[1]} must be a multiple of 4`);
  if (!(spec.symmetric && spec.granularity === 'row' && spec.bits <= 8 && spec.staticScale === undefined))
    fail('quantizeRowsInt8: the format must be symmetric per-row INT of at most 8 bits');
  return spec;
}

/** Checks a row write into a cache. */
export function checkWriteRows(dst: Tensor, src: Tensor, at: number): void {
  const cols = (t: Tensor) => numel(t.shape) / t.shape[0];
  if (dst.dtype !== 'f32') fail(`writeRows: destination must be f32, got ${dst.dtype}`);
  if (cols(dst) !== cols(src) || !Number.isInteger(at) || at < 0 || at + src.shape[0] > dst.shape[0])
    fail(`writeRows: ${shapeString(src.shape)} does not fit ${shapeString(dst.shape)} at row ${at}`);
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}
