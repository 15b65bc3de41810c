/**
 * `llmq export --to gguf-<type>`: a Llama-family model as one GGUF file that llama.cpp and
 * node-llama-cpp load; types f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q2_k_s, q3_k_s, q3_k_m, q3_k_l,
 * q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq4_nl, iq4_xs, iq3_xs, iq3_s, iq3_m, iq3_xxs, iq2_m, iq2_s,
 * iq2_xs, iq2_xxs, iq1_s, iq1_m.
 *
 * Sources read (public, ggml-org/llama.cpp): convert_hf_to_gguf.py (TextModel.set_gguf_parameters,
 * ModelBase.prepare_tensors: which tensors stay F32 and which take the output type, get_vocab_base /
 * _set_vocab_gpt2), conversion/llama.py (LlamaModel: the q/k row permutation, rope.dimension_count,
 * vocab_size, llama3 rope_freqs), gguf-py/gguf/vocab.py (SpecialVocab: merges, special token ids,
 * add_bos/add_eos from tokenizer_config.json and the TemplateProcessing post-processor),
 * gguf-py/gguf/constants.py (key names, LlamaFileType, tensor names), src/llama-vocab.cpp (the
 * tokenizer.ggml.pre names), src/llama-quant.cpp (llama_tensor_get_type: output.weight type).
 *
 * What is written:
 * - Norms, biases and rope_freqs in F32. The linears (q, k, v, o, gate, up, down) in the chosen type.
 *   q8_0 and f16: token_embd and output in that type too (convert_hf_to_gguf.py --outtype q8_0/f16).
 *   q4_0: token_embd in Q4_0 as llama-quantize does; output (or token_embd when the embeddings are
 *   tied) in Q6_K, or Q8_0 where its rows are not a multiple of 256, as llama-quantize does.
 *   q4_k_m: llama-quantize's Q4_K_M mix without an importance matrix: Q4_K, with Q6_K for the output
 *   (as q4_0) and for attn_v and ffn_down in the layers use_more_bits picks; q5_k_m the same over Q5_K;
 *   q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q5_k_s, q6_k, q4_1, q5_0, q5_1, iq4_nl, iq4_xs, iq3_xs, iq3_s, iq3_m, iq3_xxs, iq2_m, iq2_s, iq2_xs, iq2_xxs, iq1_s, iq1_m as
 *   llama-quantize picks them (formats/llama-mix.ts); a checkpoint quantized with an importance
 *   matrix counts as llama-quantize's has_imatrix, and its imatrix.gguf weights the tensors
 *   re-quantized. A K-type tensor whose rows are not a multiple of 256 falls back as llama-quantize's
 *   tensor_type_fallback does (Q2_K and Q3_K to Q4_0, Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0,
 *   IQ4_XS, IQ3, IQ2 and IQ1 to IQ4_NL). Blocks are chosen by formats/kquants.ts, ggml.ts, iq4.ts, iq3.ts and iq2.ts, byte for byte
 *   llama.cpp's quantizers. A tensor whose rows are not a multiple of 32 falls back to F16
 *   (convert_hf_to_gguf.py does the same). Fallbacks are listed in the summary.
 * - q_proj / k_proj rows (and biases) permuted from the HF rotate-half order to GGML's interleaved
 *   RoPE order: within each head, row j*(hd/2)+i moves to i*2+j.
 * - The source may be a full-precision HF checkpoint or an llmq weight-only checkpoint, whose
 *   dequantized weights (AWQ scales, GPTQ updates and all) are what gets re-quantized. Activation
 *   quantization (W8A8 ...) has no GGUF form and is refused.
 * - Tokenizer: byte-level BPE only (GPT-2 / Llama 3 style): tokenizer.ggml.model "gpt2", pre "gpt-2"
 *   for a plain ByteLevel pre-tokenizer or "llama-bpe" for the Llama 3 split regex (convert_hf_to_
 *   gguf.py picks it from a hash of a test encoding instead, and rejects tokenizers it has not seen).
 */
