/**
 * Llama-family decoder (Llama 2/3, Mistral, Qwen2): weights, a forward pass over a batch of
 * windows, and hooks that let quantization see and replace the input of every linear layer.
 */

import { fail } from '../errors.ts';
import type { Encoded } from '../formats/index.ts';
import type { FormatSpec } from '../formats/spec.ts';
import type { ModelConfig } from '../io/config.ts';
import { ropeTable } from '../io/rope.ts';
import type { Checkpoint } from '../io/safetensors-format.ts';
import {
  type Backend,
  type DType,
  type KvRows,
  type PackedWeight,
  packedTensors,
  type RmsNorm,
  type RopeTable,
  type Tensor,
} from '../tensor/tensor.ts';
import {
  canShareInt8Input,
  disposeRows,
  type Int8Weight,
  int8Linear,
  int8Products,
  type SharedInt8Input,
} from './int8.ts';
import type { BlockCodes } from './packed.ts';

export const ATTENTION_LINEARS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const;
export const MLP_LINEARS = ['gate_proj', 'up_proj', 'down_proj'] as const;
export const LINEARS = [...ATTENTION_LINEARS, ...MLP_LINEARS] as const;
export type LinearName = (typeof LINEARS)[number];

/** The linear whose input each linear shares: q/k/v read one input, gate/up another. */
export const SHARED_INPUT: Record<LinearName, LinearName> = {
  q_proj: 'q_proj',
  k_proj: 'q_proj',
  v_proj: 'q_proj',
  o_proj: 'o_proj',
  gate_proj: 'gate_proj',
  up_proj: 'gate_proj',
  down_proj: 'down_proj',
};

export interface Linear {
  /** the weight the forward pass uses (dequantized values once quantized) */
  weight: Tensor;
  bias?: Tensor;
  /** the stored (encoded) form of the weight, once quantized */
  quantized?: QuantizedWeight;
  /** fake quantization of the activations entering this linear (per token or static) */
  inputQuant?: InputQuant;
  /** INT8 codes for the integer GEMM path (W8A8 per channel / per token; see model/int8.ts) */
  int8?: Int8Weight;
  /** integer codes decoded inside the GEMM (weight-only formats; see model/packed.ts) */
  packed?: PackedWeight;
  /** codes of a block format llmq only reads (GGUF K-quants, ...), until they are packed */
  blockCodes?: BlockCodes;
}

export interface QuantizedWeight {
  encoded: Encoded;
  /** input channels kept in full precision (mixed precision): their weight columns, [out, n] */
  salient?: SalientColumns;
  /** GPTQ act_order groups: the scale group of each input column, when not column / group */
  gIdx?: Int32Array;
}

export interface SalientColumns {
  columns: Int32Array;
  /** row-major [out, columns.length] full-precision weight values */
  values: Float32Array;
}

export interface InputQuant {
  spec: FormatSpec;
  /** input channels left unquantized (mixed precision), as 0/1 column masks */
  keep?: { columns: Int32Array; keepMask: Tensor; quantMask: Tensor };
  /**
   * FlatQuant's online transform: the input becomes x (left ⊗ right) before it is quantized (the
   * weight is stored in the transformed basis); see Backend.kron
   */
  transform?: { left: Tensor; right: Tensor };
}

export interface DecoderLayer {
  inputNorm: Tensor;
  postNorm: Tensor;
  linears: Record<LinearName, Linear>;
}

export interface ForwardHooks {
  /** Sees the input of each linear (after any activation quantization); may return a replacement. */
  linearInput?(layer: number, name: LinearName, x: Tensor): Tensor | undefined;
  /** Sees each decoder layer's output. */
  layerOutput?(layer: number, h: Tensor): void;
}

export type StoredLinearReader = (
  layer: number,
  name: LinearName,
  shape: [number, number],
) => Partial<Pick<Linear, 'weight' | 'quantized' | 'inputQuant' | 'blockCodes'>> | undefined;

/**
 * A block's input: x, or rmsnorm(h) that fused backend ops compute inside themselves (from h and
 * `norm`) and other ops read as a tensor, computed once on first use.
 */
export class NormedInput {
  private x: Tensor | undefined;

  constructor(
    private readonly backend: Backend,
    readonly h: Tensor,
    readonly norm?: RmsNorm,
  ) {
    if (!norm) this.x = h;
  }

