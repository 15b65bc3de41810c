/**
 * A llama.cpp GGUF file as an llmq model: its ModelConfig, its tokenizer and a LlamaModel whose weights
 * are the GGUF tensors dequantized to float32 (F16 tensors stay F16), so that `llmq eval` measures
 * GGUF quantizations with llmq's own perplexity protocol. Q4_0 / Q8_0 linears also keep their codes
 * and block scales (the stored form of llmq's own Q4_0 / Q8_0 checkpoints), and loaded codes-only,
 * the other block types' linears become BlockCodes instead of f32, so on WebGPU they run from the codes
 * (model/packed.ts) and never exist as float32 on the device.
 *
 * Sources read (public, ggml-org/llama.cpp): gguf-py/gguf/constants.py (llama.* keys, tensor names,
 * LlamaFileType, token types), convert_hf_to_gguf.py / conversion/llama.py (the q/k row permutation
 * inverted here, rope_freqs for llama3 rope, tied embeddings when output.weight is absent),
 * src/llama-vocab.cpp (tokenizer.ggml.model "gpt2", the pre-tokenizer regexes of "default", "gpt-2"
 * and "llama-bpe", ignore_merges and add_bos for the llama-bpe group).
 *
 * Only `general.architecture` "llama" is read (Mistral and Llama 2/3 conversions use it); the
 * tokenizer is rebuilt as a Hugging Face tokenizer.json object for byte-level BPE vocabularies only.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { fail } from '../errors.ts';
import {
  decodeGgml,
  dequantizeQ2_K,
  dequantizeQ3_K,
  dequantizeQ4_0,
  dequantizeQ4_1,
  dequantizeQ4_K,
  dequantizeQ5_0,
  dequantizeQ5_1,
  dequantizeQ5_K,
  dequantizeQ6_K,
  dequantizeQ8_0,
  type GgmlGroupCodes,
  ggmlGroupValues,
  ggmlUnpackBlocks,
  QK,
  unpackQ2_K,
  unpackQ3_K,
  unpackQ4_1,
  unpackQ4_K,
  unpackQ5_0,
  unpackQ5_1,
  unpackQ5_K,
  unpackQ6_K,
} from '../formats/ggml.ts';
import { codeBits } from '../formats/index.ts';
import { unpackIq1M, unpackIq1S } from '../formats/iq1.ts';
import { unpackIq2S, unpackIq2Xs, unpackIq2Xxs } from '../formats/iq2.ts';
import { unpackIq3S, unpackIq3Xxs } from '../formats/iq3.ts';
import { unpackIq4Nl, unpackIq4Xs } from '../formats/iq4.ts';
import type { GgmlSpec } from '../formats/spec.ts';
import {
  ATTENTION_LINEARS,
  LINEARS,
  type Linear,
  LlamaModel,
  linearTensorName,
  type StoredLinearReader,
} from '../model/llama.ts';
import { blockCodes, type CodesOnly, codesOnlyWeight } from '../model/packed.ts';
import type { Backend } from '../tensor/tensor.ts';
import { type ModelConfig, parseModelConfig } from './config.ts';
import {
  GGML_TYPE,
  type GgufFile,
  type GgufTensorInfo,
  ggmlTypeName,
  ggufMeta,
  LINEAR_GGUF,
  readGgufTensor,
} from './gguf-format.ts';
import { llama3RopeFactors } from './rope.ts';
import type { Checkpoint, TensorData, TensorInfo } from './safetensors-format.ts';
import type { TextTokenizer } from './tokenizer-json.ts';

export function isGgufPath(path: string): boolean {
  return path.toLowerCase().endsWith('.gguf');
}

/** LlamaFileType names (gguf-py constants.py), for the recipe line of a loaded GGUF. */
const FILE_TYPE_NAMES: Record<number, string> = {
  0: 'all_f32',
  1: 'mostly_f16',
  2: 'mostly_q4_0',
  3: 'mostly_q4_1',
  7: 'mostly_q8_0',
  8: 'mostly_q5_0',
  9: 'mostly_q5_1',
  10: 'mostly_q2_k',
  11: 'mostly_q3_k_s',
  12: 'mostly_q3_k_m',
  13: 'mostly_q3_k_l',
  14: 'mostly_q4_k_s',
  15: 'mostly_q4_k_m',
  16: 'mostly_q5_k_s',
  17: 'mostly_q5_k_m',
  18: 'mostly_q6_k',
  19: 'mostly_iq2_xxs',
  20: 'mostly_iq2_xs',
  21: 'mostly_q2_k_s',
  22: 'mostly_iq3_xs',
  23: 'mostly_iq3_xxs',
  24: 'mostly_iq1_s',
  25: 'mostly_iq4_nl',
  26: 'mostly_iq3_s',
  27: 'mostly_iq3_m',
  28: 'mostly_iq2_s',
  29: 'mostly_iq2_m',
  30: 'mostly_iq4_xs',
  31: 'mostly_iq1_m',
  32: 'mostly_bf16',
};