import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../../errors.ts';
import { quantizeBlocksInParallel } from '../../formats/block-workers.ts';
import { ggmlBlocks, quantizeF16, quantizeQ4_0, quantizeQ5_0, quantizeQ8_0 } from '../../formats/ggml.ts';
import {
  type GgmlBlockType,
  ggmlBlockBytes,
  isGgmlBlockType,
  quantizeGgmlBlocks,
} from '../../formats/ggml-codes.ts';
import { formatName } from '../../formats/index.ts';
import {
  isFallbackType,
  type LlamaTensorType,
  llamaTensorType,
  needsImatrix,
  type TensorRole,
} from '../../formats/llama-mix.ts';
import type { GgmlSpec } from '../../formats/spec.ts';
import { LINEARS, type LinearName, type LlamaModel, type QuantizedWeight } from '../../model/llama.ts';
import { readQuantizationConfig } from '../../quant/checkpoint.ts';
import { loadModel } from '../../quant/load.ts';
import type { QuantizationConfig } from '../../quant/stored.ts';
import { linearPlace, usesImatrix } from '../../quant/weights.ts';
import { CpuBackend } from '../../tensor/cpu/backend.ts';
import type { Tensor } from '../../tensor/tensor.ts';
import type { ModelConfig } from '../config.ts';
import { loadModelConfig } from '../config-file.ts';
import {
  GGML_TYPE,
  type GgufTensorSpec,
  type GgufValue,
  GgufWriter,
  ggmlTypeName,
  gguf,
  LINEAR_GGUF,
} from '../gguf.ts';
import { type Imatrix, readImatrix } from '../imatrix-file.ts';
import { readJsonObject } from '../json.ts';
import { llama3RopeFactors } from '../rope.ts';

export const GGUF_EXPORT_TYPES = [
  'q8_0',
  'q4_0',
  'q4_1',
  'q5_0',
  'q5_1',
  'q2_k',
  'q2_k_s',
  'q3_k_s',
  'q3_k_m',
  'q3_k_l',
  'q4_k_s',
  'q4_k_m',
  'q5_k_s',
  'q5_k_m',
  'q6_k',
  'iq4_nl',
  'iq4_xs',
  'iq3_xs',
  'iq3_s',
  'iq3_m',
  'iq3_xxs',
  'iq2_m',
  'iq2_s',
  'iq2_xs',
  'iq2_xxs',
  'iq1_s',
  'iq1_m',
  'f16',
] as const;
export type GgufExportType = (typeof GGUF_EXPORT_TYPES)[number];

export interface GgufExportOptions {
  type: GgufExportType;
  force?: boolean;
  /** Q4_0 rounding of x*id + 8.5 as one fused multiply-add (see formats/ggml.ts); default false */
  q4Fma?: boolean;
  /** called after each tensor is written */
  onProgress?: (done: number, total: number, name: string) => void;
}

export interface GgufExportSummary {
  out: string;
  type: GgufExportType;
  /** general.file_type (LlamaFileType) */
  fileType: number;
  bytes: number;
  tensors: number;
  /** tensor count per ggml type name */
  tensorTypes: Record<string, number>;
  /** tensors written in another type because their rows do not fit the type's blocks */
  fallbacks: { tensor: string; type: string }[];
  /** "full precision" or the llmq recipe the source was quantized with */
  source: string;
  tokenizer: { model: 'gpt2'; pre: string; tokens: number; merges: number };
}

/** general.file_type: LlamaFileType (llama.h, gguf-py constants.py) */
const FILE_TYPE: Record<GgufExportType, number> = {
  f16: 1,
  q4_0: 2,
  q4_1: 3,
  q8_0: 7,
  q5_0: 8,
  q5_1: 9,
  q2_k: 10,
  q3_k_s: 11,
  q3_k_m: 12,
  q3_k_l: 13,
  q4_k_s: 14,
  q4_k_m: 15,
  q5_k_s: 16,
  q5_k_m: 17,
  q6_k: 18,
  iq2_xxs: 19,
  iq2_xs: 20,
  q2_k_s: 21,
  iq3_xs: 22,
  iq3_xxs: 23,
  iq1_s: 24,
  iq4_nl: 25,
  iq3_s: 26,
  iq3_m: 27,
  iq2_s: 28,
  iq2_m: 29,
  iq4_xs: 30,
  iq1_m: 31,
};
const GGML_QUANT_VERSION = 2;

/** GGUF token types (gguf.md): 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte */
const TOKEN_TYPE = { normal: 1, control: 3, userDefined: 4, unused: 5 } as const;

/** The Split regex of Llama 3's tokenizer.json, which llama.cpp calls "llama-bpe". */
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// ---------------------------------------------------------------------------------------------
// source checks