  tensor(): Tensor {
    this.x ??= this.backend.rmsnorm(this.h, this.norm!.weight, this.norm!.eps);
    return this.x;
  }

  /** Frees the normed tensor if one was made. */
  release(): void {
    if (!this.norm) return;
    this.x?.dispose();
    this.x = undefined;
  }
}

/**
 * Keys and values of earlier positions of one sequence (generation). A forward with a cache runs the
 * new rows at positions past.. and stores their keys/values for the next call.
 */
export interface AttentionCache {
  /** positions already cached */
  readonly past: number;
  /** stores layer `layer`'s new k/v rows at rows past.. and returns that layer's whole k/v caches */
  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor };
  /** layer `layer`'s k/v caches and the row its new rows go to (past), for an op that writes them there */
  target(layer: number): KvRows;
  /** as append, for new rows an op already wrote into target(layer) */
  written(layer: number): { k: Tensor; v: Tensor };
}

export interface BatchShape {
  batch: number;
  seqLen: number;
}

export function linearTensorName(
  layer: number,
  name: LinearName,
  part: 'weight' | 'bias' = 'weight',
): string {
  const block = (ATTENTION_LINEARS as readonly string[]).includes(name) ? 'self_attn' : 'mlp';
  return `model.layers.${layer}.${block}.${name}.${part}`;
}

export class LlamaModel {
  readonly rope: RopeTable;
  /** set when the weights/activations are quantized (recipe name and settings) */
  quantization?: { recipe: string; [key: string]: unknown };
  /**
   * fake quantization of the keys (after RoPE) and values as they enter the attention and the KV
   * cache; groups run along each row, within one head (kvCacheSpec)
   */
  kvQuant?: FormatSpec;

  constructor(
    readonly config: ModelConfig,
    readonly backend: Backend,
    public embedTokens: Tensor,
    readonly layers: DecoderLayer[],
    public finalNorm: Tensor,
    public lmHead: Tensor,
    /** the directory the model was loaded from */
    readonly dir: string,
  ) {
    this.rope = ropeTable(config);
  }

  /**
   * `storedLinear` lets a quantized checkpoint supply a linear's weight from its stored form;
   * linears it returns undefined for are read as plain tensors.
   */
  static fromCheckpoint(
    dir: string,
    config: ModelConfig,
    ckpt: Checkpoint,
    backend: Backend,
    storedLinear?: StoredLinearReader,
  ): LlamaModel {
    const loader = new WeightLoader(dir, config, ckpt, backend);
    const { hiddenSize: d, vocabSize } = config;
    const layers: DecoderLayer[] = [];
    for (let i = 0; i < config.numLayers; i++) layers.push(readDecoderLayer(loader, i, storedLinear));
    const embed = loader.get('model.embed_tokens.weight', [vocabSize, d]);
    const lmHead =
      config.tieWordEmbeddings && !ckpt.has('lm_head.weight')
        ? embed
        : loader.get('lm_head.weight', [vocabSize, d]);
    return new LlamaModel(config, backend, embed, layers, loader.get('model.norm.weight', [d]), lmHead, dir);
  }

  /** Frees every tensor the model holds (GPU memory on WebGPU). */
  dispose(): void {
    for (const layer of this.layers) disposeLayer(layer);
    for (const t of new Set([this.embedTokens, this.finalNorm, this.lmHead])) t.dispose();
  }

  /** Replaces decoder layer i (freeing its tensors) with the one stored in ckpt. */
  replaceLayer(i: number, ckpt: Checkpoint, storedLinear?: StoredLinearReader): void {
    const fresh = readDecoderLayer(
      new WeightLoader(ckpt.dir, this.config, ckpt, this.backend),
      i,
      storedLinear,
    );
    disposeLayer(this.layers[i]);
    this.layers[i] = fresh;
  }

  embed(ids: Int32Array): Tensor {
    return this.backend.embedding(this.embedTokens, ids);
  }

  positions(shape: BatchShape): Int32Array {
    const pos = new Int32Array(shape.batch * shape.seqLen);
    for (let i = 0; i < pos.length; i++) pos[i] = i % shape.seqLen;
    return pos;
  }

