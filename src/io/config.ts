/**
 * Hugging Face config.json -> ModelConfig for the Llama family (Llama 2/3, Mistral, Qwen2), as the
 * configs are found in the wild: transformers 4.x (`rope_theta` + `rope_scaling`, old `type` key) and
 * 5.x (`rope_parameters`). Defaults are those of the transformers config classes; biases follow what
 * the transformers modules actually build (Mistral has none, Qwen2 always has q/k/v biases).
 */
import { fail } from '../errors.ts';

export type ModelType = 'llama' | 'mistral' | 'qwen2';
export const SUPPORTED_MODEL_TYPES: readonly ModelType[] = ['llama', 'mistral', 'qwen2'];

export type RopeConfig =
  | { type: 'default'; theta: number }
  /** positions interpolated: every inverse frequency divided by factor */
  | { type: 'linear'; theta: number; factor: number }
  /**
   * dynamic NTK: for sequences up to maxPositionEmbeddings the frequencies are the default ones; longer
   * sequences rescale the base (ropeTable(cfg, seqLen) does it for a given length).
   */
  | { type: 'dynamic'; theta: number; factor: number }
  /** Llama 3.1 smooth frequency-band scaling */
  | {
      type: 'llama3';
      theta: number;
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  /** YaRN (NTK-by-parts + attention temperature); attentionFactor already resolved */
  | {
      type: 'yarn';
      theta: number;
      factor: number;
      originalMaxPositionEmbeddings: number;
      betaFast: number;
      betaSlow: number;
      attentionFactor: number;
      /** floor/ceil the correction range (transformers' `truncate`, default true) */
      truncate: boolean;
    };

export type RopeType = RopeConfig['type'];
export const SUPPORTED_ROPE_TYPES: readonly RopeType[] = ['default', 'linear', 'dynamic', 'llama3', 'yarn'];

export type ModelDType = 'bfloat16' | 'float16' | 'float32';

export interface ModelConfig {
  modelType: ModelType;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  rope: RopeConfig;
  tieWordEmbeddings: boolean;
  /** q_proj, k_proj, v_proj have biases */
  qkvBias: boolean;
  /** o_proj has a bias */
  oBias: boolean;
  /** gate/up/down_proj have biases */
  mlpBias: boolean;
  /** dtype the checkpoint was saved in (torch_dtype / dtype); float32 when absent */
  dtype: ModelDType;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  maxPositionEmbeddings: number;
  /** recorded only (Mistral sliding_window; Qwen2 when use_sliding_window); null when off */
  slidingWindow: number | null;
  /** the parsed config.json, for fields not normalized here */
  raw: Record<string, unknown>;
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** Field readers bound to one file; `scope` prefixes nested keys in messages (e.g. "rope_scaling."). */
class Fields {
  constructor(
    readonly file: string,
    readonly obj: Record<string, unknown>,
    readonly scope = '',
    readonly why = '',
  ) {}

  private name(key: string): string {
    return `${this.scope}${key}`;
  }

  has(key: string): boolean {
    return this.obj[key] !== undefined && this.obj[key] !== null;
  }

  /** A positive integer; required unless a default is given. */
  int(key: string, dflt?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (dflt !== undefined) return dflt;
      fail(`${this.file}: ${this.name(key)} is missing (expected a positive integer${this.why})`);
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      fail(`${this.file}: ${this.name(key)} must be a positive integer, found ${show(v)}`);
    }
    return v;
  }

  /** A finite positive number; required unless a default is given. */
  pos(key: string, dflt?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (dflt !== undefined) return dflt;
      fail(`${this.file}: ${this.name(key)} is missing (expected a positive number${this.why})`);
    }
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      fail(`${this.file}: ${this.name(key)} must be a positive number, found ${show(v)}`);
    }
    return v;
  }

  /** A finite number (any sign) or undefined. */
  optNum(key: string): number | undefined {
    const v = this.obj[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      fail(`${this.file}: ${this.name(key)} must be a number, found ${show(v)}`);
    }
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.obj[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'boolean')
      fail(`${this.file}: ${this.name(key)} must be true or false, found ${show(v)}`);
    return v;
  }

  /** Token id: absent -> dflt, explicit null -> null. */
  tokenId(key: string, dflt: number | null): number | null {
    if (!(key in this.obj)) return dflt;
    const v = this.obj[key];
    if (v === null) return null;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      fail(`${this.file}: ${this.name(key)} must be a non-negative integer or null, found ${show(v)}`);
    }
    return v;
  }

  tokenIds(key: string, dflt: number | null): number | number[] | null {
    const v = this.obj[key];
    if (Array.isArray(v)) {
      if (!v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) {
        fail(`${this.file}: ${this.name(key)} must be a token id or a list of token ids, found ${show(v)}`);
      }
      return [...(v as number[])];
    }
    return this.tokenId(key, dflt);
  }
}