function checkSource(
  modelDir: string,
  type: string,
): { config: ModelConfig; source: string; quantization: QuantizationConfig | undefined } {
  if (!(GGUF_EXPORT_TYPES as readonly string[]).includes(type))
    fail(`GGUF type "${type}" is not supported (supported: ${GGUF_EXPORT_TYPES.join(', ')})`);
  const config = loadModelConfig(modelDir);
  if (config.modelType === 'qwen2')
    fail(`${modelDir}: model_type qwen2 cannot be exported to GGUF yet (llama and mistral can)`);
  const rope = config.rope.type;
  if (rope !== 'default' && rope !== 'linear' && rope !== 'llama3')
    fail(`${modelDir}: rope type "${rope}" cannot be exported to GGUF yet (default, linear and llama3 can)`);
  const q = readQuantizationConfig(modelDir);
  if (q?.activation_format) {
    fail(
      `${modelDir}: recipe ${q.recipe.name} quantizes activations (${q.activation_format}), which GGUF cannot express; export a weight-only checkpoint or the full-precision model`,
    );
  }
  if (q?.recipe.kvCache)
    fail(
      `${modelDir}: recipe ${q.recipe.name} quantizes the KV cache (${formatName(q.recipe.kvCache)}), which GGUF files cannot carry; export a checkpoint without it`,
    );
  const w = q?.recipe.weights;
  const q2ks = w?.kind === 'ggml' && w.type === 'q2_k_s' && q !== undefined && usesImatrix(q.recipe);
  if (type === 'q2_k_s' && !q2ks)
    fail(
      `${modelDir}: llama-quantize's Q2_K_S requires an importance matrix; quantize with a recipe {weights: q2_k_s, steps: [imatrix]} first and export that checkpoint`,
    );
  if (needsImatrix(type) && !(q && usesImatrix(q.recipe)))
    fail(
      `${modelDir}: llama-quantize's ${type.toUpperCase()} requires an importance matrix (its IQ3_XXS / IQ2 / IQ1 tensors); quantize with a recipe that has the imatrix step (e.g. imatrix-${type}) first and export that checkpoint`,
    );
  return { config, source: q ? `llmq ${q.recipe.name}` : 'full precision', quantization: q };
}

// ---------------------------------------------------------------------------------------------
// tokenizer

interface Vocab {
  pre: string;
  tokens: string[];
  types: number[];
  merges: string[];
  specialIds: [string, number][];
  addBos?: boolean;
  addEos?: boolean;
  chatTemplate?: string;
}

interface AddedToken {
  id: number;
  content: string;
  special: boolean;
}

function preTokenizerName(file: string, pre: unknown): string {
  const isByteLevel = (p: unknown) => isObj(p) && p.type === 'ByteLevel';
  if (isByteLevel(pre) && isObj(pre)) {
    if (pre.add_prefix_space === true)
      fail(`${file}: ByteLevel add_prefix_space is not expressible in GGUF's gpt2 tokenizer`);
    if (pre.use_regex !== false) return 'gpt-2';
  }
  if (isObj(pre) && pre.type === 'Sequence' && Array.isArray(pre.pretokenizers)) {
    const [split, byteLevel, ...rest] = pre.pretokenizers as unknown[];
    const regex =
      isObj(split) && split.type === 'Split' && isObj(split.pattern) ? split.pattern.Regex : undefined;
    if (regex === LLAMA3_SPLIT && isByteLevel(byteLevel) && rest.length === 0) return 'llama-bpe';
  }
  const found = JSON.stringify(pre);
  return fail(
    `${file}: pre_tokenizer ${found && found.length > 80 ? `${found.slice(0, 77)}...` : found} is not one llama.cpp knows (plain ByteLevel or the Llama 3 split are exported)`,
  );
}

function checkByteLevelBpe(file: string, tok: Json): Json {
  const model = tok.model;
  if (!isObj(model)) fail(`${file}: model is missing`);
  const decoder = isObj(tok.decoder) ? tok.decoder.type : undefined;
  if (model.type !== 'BPE' || model.byte_fallback === true || decoder !== 'ByteLevel') {
    fail(
      `${file}: only byte-level BPE tokenizers (GPT-2 / Llama 3 style) can be exported to GGUF; found model ${String(model.type)}, byte_fallback ${String(model.byte_fallback ?? false)}, decoder ${String(decoder)}`,
    );
  }
  if (tok.normalizer !== null && tok.normalizer !== undefined)
    fail(`${file}: a normalizer is set, which GGUF's gpt2 tokenizer does not apply`);
  if (!isObj(model.vocab)) fail(`${file}: model.vocab must be an object of token -> id`);
  return model;
}

function addedTokens(file: string, tok: Json): AddedToken[] {
  const list = Array.isArray(tok.added_tokens) ? tok.added_tokens : [];
  return list.map((t, i) => {
    if (!isObj(t) || typeof t.id !== 'number' || typeof t.content !== 'string')
      fail(`${file}: added_tokens[${i}] needs a numeric id and a string content`);
    return { id: t.id, content: t.content, special: t.special === true };
  });
}

/** convert_hf_to_gguf.py's does_token_look_special for the forms a byte-level BPE vocab has. */
function looksSpecial(token: string): boolean {
  return token === '<pad>' || token === '<mask>' || (token.startsWith('<|') && token.endsWith('|>'));
}