  /**
   * What linear `name` multiplies for input x: x through its input quantizer, if it has one;
   * `transformed`: x has had the linear's online transform applied already (groupInput).
   */
  linearInput(layer: number, name: LinearName, x: Tensor, transformed = false): Tensor {
    const q = this.layers[layer].linears[name].inputQuant;
    if (!q) return x;
    return quantizeInput(this.backend, x, transformed ? { ...q, transform: undefined } : q);
  }

  /**
   * x through linear `name` (+ `residual`, added last: the residual stream's add fused into the
   * GEMM where the backend can). `transformed`: x has had the linear's online transform applied
   * already (groupInput).
   */
  applyLinear(
    layer: number,
    name: LinearName,
    x: Tensor,
    hooks?: ForwardHooks,
    transformed = false,
    residual?: Tensor,
  ): Tensor {
    const lin = this.layers[layer].linears[name];
    const t = lin.inputQuant?.transform;
    if (t && !transformed) {
      const xt = this.backend.kron(x, t.left, t.right);
      const y = this.applyLinear(layer, name, xt, hooks, true, residual);
      xt.dispose();
      return y;
    }
    // hooks see (and may replace) the quantized input, which the integer path never materializes
    if (lin.int8 && !hooks?.linearInput) return int8Linear(this.backend, x, lin.int8, lin.bias, residual);
    const quantized = this.linearInput(layer, name, x, transformed);
    const input = hooks?.linearInput?.(layer, name, quantized) ?? quantized;
    const w = lin.packed ?? lin.weight;
    const y =
      residual && this.backend.linearAdd
        ? this.backend.linearAdd(input, w, residual, lin.bias)
        : plusResidual(
            this.backend,
            lin.packed
              ? this.backend.linearPacked(input, lin.packed, lin.bias)
              : this.backend.linear(input, lin.weight, lin.bias),
            residual,
          );
    if (quantized !== x) quantized.dispose();
    return y;
  }

  /** Self-attention block output (before the residual add) for normed input x. */
  attentionBlock(
    layer: number,
    x: Tensor,
    shape: BatchShape,
    hooks?: ForwardHooks,
    cache?: AttentionCache,
  ): Tensor {
    const att = this.attentionMix(layer, x, shape, hooks, cache);
    const out = this.applyLinear(layer, 'o_proj', att, hooks);
    att.dispose();
    return out;
  }

  /** softmax(q k^T) v over the heads for normed input x: the input of o_proj. */
  attentionMix(
    layer: number,
    x: Tensor | NormedInput,
    shape: BatchShape,
    hooks?: ForwardHooks,
    cache?: AttentionCache,
  ): Tensor {
    const b = this.backend;
    const { numHeads, numKvHeads, headDim } = this.config;
    const input = x instanceof NormedInput ? x : new NormedInput(b, x);
    const pos = cache ? positionsFrom(cache.past, shape.seqLen) : this.positions(shape);
    const past = cache?.past ?? 0;
    // decoding: the fused q/k/v op may store k and v in the cache itself (no copy)
    const into = cache && past > 0 && !this.kvQuant ? cache.target(layer) : undefined;
    const [q, rawK, rawV] =
      (!hooks?.linearInput && this.fusedQkv(layer, input, pos, into)) ||
      this.qkv(layer, input, pos, hooks, into);
    const written = into !== undefined && rawK === into.k;
    const k = written ? rawK : this.kvQuantized(rawK);
    const v = written ? rawV : this.kvQuantized(rawV);
    const heads = { numHeads, numKvHeads, headDim };
    const cached = cache && (written ? cache.written(layer) : cache.append(layer, k, v));
    // with nothing cached before, the new rows attend only to themselves: the batched kernel does it
    const att =
      cached && past > 0
        ? b.attentionCached(q, cached.k, cached.v, { queries: shape.seqLen, past, ...heads })
        : b.attention(q, k, v, { ...shape, ...heads });
    for (const t of written ? [q] : [q, k, v]) t.dispose();
    return att;
  }