export function ggufFileTypeName(file: GgufFile): string {
  const ft = ggufMeta(file, 'general.file_type');
  if (typeof ft !== 'number') return 'unknown file_type';
  return FILE_TYPE_NAMES[ft] ?? `file_type ${ft}`;
}

// ---------------------------------------------------------------------------------------------
// config

function metaNumber(file: GgufFile, key: string, required: boolean): number | undefined {
  const v = ggufMeta(file, key);
  if (v === undefined) {
    if (required) fail(`${file.path}: metadata ${key} is missing`);
    return undefined;
  }
  if (typeof v !== 'number') fail(`${file.path}: metadata ${key} must be a number, found ${typeof v}`);
  return v;
}

function hasTensor(file: GgufFile, name: string): boolean {
  return file.tensors.some((t) => t.name === name);
}

function tensorInfo(file: GgufFile, name: string): GgufTensorInfo {
  const t = file.tensors.find((x) => x.name === name);
  if (!t) fail(`${file.path}: tensor ${name} is missing`);
  return t;
}

function f32Tensor(file: GgufFile, name: string): Float32Array {
  const t = tensorInfo(file, name);
  if (t.type !== GGML_TYPE.F32)
    fail(`${file.path}: tensor ${name} must be F32, found ${ggmlTypeName(t.type)}`);
  const bytes = readGgufTensor(file, name);
  const out = new Float32Array(bytes.length / 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

/** Llama 3.x rope_freqs: the llama3 parameters (as in the HF configs) whose factors match the tensor exactly. */
function llama3RopeFromFactors(file: GgufFile, base: Omit<ModelConfig, 'rope'>, theta: number) {
  const factors = f32Tensor(file, 'rope_freqs.weight');
  for (const factor of [8, 16, 32]) {
    const rope = {
      rope_type: 'llama3',
      rope_theta: theta,
      factor,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    const expected = llama3RopeFactors({
      ...base,
      rope: {
        type: 'llama3',
        theta,
        factor,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 8192,
      },
    });
    if (expected.length === factors.length && expected.every((v, i) => v === factors[i])) return rope;
  }
  return fail(
    `${file.path}: rope_freqs.weight does not match Llama 3.1/3.2 rope scaling (factor 8, 16 or 32, low 1, high 4, original context 8192); other rope frequency factors are not supported`,
  );
}

function ropeParameters(file: GgufFile, config: ModelConfig): Record<string, unknown> {
  const theta = config.rope.theta;
  const scaling = ggufMeta(file, 'llama.rope.scaling.type');
  if (hasTensor(file, 'rope_freqs.weight')) {
    if (scaling !== undefined && scaling !== 'none')
      fail(`${file.path}: both rope_freqs.weight and llama.rope.scaling.type ${String(scaling)} are set`);
    return llama3RopeFromFactors(file, config, theta);
  }
  if (scaling === undefined || scaling === 'none') return { rope_type: 'default', rope_theta: theta };
  if (scaling === 'linear') {
    const factor = metaNumber(file, 'llama.rope.scaling.factor', true);
    return { rope_type: 'linear', rope_theta: theta, factor };
  }
  return fail(`${file.path}: llama.rope.scaling.type ${String(scaling)} is not supported (none, linear)`);
}

function checkArchitecture(file: GgufFile): void {
  const arch = ggufMeta(file, 'general.architecture');
  if (arch !== 'llama')
    fail(
      `${file.path}: general.architecture ${JSON.stringify(arch)} is not supported (only "llama" GGUF files)`,
    );
  const experts = metaNumber(file, 'llama.expert_count', false);
  if (experts !== undefined && experts > 0)
    fail(`${file.path}: a mixture of ${experts} experts is not supported (dense llama only)`);
}

/** The llama.* metadata as a transformers-style config.json object. */
function rawConfig(file: GgufFile): Record<string, unknown> {
  const num = (key: string, required = true) => metaNumber(file, `llama.${key}`, required);
  const embed = tensorInfo(file, 'token_embd.weight');
  const hidden = num('embedding_length') as number;
  const heads = num('attention.head_count') as number;
  const headDim = num('attention.key_length', false) ?? hidden / heads;
  const valueLength = num('attention.value_length', false);
  if (valueLength !== undefined && valueLength !== headDim)
    fail(`${file.path}: key_length ${headDim} and value_length ${valueLength} differ; not supported`);
  const ropeDims = num('rope.dimension_count', false);
  if (ropeDims !== undefined && ropeDims !== headDim)
    fail(
      `${file.path}: rope.dimension_count ${ropeDims} differs from the head size ${headDim} (partial rotary is not supported)`,
    );
  return {
    model_type: 'llama',
    hidden_size: hidden,
    intermediate_size: num('feed_forward_length'),
    num_hidden_layers: num('block_count'),
    num_attention_heads: heads,
    num_key_value_heads: num('attention.head_count_kv', false) ?? heads,
    head_dim: headDim,
    vocab_size: num('vocab_size', false) ?? embed.dims[1],
    rms_norm_eps: num('attention.layer_norm_rms_epsilon'),
    max_position_embeddings: num('context_length', false),
    rope_theta: num('rope.freq_base', false) ?? 10000,
    tie_word_embeddings: !hasTensor(file, 'output.weight'),
    attention_bias: hasTensor(file, 'blk.0.attn_q.bias'),
    mlp_bias: hasTensor(file, 'blk.0.ffn_up.bias'),
    bos_token_id: ggufMeta(file, 'tokenizer.ggml.bos_token_id') ?? null,
    eos_token_id: ggufMeta(file, 'tokenizer.ggml.eos_token_id') ?? null,
    torch_dtype: 'float32',
  };
}

export function ggufModelConfig(file: GgufFile): ModelConfig {
  checkArchitecture(file);
  const raw = rawConfig(file);
  const plain = parseModelConfig(raw, file.path);
  const rope = ropeParameters(file, plain);
  return parseModelConfig({ ...raw, rope_theta: undefined, rope_parameters: rope }, file.path);
}

// ---------------------------------------------------------------------------------------------
// weights

type Dequantizer = (bytes: Uint8Array, n: number) => Float32Array;
const DEQUANTIZERS: Record<number, Dequantizer> = {
  [GGML_TYPE.Q8_0]: dequantizeQ8_0,
  [GGML_TYPE.Q4_0]: dequantizeQ4_0,
  [GGML_TYPE.Q4_1]: dequantizeQ4_1,
  [GGML_TYPE.Q5_0]: dequantizeQ5_0,
  [GGML_TYPE.Q5_1]: dequantizeQ5_1,
  [GGML_TYPE.Q2_K]: dequantizeQ2_K,
  [GGML_TYPE.Q3_K]: dequantizeQ3_K,
  [GGML_TYPE.Q4_K]: dequantizeQ4_K,
  [GGML_TYPE.Q5_K]: dequantizeQ5_K,
  [GGML_TYPE.Q6_K]: dequantizeQ6_K,
  [GGML_TYPE.IQ4_NL]: (bytes, n) => ggmlGroupValues(unpackIq4Nl(bytes, n)),
  [GGML_TYPE.IQ4_XS]: (bytes, n) => ggmlGroupValues(unpackIq4Xs(bytes, n)),
  [GGML_TYPE.IQ3_XXS]: (bytes, n) => ggmlGroupValues(unpackIq3Xxs(bytes, n)),
  [GGML_TYPE.IQ3_S]: (bytes, n) => ggmlGroupValues(unpackIq3S(bytes, n)),
  [GGML_TYPE.IQ1_S]: (bytes, n) => ggmlGroupValues(unpackIq1S(bytes, n)),
  [GGML_TYPE.IQ1_M]: (bytes, n) => ggmlGroupValues(unpackIq1M(bytes, n)),
  [GGML_TYPE.IQ2_XXS]: (bytes, n) => ggmlGroupValues(unpackIq2Xxs(bytes, n)),
  [GGML_TYPE.IQ2_XS]: (bytes, n) => ggmlGroupValues(unpackIq2Xs(bytes, n)),
  [GGML_TYPE.IQ2_S]: (bytes, n) => ggmlGroupValues(unpackIq2S(bytes, n)),
};
const READABLE_TYPES = [GGML_TYPE.F32, GGML_TYPE.F16, ...Object.keys(DEQUANTIZERS).map(Number)];

/**
 * Inverse of export/gguf.ts permuteRotaryRows: GGUF's interleaved RoPE rows back to HF's rotate-half
 * order (row h*hd + 2i + j returns to h*hd + j*(hd/2) + i). Works on f32 or f16 rows.
 */
export function unpermuteRotaryRows<T extends Float32Array | Uint16Array | Uint8Array>(
  w: T,
  rows: number,
  cols: number,
  heads: number,
): T {
  const headDim = rows / heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0)
    throw new RangeError(`${rows} rows do not split into ${heads} heads of an even size`);
  const half = headDim / 2;
  const out = new (w.constructor as new (n: number) => T)(w.length);
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < 2; j++)
      for (let i = 0; i < half; i++) {
        const from = (h * headDim + 2 * i + j) * cols;
        out.set(w.subarray(from, from + cols), (h * headDim + j * half + i) * cols);
      }
  return out;
}

interface Source {
  gguf: string;
  /** heads of the rotary permutation to undo */
  rotaryHeads?: number;
}

/** HF tensor name -> GGUF tensor (and the q/k permutation to undo). */
function tensorSources(file: GgufFile, config: ModelConfig): Map<string, Source> {
  const map = new Map<string, Source>([
    ['model.embed_tokens.weight', { gguf: 'token_embd.weight' }],
    ['model.norm.weight', { gguf: 'output_norm.weight' }],
  ]);
  if (hasTensor(file, 'output.weight')) map.set('lm_head.weight', { gguf: 'output.weight' });
  for (let i = 0; i < config.numLayers; i++) {
    const hf = `model.layers.${i}`;
    map.set(`${hf}.input_layernorm.weight`, { gguf: `blk.${i}.attn_norm.weight` });
    map.set(`${hf}.post_attention_layernorm.weight`, { gguf: `blk.${i}.ffn_norm.weight` });
    for (const name of LINEARS) {
      const block = (ATTENTION_LINEARS as readonly string[]).includes(name) ? 'self_attn' : 'mlp';
      const rotaryHeads =
        name === 'q_proj' ? config.numHeads : name === 'k_proj' ? config.numKvHeads : undefined;
      for (const part of ['weight', 'bias']) {
        const gguf = `blk.${i}.${LINEAR_GGUF[name]}.${part}`;
        if (hasTensor(file, gguf)) map.set(`${hf}.${block}.${name}.${part}`, { gguf, rotaryHeads });
      }
    }
  }
  for (const { gguf } of map.values()) {
    const t = tensorInfo(file, gguf);
    if (!READABLE_TYPES.includes(t.type))
      fail(
        `${file.path}: tensor ${gguf} has type ${ggmlTypeName(t.type)}, which llmq cannot dequantize (F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M)`,
      );
  }
  return map;
}

function decodeTensor(file: GgufFile, t: GgufTensorInfo): Float32Array | Uint16Array {
  const bytes = readGgufTensor(file, t.name);
  const n = t.dims.reduce((a, b) => a * b, 1);
  if (t.type === GGML_TYPE.F32) return new Float32Array(bytes.slice().buffer);
  if (t.type === GGML_TYPE.F16) return new Uint16Array(bytes.slice().buffer);
  return DEQUANTIZERS[t.type](bytes, n);
}

/** A read-only Checkpoint over a GGUF file, with HF tensor names and row-major HF shapes. */
class GgufCheckpoint implements Checkpoint {
  readonly files: string[];
  readonly totalBytes: number;
  constructor(
    readonly file: GgufFile,
    private readonly sources: Map<string, Source>,
  ) {
    this.files = [file.path];
    this.totalBytes = [...sources.values()].reduce((s, x) => s + (tensorInfo(file, x.gguf).nbytes ?? 0), 0);
  }
  get dir(): string {
    return this.file.path;
  }
  names(): string[] {
    return [...this.sources.keys()];
  }
  has(name: string): boolean {
    return this.sources.has(name);
  }
  private source(name: string): Source {
    const s = this.sources.get(name);
    if (!s) fail(`${this.file.path}: no tensor for ${name}`);
    return s;
  }
  info(name: string): TensorInfo {
    const t = tensorInfo(this.file, this.source(name).gguf);
    return {
      name,
      dtype: t.type === GGML_TYPE.F16 ? 'F16' : 'F32',
      shape: [...t.dims].reverse(),
      byteOffset: this.file.dataOffset + t.offset,
      byteLength: t.nbytes ?? 0,
      file: this.file.path,
    };
  }
  read(name: string): TensorData {
    const src = this.source(name);
    const t = tensorInfo(this.file, src.gguf);
    const shape = [...t.dims].reverse();
    let data = decodeTensor(this.file, t);
    if (src.rotaryHeads !== undefined)
      data = unpermuteRotaryRows(data, shape[0], shape[1] ?? 1, src.rotaryHeads);
    return { dtype: t.type === GGML_TYPE.F16 ? 'F16' : 'F32', shape, data };
  }
  close(): void {}
}

const CODE_FORMATS: Record<number, GgmlSpec> = {
  [GGML_TYPE.Q4_0]: { kind: 'ggml', type: 'q4_0' },
  [GGML_TYPE.Q8_0]: { kind: 'ggml', type: 'q8_0' },
};

/** Block formats llmq reads but does not write, as codes + group parameters (model/packed.ts). */
const GROUP_UNPACKERS: Partial<Record<number, (bytes: Uint8Array, n: number) => GgmlGroupCodes>> = {
  [GGML_TYPE.Q4_1]: unpackQ4_1,
  [GGML_TYPE.Q5_0]: unpackQ5_0,
  [GGML_TYPE.Q5_1]: unpackQ5_1,
  [GGML_TYPE.Q2_K]: unpackQ2_K,
  [GGML_TYPE.Q3_K]: unpackQ3_K,
  [GGML_TYPE.Q4_K]: unpackQ4_K,
  [GGML_TYPE.Q5_K]: unpackQ5_K,
  [GGML_TYPE.Q6_K]: unpackQ6_K,
  [GGML_TYPE.IQ4_NL]: unpackIq4Nl,
  [GGML_TYPE.IQ4_XS]: unpackIq4Xs,
  [GGML_TYPE.IQ3_XXS]: unpackIq3Xxs,
  [GGML_TYPE.IQ3_S]: unpackIq3S,
  [GGML_TYPE.IQ1_S]: unpackIq1S,
  [GGML_TYPE.IQ1_M]: unpackIq1M,
  [GGML_TYPE.IQ2_XXS]: unpackIq2Xxs,
  [GGML_TYPE.IQ2_XS]: unpackIq2Xs,
  [GGML_TYPE.IQ2_S]: unpackIq2S,
};

/**
 * Reads a Q4_0 / Q8_0 linear as codes + block scales in HF row order (its f32 weight is decodeGgml of
 * them, bit-identical to the dequantizers), and a linear of another block format as BlockCodes when
 * `codesOnly` takes it (no f32 weight then). Other linears: undefined, read as tensors.
 */
function ggmlLinearReader(
  file: GgufFile,
  sources: Map<string, Source>,
  backend: Backend,
  codesOnly?: CodesOnly,
): StoredLinearReader {
  return (layer, name, shape) => {
    const src = sources.get(linearTensorName(layer, name));
    if (!src) return undefined;
    const t = tensorInfo(file, src.gguf);
    const spec = CODE_FORMATS[t.type];
    const unpack = GROUP_UNPACKERS[t.type];
    if (!spec && !(unpack && codesOnly)) return undefined;
    const [rows, cols] = [...t.dims].reverse();
    if (t.dims.length !== 2 || rows !== shape[0] || cols !== shape[1])
      fail(
        `${file.path}: tensor ${src.gguf} has shape [${[...t.dims].reverse().join(', ')}], the metadata implies [${shape.join(', ')}]`,
      );
    const heads = src.rotaryHeads;
    const hfRows = <T extends Float32Array | Uint8Array>(v: T, perRow: number): T =>
      heads === undefined ? v : unpermuteRotaryRows(v, rows, perRow, heads);
    const bytes = readGgufTensor(file, src.gguf);
    if (!spec) {
      const bc = blockCodes(unpack!(bytes, rows * cols), rows, cols);
      if (!bc) return undefined;
      const groups = cols / bc.group;
      const inHfOrder = {
        ...bc,
        codes: hfRows(bc.codes, cols),
        scales: hfRows(bc.scales, groups),
        zeros: hfRows(bc.zeros, groups),
      };
      if (!codesOnly?.({ blockCodes: inHfOrder })) return undefined;
      return { blockCodes: inHfOrder, weight: codesOnlyWeight(backend, rows, cols) };
    }
    const unpacked = ggmlUnpackBlocks(bytes, spec);
    const codes = hfRows(unpacked.codes, cols);
    const scales = hfRows(unpacked.scales, cols / QK);
    const quantized = { encoded: { spec, rows, cols, bits: codeBits(spec), codes, block: QK, scales } };
    const weight = codesOnly?.({ quantized })
      ? codesOnlyWeight(backend, rows, cols)
      : backend.upload(decodeGgml(codes, scales, spec), shape, 'f32');
    return { quantized, weight } satisfies Partial<Linear>;
  };
}

/**
 * The LlamaModel of a GGUF file, its weights dequantized (Q4_0 / Q8_0 linears with their codes too:
 * those `codesOnly` accepts get no f32 weight); quantization.recipe names the file type.
 */
export function ggufModelFromFile(file: GgufFile, backend: Backend, codesOnly?: CodesOnly): LlamaModel {
  const path = file.path;
  const config = ggufModelConfig(file);
  const sources = tensorSources(file, config);
  const ckpt = new GgufCheckpoint(file, sources);
  const reader = ggmlLinearReader(file, sources, backend, codesOnly);
  const model = LlamaModel.fromCheckpoint(path, config, ckpt, backend, reader);
  model.quantization = { recipe: `gguf ${ggufFileTypeName(file)}` };
  return model;
}

// ---------------------------------------------------------------------------------------------
// tokenizer

/** llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3 regex (Llama 3's split, case-insensitive contractions spelled out). */
const LLAMA3_REGEX =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT: four regexes applied one after another. */
const DEFAULT_REGEXES = [
  '[\\p{P}\\$\\+<=>\\^~\\|]+',
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
  '\\p{N}+',
  '[0-9][0-9][0-9]',
];

const TOKEN_TYPE = { control: 3, userDefined: 4 } as const;

const split = (regex: string) => ({
  type: 'Split',
  pattern: { Regex: regex },
  behavior: 'Isolated',
  invert: false,
});
const byteLevel = (useRegex: boolean) => ({
  type: 'ByteLevel',
  add_prefix_space: false,
  trim_offsets: true,
  use_regex: useRegex,
});

function preTokenizer(file: GgufFile, pre: string): Record<string, unknown> {
  if (pre === 'gpt-2') return byteLevel(true);
  if (pre === 'llama-bpe' || pre === 'llama3' || pre === 'llama-v3')
    return { type: 'Sequence', pretokenizers: [split(LLAMA3_REGEX), byteLevel(false)] };
  if (pre === 'default')
    return { type: 'Sequence', pretokenizers: [...DEFAULT_REGEXES.map(split), byteLevel(false)] };
  return fail(
    `${file.path}: tokenizer.ggml.pre "${pre}" is not supported (llama-bpe, gpt-2, default); pass --tokenizer <hf-model-dir>`,
  );
}

function stringArray(file: GgufFile, key: string, required: boolean): string[] {
  const v = ggufMeta(file, key);
  if (v === undefined && !required) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string'))
    fail(`${file.path}: metadata ${key} must be an array of strings; pass --tokenizer <hf-model-dir>`);
  return v as string[];
}

function addBos(file: GgufFile, pre: string): { id: number; content: string } | undefined {
  const flag = ggufMeta(file, 'tokenizer.ggml.add_bos_token');
  const add =
    typeof flag === 'boolean' ? flag : pre === 'llama-bpe' || pre === 'llama3' || pre === 'llama-v3';
  if (!add) return undefined;
  const id = ggufMeta(file, 'tokenizer.ggml.bos_token_id');
  const tokens = stringArray(file, 'tokenizer.ggml.tokens', true);
  if (typeof id !== 'number' || tokens[id] === undefined)
    fail(
      `${file.path}: the tokenizer adds a BOS token but tokenizer.ggml.bos_token_id is missing or out of range`,
    );
  return { id, content: tokens[id] };
}

/** A tokenizer.json object equivalent to the GGUF's byte-level BPE vocabulary. */
export function ggufTokenizerJson(file: GgufFile): Record<string, unknown> {
  const model = ggufMeta(file, 'tokenizer.ggml.model');
  if (model !== 'gpt2')
    fail(
      `${file.path}: tokenizer.ggml.model ${JSON.stringify(model)} is not supported (only byte-level BPE "gpt2"); pass --tokenizer <hf-model-dir>`,
    );
  const pre = String(ggufMeta(file, 'tokenizer.ggml.pre') ?? 'default');
  const tokens = stringArray(file, 'tokenizer.ggml.tokens', true);
  const types = ggufMeta(file, 'tokenizer.ggml.token_type');
  const vocab: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  tokens.forEach((content, id) => {
    const type = Array.isArray(types) ? types[id] : undefined;
    if (type === TOKEN_TYPE.control || type === TOKEN_TYPE.userDefined) {
      const special = type === TOKEN_TYPE.control;
      added.push({
        id,
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: !special,
        special,
      });
    }
    vocab[content] = id;
  });
  const bos = addBos(file, pre);
  const llama3 = pre === 'llama-bpe' || pre === 'llama3' || pre === 'llama-v3';
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer(file, pre),
    post_processor: bos && {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos.content, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos.content, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: bos.content, type_id: 0 } },
        { Sequence: { id: 'B', type_id: 0 } },
      ],
      special_tokens: { [bos.content]: { id: bos.content, ids: [bos.id], tokens: [bos.content] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: llama3,
      vocab,
      merges: stringArray(file, 'tokenizer.ggml.merges', false),
    },
  };
}

/** The tokenizer embedded in a GGUF file (byte-level BPE only). */
export function ggufTokenizer(file: GgufFile): TextTokenizer {
  const path = file.path;
  const json = ggufTokenizerJson(file);
  let tok: Tokenizer;
  try {
    // decode() returns the text as tokenized, without HF's clean-up of spaces before punctuation
    tok = new Tokenizer(json as never, { clean_up_tokenization_spaces: false } as never);
  } catch (e) {
    return fail(
      `${path}: cannot build the tokenizer (${(e as Error).message}); pass --tokenizer <hf-model-dir>`,
    );
  }
  const vocabSize = stringArray(file, 'tokenizer.ggml.tokens', true).length;
  const pre = String(ggufMeta(file, 'tokenizer.ggml.pre') ?? 'default');
  return {
    encode: (text) => Int32Array.from(tok.encode(text).ids),
    decode: (ids) => tok.decode(Array.from(ids)),
    vocabSize,
    summary: `GGUF gpt2 (byte-level BPE, pre ${pre}) tokenizer, ${vocabSize} tokens`,
  };
}