function vocabTokens(file: string, model: Json, added: AddedToken[], vocabSize: number) {
  const tokens: string[] = new Array(vocabSize);
  const types: number[] = new Array(vocabSize).fill(TOKEN_TYPE.unused);
  const place = (id: number, text: string, type: number) => {
    if (!Number.isSafeInteger(id) || id < 0 || id >= vocabSize)
      fail(
        `${file}: token ${JSON.stringify(text)} has id ${id}, outside the model's vocab_size ${vocabSize}`,
      );
    tokens[id] = text;
    types[id] = type;
  };
  for (const [text, id] of Object.entries(model.vocab as Json)) place(id as number, text, TOKEN_TYPE.normal);
  for (const t of added) {
    if (t.special || looksSpecial(t.content)) place(t.id, t.content, TOKEN_TYPE.control);
    else place(t.id, t.content.replaceAll('\u2581', ' '), TOKEN_TYPE.userDefined);
  }
  for (let i = 0; i < vocabSize; i++) if (tokens[i] === undefined) tokens[i] = `[PAD${i}]`;
  return { tokens, types };
}

/** Merges as "a b" strings; a space inside a pair member is written as U+0120, as gguf-py does. */
function mergeStrings(file: string, model: Json): string[] {
  const merges = Array.isArray(model.merges) ? model.merges : [];
  return merges.map((m, i) => {
    if (typeof m === 'string') return m;
    if (Array.isArray(m) && m.length === 2 && m.every((p) => typeof p === 'string'))
      return m.map((p: string) => p.replaceAll(' ', '\u0120')).join(' ');
    return fail(`${file}: merges[${i}] is neither "a b" nor ["a", "b"]`);
  });
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  return isObj(v) && typeof v.content === 'string' ? v.content : undefined;
}

/** SpecialVocab: tokenizer_config.json's <typ>_token looked up in added_tokens, then config.json ids. */
function specialTokenIds(tokCfg: Json, added: AddedToken[], config: ModelConfig): [string, number][] {
  const keys = {
    bos: 'bos_token_id',
    eos: 'eos_token_id',
    unk: 'unknown_token_id',
    sep: 'seperator_token_id',
    pad: 'padding_token_id',
  };
  const ids: [string, number][] = [];
  for (const [typ, key] of Object.entries(keys)) {
    const content = tokenContent(tokCfg[`${typ}_token`]);
    let id = content === undefined ? undefined : added.find((t) => t.content === content)?.id;
    const fromConfig = config.raw[`${typ}_token_id`];
    if (id === undefined && typeof fromConfig === 'number' && Number.isSafeInteger(fromConfig))
      id = fromConfig;
    if (id !== undefined && id >= 0 && id < config.vocabSize) ids.push([`tokenizer.ggml.${key}`, id]);
  }
  return ids;
}

/** add_bos / add_eos: the post-processor's template, overridden by tokenizer_config.json. */
function addSpecial(tok: Json, tokCfg: Json): { addBos?: boolean; addEos?: boolean } {
  const out: { addBos?: boolean; addEos?: boolean } = {};
  const post = tok.post_processor;
  const processors = isObj(post) ? (Array.isArray(post.processors) ? post.processors : [post]) : [];
  const bos = tokenContent(tokCfg.bos_token);
  const eos = tokenContent(tokCfg.eos_token);
  for (const p of processors) {
    if (!isObj(p)) continue;
    if (p.type === 'RobertaProcessing') Object.assign(out, { addBos: true, addEos: true });
    if (p.type !== 'TemplateProcessing' || !Array.isArray(p.single) || p.single.length < 2) continue;
    const special = (item: unknown) =>
      isObj(item) && isObj(item.SpecialToken) ? (item.SpecialToken.id as string | undefined) : undefined;
    const first = special(p.single[0]);
    const last = special(p.single[p.single.length - 1]);
    if (first) out.addBos = bos === undefined || first === bos;
    if (last) out.addEos = eos === undefined || last === eos;
  }
  if (typeof tokCfg.add_bos_token === 'boolean') out.addBos = tokCfg.add_bos_token;
  if (typeof tokCfg.add_eos_token === 'boolean') out.addEos = tokCfg.add_eos_token;
  return out;
}

function chatTemplate(dir: string, tokCfg: Json): string | undefined {
  if (typeof tokCfg.chat_template === 'string') return tokCfg.chat_template;
  const jinja = path.join(dir, 'chat_template.jinja');
  return fs.existsSync(jinja) ? fs.readFileSync(jinja, 'utf8') : undefined;
}