  /** q and k (after RoPE) and v for normed input x at positions `pos`. */
  private qkv(
    layer: number,
    input: NormedInput,
    pos: Int32Array,
    hooks?: ForwardHooks,
    into?: KvRows,
  ): [Tensor, Tensor, Tensor] {
    const names: LinearName[] = ['q_proj', 'k_proj', 'v_proj'];
    const int8 = this.sharedInt8(layer, names, input, hooks);
    const { headDim } = this.config;
    const fused =
      int8 && consecutive(pos) && !int8.biases.some(Boolean)
        ? this.backend.qkvRopeInt8?.(
            int8.xq,
            int8.weights as [Int8Weight, Int8Weight, Int8Weight],
            pos[0],
            headDim,
            this.rope,
            into,
          )
        : undefined;
    const out =
      fused ??
      this.ropedQkv(
        int8 ? int8Products(this.backend, int8) : this.separately(layer, names, input, hooks),
        pos,
      );
    if (int8) disposeRows(int8.xq);
    return out;
  }

  /** [q, k, v] with RoPE applied to q and k (the raw q and k are freed). */
  private ropedQkv([q, k, v]: Tensor[], pos: Int32Array): [Tensor, Tensor, Tensor] {
    const rotated = (raw: Tensor) => {
      const out = this.backend.rope(raw, pos, this.config.headDim, this.rope);
      raw.dispose();
      return out;
    };
    return [rotated(q), rotated(k), v];
  }

  /** Linears `names` of one input, each through applyLinear (an online transform they share applied once). */
  private separately(layer: number, names: LinearName[], input: NormedInput, hooks?: ForwardHooks): Tensor[] {
    const g = this.groupInput(layer, names, input.tensor());
    const out = names.map((n) => this.applyLinear(layer, n, g.x, hooks, g.transformed));
    if (g.transformed) g.x.dispose();
    return out;
  }

  /**
   * The input of linears `names` quantized once for the int8 path (with its RMSNorm in the same
   * kernel where the backend can), where all of them run there with one input format and no hook
   * watches their inputs; undefined otherwise.
   */
  private sharedInt8(
    layer: number,
    names: LinearName[],
    input: NormedInput,
    hooks?: ForwardHooks,
  ): SharedInt8Input | undefined {
    const lins = names.map((n) => this.layers[layer].linears[n]);
    const weights = lins.flatMap((l) => (l.int8 ? [l.int8] : []));
    if (hooks?.linearInput || weights.length < lins.length || !canShareInt8Input(input.h.shape[0], weights))
      return undefined;
    const spec = weights[0].input;
    const biases = lins.map((l) => l.bias);
    if (lins.some((l) => l.inputQuant?.transform)) {
      const g = this.groupInput(layer, names, input.tensor());
      if (!g.transformed) return undefined;
      const xq = this.backend.quantizeRowsInt8(g.x, spec);
      g.x.dispose();
      return { xq, weights, biases };
    }
    const fused = input.norm && this.backend.rmsnormQuantizeRowsInt8?.(input.h, input.norm, spec);
    return { xq: fused || this.backend.quantizeRowsInt8(input.tensor(), spec), weights, biases };
  }

  /** qkv in one backend op, where the backend has one, the linears are plain and positions consecutive. */
  private fusedQkv(
    layer: number,
    input: NormedInput,
    pos: Int32Array,
    into?: KvRows,
  ): [Tensor, Tensor, Tensor] | undefined {
    const { q_proj: q, k_proj: k, v_proj: v } = this.layers[layer].linears;
    const op = this.backend.qkvRope?.bind(this.backend);
    if (!op || ![q, k, v].every(plainLinear) || !consecutive(pos)) return undefined;
    const weights = [q, k, v].map((l) => l.packed ?? l.weight) as [
      Tensor | PackedWeight,
      Tensor | PackedWeight,
      Tensor | PackedWeight,
    ];
    const { headDim } = this.config;
    // with the norm inside the op where the backend takes it, else on the normed tensor
    return (
      (input.norm && op(input.h, weights, pos[0], headDim, this.rope, input.norm, into)) ||
      op(input.tensor(), weights, pos[0], headDim, this.rope, undefined, into)
    );
  }

  private kvQuantized(t: Tensor): Tensor {
    if (!this.kvQuant) return t;
    const out = this.backend.fakeQuant(t, this.kvQuant);
    t.dispose();
    return out;
  }

  /**
   * The input of linears sharing one online transform (FlatQuant's q/k/v, gate/up), transformed once
   * for all of them; x itself when they have none or different ones.
   */
  private groupInput(layer: number, names: LinearName[], x: Tensor): { x: Tensor; transformed: boolean } {
    const [t, ...rest] = names.map((n) => this.layers[layer].linears[n].inputQuant?.transform);
    if (!t || rest.some((o) => o?.left !== t.left || o?.right !== t.right)) return { x, transformed: false };
    return { x: this.backend.kron(x, t.left, t.right), transformed: true };
  }