interface Defaults {
  rmsNormEps: number;
  maxPositionEmbeddings: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
}

// transformers' LlamaConfig / MistralConfig / Qwen2Config defaults
const DEFAULTS: Record<ModelType, Defaults> = {
  llama: { rmsNormEps: 1e-6, maxPositionEmbeddings: 2048, bosTokenId: 1, eosTokenId: 2 },
  mistral: { rmsNormEps: 1e-6, maxPositionEmbeddings: 4096 * 32, bosTokenId: 1, eosTokenId: 2 },
  qwen2: { rmsNormEps: 1e-6, maxPositionEmbeddings: 32768, bosTokenId: null, eosTokenId: null },
};

function parseDtype(file: string, raw: Record<string, unknown>): ModelDType {
  const key = raw.dtype !== undefined && raw.dtype !== null ? 'dtype' : 'torch_dtype';
  const v = raw[key];
  if (v === undefined || v === null) return 'float32';
  const s = typeof v === 'string' ? v.replace(/^torch\./, '') : v;
  const alias: Record<string, ModelDType> = {
    bfloat16: 'bfloat16',
    bf16: 'bfloat16',
    float16: 'float16',
    half: 'float16',
    fp16: 'float16',
    float32: 'float32',
    float: 'float32',
    fp32: 'float32',
  };
  if (typeof s !== 'string' || !Object.hasOwn(alias, s)) {
    fail(`${file}: ${key} ${show(v)} is not supported (expected bfloat16, float16 or float32)`);
  }
  return alias[s];
}

/**
 * Picks the RoPE parameter object: `rope_parameters` (5.x; the plain form, or a per-attention-type
 * form whose entries all agree) or `rope_scaling` (4.x, may be null). Returns the object, the name to
 * use in messages, and the theta found at the top level for the 4.x form.
 */
function ropeSource(
  file: string,
  raw: Record<string, unknown>,
): { params: Record<string, unknown>; scope: string } {
  const rp = raw.rope_parameters;
  if (rp !== undefined && rp !== null) {
    if (!isObj(rp)) fail(`${file}: rope_parameters must be an object, found ${show(rp)}`);
    const values = Object.values(rp);
    const nested = !('rope_type' in rp) && !('rope_theta' in rp) && values.length > 0 && values.every(isObj);
    if (!nested) return { params: rp, scope: 'rope_parameters.' };
    const keys = Object.keys(rp);
    const first = JSON.stringify(values[0]);
    if (values.some((v) => JSON.stringify(v) !== first)) {
      fail(
        `${file}: rope_parameters differ per attention type (${keys.join(', ')}); only one RoPE for all layers is supported`,
      );
    }
    return { params: values[0] as Record<string, unknown>, scope: `rope_parameters.${keys[0]}.` };
  }
  const rs = raw.rope_scaling;
  if (rs === undefined || rs === null) return { params: {}, scope: 'rope_scaling.' };
  if (!isObj(rs)) fail(`${file}: rope_scaling must be an object or null, found ${show(rs)}`);
  return { params: rs, scope: 'rope_scaling.' };
}