function readVocab(dir: string, config: ModelConfig): Vocab {
  const file = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) fail(`${dir}: tokenizer.json is missing (GGUF embeds the vocabulary)`);
  const tok = readJsonObject(file);
  const model = checkByteLevelBpe(file, tok);
  const pre = preTokenizerName(file, tok.pre_tokenizer);
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const tokCfg = fs.existsSync(cfgFile) ? readJsonObject(cfgFile) : {};
  const added = addedTokens(file, tok);
  return {
    pre,
    ...vocabTokens(file, model, added, config.vocabSize),
    merges: mergeStrings(file, model),
    specialIds: specialTokenIds(tokCfg, added, config),
    ...addSpecial(tok, tokCfg),
    chatTemplate: chatTemplate(dir, tokCfg),
  };
}

// ---------------------------------------------------------------------------------------------
// metadata

function modelMetadata(name: string, config: ModelConfig, type: GgufExportType): Map<string, GgufValue> {
  const m = new Map<string, GgufValue>([
    ['general.architecture', gguf.str('llama')],
    ['general.type', gguf.str('model')],
    ['general.name', gguf.str(name)],
    ['general.quantization_version', gguf.u32(GGML_QUANT_VERSION)],
    ['general.alignment', gguf.u32(32)],
    ['general.file_type', gguf.u32(FILE_TYPE[type])],
    ['llama.block_count', gguf.u32(config.numLayers)],
    ['llama.context_length', gguf.u32(config.maxPositionEmbeddings)],
    ['llama.embedding_length', gguf.u32(config.hiddenSize)],
    ['llama.feed_forward_length', gguf.u32(config.intermediateSize)],
    ['llama.attention.head_count', gguf.u32(config.numHeads)],
    ['llama.attention.head_count_kv', gguf.u32(config.numKvHeads)],
    ['llama.rope.freq_base', gguf.f32(config.rope.theta)],
    ['llama.attention.layer_norm_rms_epsilon', gguf.f32(config.rmsNormEps)],
  ]);
  if (config.raw.head_dim !== undefined && config.raw.head_dim !== null) {
    m.set('llama.attention.key_length', gguf.u32(config.headDim));
    m.set('llama.attention.value_length', gguf.u32(config.headDim));
  }
  m.set('llama.vocab_size', gguf.u32(config.vocabSize));
  m.set('llama.rope.dimension_count', gguf.u32(config.headDim));
  if (config.rope.type === 'linear') {
    m.set('llama.rope.scaling.type', gguf.str('linear'));
    m.set('llama.rope.scaling.factor', gguf.f32(config.rope.factor));
  }
  return m;
}

function tokenizerMetadata(v: Vocab): Map<string, GgufValue> {
  const m = new Map<string, GgufValue>([
    ['tokenizer.ggml.model', gguf.str('gpt2')],
    ['tokenizer.ggml.pre', gguf.str(v.pre)],
    ['tokenizer.ggml.tokens', gguf.strings(v.tokens)],
    ['tokenizer.ggml.token_type', gguf.i32s(v.types)],
  ]);
  if (v.merges.length > 0) m.set('tokenizer.ggml.merges', gguf.strings(v.merges));
  for (const [key, id] of v.specialIds) m.set(key, gguf.u32(id));
  if (v.addBos !== undefined) m.set('tokenizer.ggml.add_bos_token', gguf.bool(v.addBos));
  if (v.addEos !== undefined) m.set('tokenizer.ggml.add_eos_token', gguf.bool(v.addEos));
  if (v.chatTemplate) m.set('tokenizer.chat_template', gguf.str(v.chatTemplate));
  return m;
}

// ---------------------------------------------------------------------------------------------
// tensors

/**
 * convert_hf_to_gguf.py's LlamaModel.permute: rows viewed as [heads, 2, hd/2] become [heads, hd/2, 2],
 * so row h*hd + j*(hd/2) + i moves to h*hd + 2i + j. Works on a bias too (cols = 1).
 */
export function permuteRotaryRows<T extends Float32Array | Uint8Array>(
  w: T,
  rows: number,
  cols: number,
  heads: number,
): T {
  const headDim = rows / heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0)
    throw new RangeError(`${rows} rows do not split into ${heads} heads of an even size`);
  const half = headDim / 2;
  const out = w.slice() as T;
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < 2; j++)
      for (let i = 0; i < half; i++) {
        const from = (h * headDim + j * half + i) * cols;
        out.set(w.subarray(from, from + cols), (h * headDim + 2 * i + j) * cols);
      }
  return out;
}

interface PlannedTensor extends GgufTensorSpec {
  /** the values, [rows, cols] row-major (already permuted) */
  values: () => Promise<Float32Array>;
  /** the importance matrix's entry for the tensor, when the checkpoint was quantized with one */
  importance?: Float32Array;
  /** the finished blocks, when a checkpoint already holds them in this tensor's type */
  blocks?: () => Uint8Array;
}