  /** silu(gate x) * up x, the input of down_proj, for normed input x. */
  mlpActivation(layer: number, x: Tensor | NormedInput, hooks?: ForwardHooks): Tensor {
    const input = x instanceof NormedInput ? x : new NormedInput(this.backend, x);
    const plain = hooks?.linearInput ? undefined : this.fusedGateUp(layer, input);
    if (plain) return plain;
    const names: LinearName[] = ['gate_proj', 'up_proj'];
    const int8 = this.sharedInt8(layer, names, input, hooks);
    const fused =
      int8 && !int8.biases.some(Boolean)
        ? this.backend.gateUpInt8?.(int8.xq, int8.weights[0], int8.weights[1])
        : undefined;
    const act =
      fused ??
      this.siluMulFree(int8 ? int8Products(this.backend, int8) : this.separately(layer, names, input, hooks));
    if (int8) disposeRows(int8.xq);
    return act;
  }

  /** silu(gate) * up (gate and up freed). */
  private siluMulFree([gate, up]: Tensor[]): Tensor {
    const act = this.backend.siluMul(gate, up);
    gate.dispose();
    up.dispose();
    return act;
  }

  /** silu(gate x) * up x in one backend op, where the backend has one and both linears are plain. */
  private fusedGateUp(layer: number, input: NormedInput): Tensor | undefined {
    const { gate_proj: gate, up_proj: up } = this.layers[layer].linears;
    const op = this.backend.gateUp?.bind(this.backend);
    if (!op || !plainLinear(gate) || !plainLinear(up)) return undefined;
    const [g, u] = [gate.packed ?? gate.weight, up.packed ?? up.weight];
    return (input.norm && op(input.h, g, u, input.norm)) || op(input.tensor(), g, u);
  }

  /** MLP block output for normed input x. */
  mlpBlock(layer: number, x: Tensor, hooks?: ForwardHooks): Tensor {
    const act = this.mlpActivation(layer, x, hooks);
    const out = this.applyLinear(layer, 'down_proj', act, hooks);
    act.dispose();
    return out;
  }

  layerForward(
    layer: number,
    h: Tensor,
    shape: BatchShape,
    hooks?: ForwardHooks,
    cache?: AttentionCache,
  ): Tensor {
    const h1 = this.attentionResidual(layer, h, shape, hooks, cache);
    const out = this.mlpResidual(layer, h1, hooks);
    h1.dispose();
    hooks?.layerOutput?.(layer, out);
    return out;
  }

  /** The residual stream after the attention half of a layer: h + attention(norm(h)). */
  attentionResidual(
    layer: number,
    h: Tensor,
    shape: BatchShape,
    hooks?: ForwardHooks,
    cache?: AttentionCache,
  ): Tensor {
    const x1 = new NormedInput(this.backend, h, {
      weight: this.layers[layer].inputNorm,
      eps: this.config.rmsNormEps,
    });
    const mixed = this.attentionMix(layer, x1, shape, hooks, cache);
    x1.release();
    const h1 = this.applyLinear(layer, 'o_proj', mixed, hooks, false, h);
    mixed.dispose();
    return h1;
  }

  /** The layer output from the residual after attention: h1 + mlp(norm(h1)). */
  mlpResidual(layer: number, h1: Tensor, hooks?: ForwardHooks): Tensor {
    const x2 = new NormedInput(this.backend, h1, {
      weight: this.layers[layer].postNorm,
      eps: this.config.rmsNormEps,
    });
    const act = this.mlpActivation(layer, x2, hooks);
    x2.release();
    const out = this.applyLinear(layer, 'down_proj', act, hooks, false, h1);
    act.dispose();
    return out;
  }

  /** The input of q/k/v_proj before their input quantizer: rmsnorm(h) with the layer's input norm. */
  attentionNorm(layer: number, h: Tensor): Tensor {
    return this.backend.rmsnorm(h, this.layers[layer].inputNorm, this.config.rmsNormEps);
  }

  /** The input of gate/up_proj before their input quantizer: rmsnorm(h1) with the post-attention norm. */
  mlpNorm(layer: number, h1: Tensor): Tensor {
    return this.backend.rmsnorm(h1, this.layers[layer].postNorm, this.config.rmsNormEps);
  }