function parseRope(file: string, raw: Record<string, unknown>, maxPos: number): RopeConfig {
  const { params, scope } = ropeSource(file, raw);
  const top = new Fields(file, raw);
  const p = new Fields(file, params, scope);
  const theta = p.has('rope_theta') ? p.pos('rope_theta') : top.pos('rope_theta', 10000);

  const prf = p.optNum('partial_rotary_factor') ?? top.optNum('partial_rotary_factor') ?? 1;
  if (prf !== 1)
    fail(`${file}: partial_rotary_factor ${prf} is not supported (only 1: RoPE on the whole head)`);

  const typeKey = params.rope_type !== undefined && params.rope_type !== null ? 'rope_type' : 'type';
  const typeVal = params[typeKey] ?? 'default';
  if (typeof typeVal !== 'string')
    fail(`${file}: ${scope}${typeKey} must be a string, found ${show(typeVal)}`);
  const type = typeVal;
  const need = new Fields(file, params, scope, ` for rope type "${type}"`);
  const origMax = () =>
    need.has('original_max_position_embeddings')
      ? need.int('original_max_position_embeddings')
      : top.int('original_max_position_embeddings', maxPos);

  switch (type) {
    case 'default':
      return { type: 'default', theta };
    case 'linear':
      return { type: 'linear', theta, factor: need.pos('factor') };
    case 'dynamic':
      return { type: 'dynamic', theta, factor: need.pos('factor') };
    case 'llama3': {
      const lowFreqFactor = need.pos('low_freq_factor');
      const highFreqFactor = need.pos('high_freq_factor');
      if (!(highFreqFactor > lowFreqFactor)) {
        fail(
          `${file}: ${scope}high_freq_factor (${highFreqFactor}) must be greater than low_freq_factor (${lowFreqFactor})`,
        );
      }
      return {
        type: 'llama3',
        theta,
        factor: need.pos('factor'),
        lowFreqFactor,
        highFreqFactor,
        originalMaxPositionEmbeddings: need.int('original_max_position_embeddings'),
      };
    }
    case 'yarn': {
      const originalMaxPositionEmbeddings = origMax();
      // transformers 5.x: factor from the config; only when absent, max_position / original.
      const factor = need.has('factor') ? need.pos('factor') : maxPos / originalMaxPositionEmbeddings;
      const mscale = need.optNum('mscale');
      const mscaleAllDim = need.optNum('mscale_all_dim');
      const getMscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
      let attentionFactor = need.optNum('attention_factor');
      if (attentionFactor === undefined) {
        attentionFactor =
          mscale && mscaleAllDim
            ? getMscale(factor, mscale) / getMscale(factor, mscaleAllDim)
            : getMscale(factor);
      }
      // `beta_fast or 32`: 0 / null mean the default, as in transformers
      const betaFast = need.optNum('beta_fast') || 32;
      const betaSlow = need.optNum('beta_slow') || 1;
      return {
        type: 'yarn',
        theta,
        factor,
        originalMaxPositionEmbeddings,
        betaFast,
        betaSlow,
        attentionFactor,
        truncate: need.bool('truncate', true),
      };
    }
    default:
      fail(
        `${file}: ${scope}${typeKey} "${type}" is not supported (supported: ${SUPPORTED_ROPE_TYPES.join(', ')})`,
      );
  }
}

/** Parses an already-loaded config object; `file` names it in error messages. */
export function parseModelConfig(raw: unknown, file = 'config.json'): ModelConfig {
  if (!isObj(raw))
    fail(`${file}: expected a JSON object, found ${Array.isArray(raw) ? 'an array' : show(raw)}`);
  const mt = raw.model_type;
  if (mt === undefined || mt === null) {
    fail(`${file}: model_type is missing (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  }
  if (typeof mt !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(mt)) {
    fail(`${file}: model_type ${show(mt)} is not supported (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  }
  const modelType = mt as ModelType;
  const d = DEFAULTS[modelType];
  const f = new Fields(file, raw);

  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu')
    fail(`${file}: hidden_act ${show(act)} is not supported (only silu, as in ${modelType})`);

  const hiddenSize = f.int('hidden_size');
  const intermediateSize = f.int('intermediate_size');
  const numLayers = f.int('num_hidden_layers');
  const numHeads = f.int('num_attention_heads');
  const numKvHeads = f.int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) {
    fail(
      `${file}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`,
    );
  }
  let headDim: number;
  if (f.has('head_dim')) {
    headDim = f.int('head_dim');
  } else {
    if (hiddenSize % numHeads !== 0) {
      fail(
        `${file}: hidden_size (${hiddenSize}) is not divisible by num_attention_heads (${numHeads}) and head_dim is not set`,
      );
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) fail(`${file}: head dimension ${headDim} must be even for RoPE`);
  const vocabSize = f.int('vocab_size');
  const rmsNormEps = f.pos('rms_norm_eps', d.rmsNormEps);
  const maxPositionEmbeddings = f.int('max_position_embeddings', d.maxPositionEmbeddings);

  let qkvBias: boolean;
  let oBias: boolean;
  let mlpBias: boolean;
  let slidingWindow: number | null;
  if (modelType === 'llama') {
    qkvBias = oBias = f.bool('attention_bias', false);
    mlpBias = f.bool('mlp_bias', false);
    slidingWindow = null;
  } else if (modelType === 'mistral') {
    // transformers' MistralAttention / MistralMLP build every projection with bias=False
    qkvBias = oBias = mlpBias = false;
    slidingWindow =
      'sliding_window' in raw ? (raw.sliding_window === null ? null : f.int('sliding_window')) : 4096;
  } else {
    // Qwen2Attention: q/k/v with bias, o_proj without; Qwen2MLP without
    qkvBias = true;
    oBias = false;
    mlpBias = false;
    slidingWindow =
      f.bool('use_sliding_window', false) && f.has('sliding_window') ? f.int('sliding_window') : null;
  }

  return {
    modelType,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps,
    rope: parseRope(file, raw, maxPositionEmbeddings),
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    qkvBias,
    oBias,
    mlpBias,
    dtype: parseDtype(file, raw),
    bosTokenId: f.tokenId('bos_token_id', d.bosTokenId),
    eosTokenId: f.tokenIds('eos_token_id', d.eosTokenId),
    maxPositionEmbeddings,
    slidingWindow,
    raw,
  };
}