function f32Bytes(x: Float32Array): Uint8Array {
  const out = new Uint8Array(x.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < x.length; i++) view.setFloat32(4 * i, x[i], true);
  return out;
}

function encode(p: PlannedTensor, values: Float32Array, q4Fma: boolean): Uint8Array {
  switch (p.type) {
    case GGML_TYPE.F32:
      return f32Bytes(values);
    case GGML_TYPE.F16:
      return quantizeF16(values);
    case GGML_TYPE.Q8_0:
      return quantizeQ8_0(values);
    case GGML_TYPE.Q4_0:
      return quantizeQ4_0(values, { fma: q4Fma, importance: p.importance, cols: p.dims[0] });
    case GGML_TYPE.Q5_0:
      return quantizeQ5_0(values, { fma: q4Fma });
    default:
      throw new Error(`no encoder for ${ggmlTypeName(p.type)}`);
  }
}

const TENSOR_TYPE_ID: Record<LlamaTensorType, number> = {
  f16: GGML_TYPE.F16,
  q8_0: GGML_TYPE.Q8_0,
  q4_0: GGML_TYPE.Q4_0,
  q4_1: GGML_TYPE.Q4_1,
  q5_0: GGML_TYPE.Q5_0,
  q5_1: GGML_TYPE.Q5_1,
  q2_k: GGML_TYPE.Q2_K,
  q3_k: GGML_TYPE.Q3_K,
  q4_k: GGML_TYPE.Q4_K,
  q5_k: GGML_TYPE.Q5_K,
  q6_k: GGML_TYPE.Q6_K,
  iq4_nl: GGML_TYPE.IQ4_NL,
  iq4_xs: GGML_TYPE.IQ4_XS,
  iq3_xxs: GGML_TYPE.IQ3_XXS,
  iq3_s: GGML_TYPE.IQ3_S,
  iq1_s: GGML_TYPE.IQ1_S,
  iq1_m: GGML_TYPE.IQ1_M,
  iq2_xxs: GGML_TYPE.IQ2_XXS,
  iq2_xs: GGML_TYPE.IQ2_XS,
  iq2_s: GGML_TYPE.IQ2_S,
};

/** The ggml type id -> formats/ggml-codes.ts block type, for the types kept as codes + block bytes. */
const BLOCK_TYPE_OF = Object.fromEntries(
  Object.entries(TENSOR_TYPE_ID)
    .filter(([name]) => isGgmlBlockType(name))
    .map(([name, id]) => [id, name]),
) as Partial<Record<number, GgmlBlockType>>;

/**
 * The GGUF bytes of a planned tensor: the block types by their quantizers (ggml-codes.ts, with the
 * tensor's importance when it has one), on the worker threads where there are some; Q5_0 with
 * --q4-fma (no importance) and the other types by encode.
 */
async function encodeTensor(p: PlannedTensor, values: Float32Array, q4Fma: boolean): Promise<Uint8Array> {
  const type = BLOCK_TYPE_OF[p.type];
  if (!type || (type === 'q5_0' && q4Fma && !p.importance)) return encode(p, values, q4Fma);
  const [cols, imp] = [p.dims[0], p.importance];
  return (
    (await quantizeBlocksInParallel(type, values, cols, imp)) ?? quantizeGgmlBlocks(values, cols, type, imp)
  );
}

/**
 * The ggml type of a 2-D tensor with rows of `cols` values: llama-quantize's (formats/llama-mix.ts).
 * A linear the checkpoint stores in the type llama-quantize gives it under the other has_imatrix keeps
 * that type (`stored`), so its own blocks are written rather than rounded a second time: a recipe of
 * q4_0 for every linear with an imatrix exports to Q4_0 throughout, as it was quantized.
 */
function matrixType(role: TensorRole, cols: number, type: GgufExportType, stored?: number): number {
  if (type === 'f16') return GGML_TYPE.F16;
  const id = TENSOR_TYPE_ID[llamaTensorType(type, role, cols)];
  if (stored === undefined || stored === id || role.kind !== 'linear') return id;
  const other = TENSOR_TYPE_ID[llamaTensorType(type, { ...role, imatrix: !role.imatrix }, cols)];
  return other === stored ? stored : id;
}

/** The ggml type a checkpoint's linear is stored in, when it is a llama.cpp type its blocks can be written in. */
function storedType(q: QuantizedWeight | undefined): number | undefined {
  const spec = q?.encoded.spec;
  if (!q || spec?.kind !== 'ggml' || q.salient || q.gIdx) return undefined;
  return TENSOR_TYPE_ID[spec.type as LlamaTensorType];
}