  /** Final norm (returned for inspection) and logits. */
  head(h: Tensor): { normed: Tensor; logits: Tensor } {
    const normed = this.backend.rmsnorm(h, this.finalNorm, this.config.rmsNormEps);
    return { normed, logits: this.backend.linear(normed, this.lmHead) };
  }

  forward(ids: Int32Array, shape: BatchShape, hooks?: ForwardHooks): Tensor {
    let h = this.embed(ids);
    for (let i = 0; i < this.layers.length; i++) {
      const next = this.layerForward(i, h, shape, hooks);
      h.dispose();
      h = next;
    }
    const { normed, logits } = this.head(h);
    h.dispose();
    normed.dispose();
    return logits;
  }

  /**
   * Runs new tokens of one sequence after the cached ones (the cache must have room for them) and
   * returns the logits of the last one, [1, vocab].
   */
  forwardCached(ids: Int32Array, cache: AttentionCache): Tensor {
    const shape = { batch: 1, seqLen: ids.length };
    let h = this.embed(ids);
    for (let i = 0; i < this.layers.length; i++) {
      const next = this.layerForward(i, h, shape, undefined, cache);
      h.dispose();
      h = next;
    }
    const last = ids.length === 1 ? h : this.backend.sliceRows(h, ids.length - 1, ids.length);
    if (last !== h) h.dispose();
    const { normed, logits } = this.head(last);
    last.dispose();
    normed.dispose();
    return logits;
  }
}

/** A linear a fused backend op can run: weight (or codes) only, no bias, input quantizer or int8 path. */
function plainLinear(l: Linear): boolean {
  return !l.int8 && !l.inputQuant && !l.bias;
}

/** Whether positions run first, first + 1, ... */
function consecutive(pos: Int32Array): boolean {
  return pos.every((p, i) => p === pos[0] + i);
}

/** y + residual (y freed), or y when there is no residual. */
export function plusResidual(b: Backend, y: Tensor, residual: Tensor | undefined): Tensor {
  if (!residual) return y;
  const sum = b.add(residual, y);
  y.dispose();
  return sum;
}

function positionsFrom(start: number, n: number): Int32Array {
  const pos = new Int32Array(n);
  for (let i = 0; i < n; i++) pos[i] = start + i;
  return pos;
}

/**
 * The KV-cache format as applied to rows of k/v ([rows, kv heads x head_dim]): per-row INT becomes
 * one scale per head (groups of head_dim); other formats must keep their groups within a head.
 */
export function kvCacheSpec(spec: FormatSpec, headDim: number): FormatSpec {
  if (spec.kind === 'int' && spec.granularity === 'row')
    return { ...spec, granularity: 'group', group: headDim };
  const group =
    spec.kind === 'int'
      ? spec.granularity === 'group'
        ? spec.group
        : undefined
      : spec.kind === 'mx'
        ? spec.block
        : undefined;
  if (group === undefined || headDim % group !== 0)
    fail(
      `kv cache format: groups must lie within one head (head_dim ${headDim}): use INT per row (one scale per head), INT groups or MX blocks dividing ${headDim}`,
    );
  return spec;
}

/**
 * Fake-quantizes a linear's input, after its online transform when it has one. Kept (salient)
 * channels are zeroed before quantizing and added back after, so with symmetric formats they
 * neither get quantized nor move the scales.
 */
export function quantizeInput(b: Backend, x: Tensor, q: InputQuant): Tensor {
  if (!q.transform) return quantizeValues(b, x, q);
  const transformed = b.kron(x, q.transform.left, q.transform.right);
  const out = quantizeValues(b, transformed, q);
  transformed.dispose();
  return out;
}

function quantizeValues(b: Backend, x: Tensor, q: InputQuant): Tensor {
  if (!q.keep) return b.fakeQuant(x, q.spec);
  const rest = b.scaleColumns(x, q.keep.quantMask);
  const quantized = b.fakeQuant(rest, q.spec);
  const kept = b.scaleColumns(x, q.keep.keepMask);
  const out = b.add(quantized, kept);
  for (const t of [rest, quantized, kept]) t.dispose();
  return out;
}