class TensorPlan {
  readonly tensors: PlannedTensor[] = [];
  readonly fallbacks: GgufExportSummary['fallbacks'] = [];

  constructor(
    private readonly model: LlamaModel,
    private readonly type: GgufExportType,
    /** the checkpoint's importance matrix, which llama-quantize --imatrix would be given */
    private readonly imatrix?: Imatrix,
  ) {}

  private read(t: Tensor, transform?: (v: Float32Array) => Float32Array): () => Promise<Float32Array> {
    return async () => {
      const v = await this.model.backend.read(t);
      return transform ? transform(v) : v;
    };
  }

  vector(name: string, t: Tensor, transform?: (v: Float32Array) => Float32Array): void {
    this.tensors.push({ name, dims: [t.shape[0]], type: GGML_TYPE.F32, values: this.read(t, transform) });
  }

  matrix(
    name: string,
    t: Tensor,
    role: TensorRole,
    transform?: <T extends Float32Array | Uint8Array>(v: T, cols: number) => T,
    quantized?: QuantizedWeight,
  ): void {
    const [rows, cols] = t.shape;
    const type = matrixType(role, cols, this.type, storedType(quantized));
    if (this.type !== 'f16' && isFallbackType(this.type, role, cols))
      this.fallbacks.push({ tensor: name, type: ggmlTypeName(type) });
    const values = this.read(t, transform && ((v) => transform(v, cols)));
    const blocks = storedBlocks(quantized, type, transform);
    const importance = this.imatrix?.importance.get(name);
    if (importance && importance.length !== cols)
      fail(`importance matrix: ${name} has ${importance.length} values, its rows ${cols}`);
    this.tensors.push({
      name,
      dims: [cols, rows],
      type,
      values,
      ...(blocks ? { blocks } : {}),
      ...(importance ? { importance } : {}),
    });
  }

  constant(name: string, values: Float32Array): void {
    this.tensors.push({ name, dims: [values.length], type: GGML_TYPE.F32, values: async () => values });
  }
}

/**
 * A llama.cpp-format checkpoint's own blocks for a tensor of the same type: re-quantizing its decoded
 * values would pick other block scales wherever GPTQ's updates or AWQ's clipping moved a block's
 * largest value (and the K-quants' searches are not idempotent).
 */
function storedBlocks(
  q: QuantizedWeight | undefined,
  type: number,
  transform?: <T extends Float32Array | Uint8Array>(v: T, cols: number) => T,
): (() => Uint8Array) | undefined {
  if (!q || type !== storedType(q)) return undefined;
  const spec = q.encoded.spec as GgmlSpec;
  const { codes, scales, cols, scaleCodes } = q.encoded;
  const rows = codes.length / cols;
  const t = <T extends Float32Array | Uint8Array>(v: T) => (transform ? transform(v, v.length / rows) : v);
  if (isGgmlBlockType(spec.type)) {
    const blockType = spec.type;
    return () => ggmlBlockBytes(t(codes), t(scaleCodes as Uint8Array), blockType);
  }
  return () => ggmlBlocks(t(codes), t(scales), spec);
}

/** llama.cpp's rotary row order for q/k: a transform of any row-major array with `cols` per row. */
function rotaryPermutation(name: LinearName, config: ModelConfig) {
  if (name !== 'q_proj' && name !== 'k_proj') return undefined;
  const heads = name === 'q_proj' ? config.numHeads : config.numKvHeads;
  return <T extends Float32Array | Uint8Array>(v: T, cols: number): T =>
    permuteRotaryRows(v, v.length / cols, cols, heads);
}

/**
 * `weighted`: the checkpoint was quantized with an importance matrix (llama-quantize's has_imatrix,
 * which moves some tensors to other types); `imatrix`: that matrix, when its file is at hand.
 */
function planTensors(
  model: LlamaModel,
  type: GgufExportType,
  weighted: boolean,
  imatrix?: Imatrix,
): TensorPlan {
  const { config } = model;
  const plan = new TensorPlan(model, type, imatrix);
  if (config.rope.type === 'llama3') plan.constant('rope_freqs.weight', llama3RopeFactors(config));
  const tied = model.lmHead === model.embedTokens;
  plan.matrix('token_embd.weight', model.embedTokens, { kind: tied ? 'output' : 'embed' });
  model.layers.forEach((layer, i) => {
    plan.vector(`blk.${i}.attn_norm.weight`, layer.inputNorm);
    for (const name of LINEARS) {
      if (name === 'gate_proj') plan.vector(`blk.${i}.ffn_norm.weight`, layer.postNorm);
      const lin = layer.linears[name];
      const permute = rotaryPermutation(name, config);
      const base = `blk.${i}.${LINEAR_GGUF[name]}`;
      const role = { kind: 'linear', ...linearPlace(config, i, name), imatrix: weighted } as const;
      plan.matrix(`${base}.weight`, lin.weight, role, permute, lin.quantized);
      if (lin.bias) plan.vector(`${base}.bias`, lin.bias, permute && ((v) => permute(v, 1)));
    }
  });
  plan.vector('output_norm.weight', model.finalNorm);
  if (!tied) plan.matrix('output.weight', model.lmHead, { kind: 'output' });
  return plan;
}

function checkFinite(modelDir: string, name: string, v: Float32Array): void {
  for (let i = 0; i < v.length; i++)
    if (!Number.isFinite(v[i]))
      fail(`${modelDir}: tensor ${name} holds ${v[i]} at element ${i}; refusing to export`);
}

async function writeTensors(
  writer: GgufWriter,
  plan: TensorPlan,
  modelDir: string,
  opts: GgufExportOptions,
): Promise<void> {
  let done = 0;
  for (const p of plan.tensors) {
    if (p.blocks) writer.write(p.name, p.blocks());
    else {
      const values = await p.values();
      checkFinite(modelDir, p.name, values);
      writer.write(p.name, await encodeTensor(p, values, opts.q4Fma ?? false));
    }
    opts.onProgress?.(++done, plan.tensors.length, p.name);
  }
}

function countTypes(tensors: readonly GgufTensorSpec[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const t of tensors) counts[ggmlTypeName(t.type)] = (counts[ggmlTypeName(t.type)] ?? 0) + 1;
  return counts;
}

/**
 * The importance matrix of a checkpoint quantized with one: its imatrix.gguf, or the llama-imatrix file
 * its recipe named (when that file is still there).
 */
function checkpointImatrix(
  modelDir: string,
  q: QuantizationConfig | undefined,
): { file: string; imatrix: Imatrix } | undefined {
  const step = q?.recipe.steps.find((s) => s.method === 'imatrix');
  const file = step && (step.file ?? path.join(modelDir, 'imatrix.gguf'));
  if (!file || !fs.existsSync(file)) return undefined;
  return { file, imatrix: readImatrix(file) };
}

/** The quantize.imatrix.* keys llama-quantize --imatrix records (tools/quantize/quantize.cpp). */
function imatrixMetadata(found: ReturnType<typeof checkpointImatrix>): Map<string, GgufValue> {
  if (!found) return new Map();
  const { file, imatrix: m } = found;
  const keys = new Map<string, GgufValue>([['quantize.imatrix.file', gguf.str(path.basename(file))]]);
  if (m.datasets.length) keys.set('quantize.imatrix.dataset', gguf.str(m.datasets[0]));
  keys.set('quantize.imatrix.entries_count', gguf.i32(m.importance.size));
  if (m.chunks > 0) keys.set('quantize.imatrix.chunks_count', gguf.i32(m.chunks));
  return keys;
}

/** Exports the model in `modelDir` as one GGUF file at `out`. */
export async function exportGguf(
  modelDir: string,
  out: string,
  opts: GgufExportOptions,
): Promise<GgufExportSummary> {
  const { config, source, quantization } = checkSource(modelDir, opts.type);
  if (fs.existsSync(out) && !opts.force) fail(`${out} already exists (pass --force to replace it)`);
  const vocab = readVocab(modelDir, config);
  const { model } = await loadModel(modelDir, new CpuBackend());
  try {
    const name = path.basename(path.resolve(modelDir));
    const imatrix = checkpointImatrix(modelDir, quantization);
    const metadata = new Map([
      ...modelMetadata(name, config, opts.type),
      ...imatrixMetadata(imatrix),
      ...tokenizerMetadata(vocab),
    ]);
    const weighted = !!quantization && usesImatrix(quantization.recipe);
    const plan = planTensors(model, opts.type, weighted, imatrix?.imatrix);
    const writer = new GgufWriter(out, metadata, plan.tensors, { force: opts.force });
    try {
      await writeTensors(writer, plan, modelDir, opts);
      writer.finish();
    } catch (e) {
      writer.abort();
      throw e;
    }
    return {
      out,
      type: opts.type,
      fileType: FILE_TYPE[opts.type],
      bytes: fs.statSync(out).size,
      tensors: plan.tensors.length,
      tensorTypes: countTypes(plan.tensors),
      fallbacks: plan.fallbacks,
      source,
      tokenizer: { model: 'gpt2', pre: vocab.pre, tokens: vocab.tokens.length, merges: vocab.merges.length },
    };
  } finally {
    model.dispose();
  }
}