function disposeLayer(layer: DecoderLayer): void {
  const tensors = new Set<Tensor>([layer.inputNorm, layer.postNorm]);
  for (const lin of Object.values(layer.linears)) {
    tensors.add(lin.weight);
    if (lin.bias) tensors.add(lin.bias);
    if (lin.inputQuant?.keep) {
      tensors.add(lin.inputQuant.keep.keepMask);
      tensors.add(lin.inputQuant.keep.quantMask);
    }
    for (const extra of [
      lin.int8?.codes,
      lin.int8?.scales,
      ...packedTensors(lin.packed),
      lin.inputQuant?.transform?.left,
      lin.inputQuant?.transform?.right,
    ])
      if (extra) tensors.add(extra);
  }
  for (const t of tensors) t.dispose();
}

/** [out, in] of every linear of a decoder layer. */
export function linearShapes(config: ModelConfig): Record<LinearName, [number, number]> {
  const { hiddenSize: d, intermediateSize: ff, headDim, numHeads, numKvHeads } = config;
  return {
    q_proj: [numHeads * headDim, d],
    k_proj: [numKvHeads * headDim, d],
    v_proj: [numKvHeads * headDim, d],
    o_proj: [d, numHeads * headDim],
    gate_proj: [ff, d],
    up_proj: [ff, d],
    down_proj: [d, ff],
  };
}

function hasBias(config: ModelConfig, name: LinearName): boolean {
  if (name === 'o_proj') return config.oBias;
  return ATTENTION_LINEARS.includes(name as 'q_proj') ? config.qkvBias : config.mlpBias;
}

function readDecoderLayer(loader: WeightLoader, i: number, storedLinear?: StoredLinearReader): DecoderLayer {
  const shapes = linearShapes(loader.config);
  const linears = {} as Record<LinearName, Linear>;
  for (const name of LINEARS) {
    const stored = storedLinear?.(i, name, shapes[name]);
    linears[name] = {
      weight: stored?.weight ?? loader.get(linearTensorName(i, name), shapes[name]),
      quantized: stored?.quantized,
      inputQuant: stored?.inputQuant,
      blockCodes: stored?.blockCodes,
      bias: hasBias(loader.config, name)
        ? loader.get(linearTensorName(i, name, 'bias'), [shapes[name][0]])
        : undefined,
    };
  }
  const d = loader.config.hiddenSize;
  return {
    inputNorm: loader.get(`model.layers.${i}.input_layernorm.weight`, [d]),
    postNorm: loader.get(`model.layers.${i}.post_attention_layernorm.weight`, [d]),
    linears,
  };
}

class WeightLoader {
  constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly ckpt: Checkpoint,
    readonly backend: Backend,
  ) {}

  get(name: string, shape: number[]): Tensor {
    if (!this.ckpt.has(name))
      fail(
        `${this.dir}: tensor "${name}" required by config.json (${this.config.modelType}, ${this.config.numLayers} layers) is missing`,
      );
    const t = this.ckpt.read(name);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
      fail(
        `${this.dir}: tensor "${name}" has shape [${t.shape.join(', ')}], config.json implies [${shape.join(', ')}]`,
      );
    const dtype = storageDType(name, t.dtype);
    const bad = firstNonFinite(t.data as Float32Array | Uint16Array, dtype);
    if (bad >= 0)
      fail(
        `${this.dir}: tensor "${name}" holds NaN or Inf (element ${bad}); the checkpoint is corrupt or overflowed`,
      );
    return this.backend.upload(t.data as never, t.shape, dtype);
  }
}

/** Index of the first NaN/Inf (exponent bits all ones) of f32, bf16 or f16 data, or -1. */
function firstNonFinite(data: Float32Array | Uint16Array, dtype: DType): number {
  if (dtype === 'f32') {
    const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < bits.length; i++) if ((bits[i] & 0x7f800000) === 0x7f800000) return i;
    return -1;
  }
  const exponent = dtype === 'bf16' ? 0x7f80 : 0x7c00;
  for (let i = 0; i < data.length; i++) if ((data[i] & exponent) === exponent) return i;
  return -1;
}

function storageDType(name: string, dtype: string): DType {
  switch (dtype) {
    case 'F32':
      return 'f32';
    case 'BF16':
      return 'bf16';
    case 'F16':
      return 'f16';
    default:
      return fail(`tensor "${name}": dtype ${dtype} is not a float weight dtype (F32, F16, BF16)`);
  }
}
