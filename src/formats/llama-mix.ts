/**
 * llama-quantize's choice of ggml type per tensor (src/llama-quant.cpp, llama_tensor_get_type_impl and
 * tensor_type_fallback, read at ggml-org/llama.cpp 007dbbf), for a dense Llama without an importance
 * matrix: shared by the GGUF export and by recipes whose weight format is a llama.cpp file type, so a
 * recipe quantizes each linear in exactly the type its GGUF file will hold.
 * - Q2_K: Q2_K, with Q3_K for o_proj and down_proj, and for v_proj Q4_K when there are 4 or more
 *   query heads per KV head, else Q3_K. (The file type is `q2_k`; as a recipe format `q2_k` is the
 *   tensor type on every linear, and the mix is `q2_k_mix`.)
 * - Q2_K_S: Q2_K, with Q4_K for v_proj when there are 4 or more query heads per KV head and for
 *   down_proj in the first eighth of the layers. llama-quantize refuses it without an importance
 *   matrix (its Q2_K tensors need one), so recipes and the GGUF export do too.
 * - Q3_K_S: Q3_K. Q3_K_M: Q3_K, with Q4_K for o_proj, v_proj Q5_K in layers 0-1 and Q4_K after,
 *   down_proj Q5_K in the first sixteenth of the layers and Q4_K after. Q3_K_L: Q3_K, with Q5_K for
 *   v_proj, o_proj and down_proj.
 * - Q4_K_M / Q5_K_M: Q4_K / Q5_K, with Q6_K for attn_v and ffn_down in the layers use_more_bits picks.
 * - Q4_K_S: Q4_K, with Q5_K for attn_v in layers 0-3 and ffn_down in the first eighth of the layers.
 * - Q5_K_S: Q5_K; Q6_K: Q6_K; Q4_1 and Q5_1: that type.
 * - Q4_0 / Q5_0 (mixes q4_0_mix / q5_0_mix; as recipe formats q4_0 and q5_0 are the tensor types):
 *   that type, but with an importance matrix down_proj in the first eighth of the layers in Q4_1 / Q5_1.
 * - IQ4_NL / IQ4_XS (mixes iq4_nl_mix / iq4_xs_mix): that type, with Q5_K for v_proj when there are 4
 *   or more query heads per KV head, and without an importance matrix for down_proj in the first
 *   eighth of the layers.
 * - output.weight (token_embd when tied): Q6_K under every file type but Q8_0, Q8_0 where its rows are
 *   not a multiple of 256.
 * - A K-type tensor whose rows are not a multiple of 256 falls back: Q2_K and Q3_K to Q4_0, Q4_K to
 *   Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, IQ4_XS to IQ4_NL; rows not a multiple of 32 stay F16.
 * - An 80-layer Llama with grouped KV heads (llama.cpp's LLM_TYPE_70B: Llama 2/3 70B) takes Q5_K for
 *   attn_v where the mix gives Q3_K or Q4_K, its attn_v being 8x smaller than attn_q.
 * - IQ3_S (mix iq3_s_mix): IQ3_S, with Q4_K for v_proj when there are 4 or more query heads per KV head.
 *   IQ3_M: IQ3_S, with Q4_K for v_proj, o_proj and down_proj in the first eighth of the layers.
 *   IQ3_XS: IQ3_S, with IQ3_XXS for q_proj, k_proj, and gate_proj / up_proj outside the first and last
 *   eighth of the layers, Q4_K for v_proj when there are 4 or more query heads per KV head.
 *   IQ3_XXS, IQ3_S and IQ4_XS fall back to IQ4_NL where rows are not a multiple of 256.
 * - IQ3_XXS (mix iq3_xxs_mix): IQ3_XXS, with IQ2_S for q_proj and k_proj, IQ3_S for o_proj, Q4_K for
 *   v_proj with 4+ query heads per KV head (else IQ3_XXS; IQ3_S without an imatrix) and, without an
 *   imatrix, down_proj Q4_K in the first eighth and Q3_K after. IQ2_M: IQ2_S, with IQ3_S for o_proj,
 *   down_proj in the first eighth and v_proj (Q4_K with 4+ query heads per KV head). Both: output Q5_K,
 *   embeddings IQ3_S, no 70B bump for IQ2_M. IQ2_S (the file type, mix iq2_s_mix): IQ2_M's rules over
 *   IQ2_XS. IQ2_XXS / IQ2_XS (mixes iq2_xxs_mix / iq2_xs_mix): that type, with Q2_K for v_proj (Q4_K
 *   with 4+ query heads per KV head) and down_proj in the first eighth of the layers, output Q5_K,
 *   embeddings Q2_K. IQ1_S / IQ1_M (mixes iq1_s_mix / iq1_m_mix): the same with IQ2_XXS for o_proj. No 70B
 *   bump for the IQ2 and IQ1 file types. llama-quantize writes IQ3_XXS, IQ2 and IQ1 tensors only with an importance
 *   matrix, so these file types (and IQ3_XS) need one.
 * Not modelled: the rules for mixture-of-experts and Falcon models.
 */
import type { GgmlBlockType } from './ggml-codes.ts';

export const LLAMA_MIXES = [
  'q2_k_mix',
  'q2_k_s',
  'q3_k_s',
  'q3_k_m',
  'q3_k_l',
  'q4_k_s',
  'q4_k_m',
  'q5_k_s',
  'q5_k_m',
  'q4_0_mix',
  'q5_0_mix',
  'iq4_nl_mix',
  'iq4_xs_mix',
  'iq3_xs',
  'iq3_s_mix',
  'iq3_m',
  'iq3_xxs_mix',
  'iq2_m',
  'iq2_s_mix',
  'iq2_xs_mix',
  'iq2_xxs_mix',
  'iq1_s_mix',
  'iq1_m_mix',
] as const;
/** A llama.cpp file type whose tensors take different types. */
export type LlamaMix = (typeof LLAMA_MIXES)[number];
/**
 * llama-quantize's file types; `q2_k`, `q4_0`, `q5_0`, `iq4_nl`, `iq4_xs`, `iq3_s`, `iq3_xxs`, `iq2_s`,
 * `iq2_xs`, `iq2_xxs`, `iq1_s` and `iq1_m` are the file types (the mixes q2_k_mix ...), not the tensor types.
 */
export type LlamaFileType =
  | 'q4_0'
  | 'q4_1'
  | 'q5_0'
  | 'q5_1'
  | 'q8_0'
  | 'q2_k'
  | 'q6_k'
  | 'iq4_nl'
  | 'iq4_xs'
  | 'iq3_s'
  | 'iq3_xxs'
  | 'iq2_s'
  | 'iq2_xs'
  | 'iq2_xxs'
  | 'iq1_s'
  | 'iq1_m'
  | LlamaMix;
/** A tensor type llama-quantize writes: a block type, Q4_0, Q8_0, or F16 for rows that fit no block. */
export type LlamaTensorType = 'q4_0' | 'q8_0' | GgmlBlockType | 'f16';

export function isLlamaMix(type: string): type is LlamaMix {
  return (LLAMA_MIXES as readonly string[]).includes(type);
}

/**
 * 'layer': a linear of decoder layer `layer` (of `layers`); v_proj / down_proj may take more bits;
 * `llama70B`: the model is what llama.cpp types LLM_TYPE_70B (see isLlama70B); `gqa`: query heads per
 * KV head (llama.cpp's n_gqa, 1 when not given); `imatrix`: quantized with an importance matrix
 * (llama-quantize's has_imatrix).
 */
export type TensorRole =
  | { kind: 'embed' | 'output' }
  | {
      kind: 'linear';
      name: string;
      layer: number;
      layers: number;
      llama70B?: boolean;
      gqa?: number;
      imatrix?: boolean;
    };

/** llama.cpp's LLM_TYPE_70B for a Llama: 80 layers and fewer KV heads than query heads. */
export function isLlama70B(config: { numLayers: number; numHeads: number; numKvHeads: number }): boolean {
  return config.numLayers === 80 && config.numHeads !== config.numKvHeads;
}

/** use_more_bits: the first and last eighth of the layers and every third one between. */
export function useMoreBits(layer: number, layers: number): boolean {
  const eighth = Math.floor(layers / 8);
  return layer < eighth || layer >= Math.floor((7 * layers) / 8) || (layer - eighth) % 3 === 2;
}

type LinearRole = Extract<TensorRole, { kind: 'linear' }>;

/** The type a mix gives a linear where it differs from the mix's base type. */
function sensitiveType(mix: LlamaMix, role: LinearRole): LlamaTensorType | undefined {
  const { name, layer, layers } = role;
  const v = name === 'v_proj';
  const down = name === 'down_proj';
  const o = name === 'o_proj';
  switch (mix) {
    case 'q2_k_mix':
      if (v) return (role.gqa ?? 1) >= 4 ? 'q4_k' : 'q3_k';
      return down || o ? 'q3_k' : undefined;
    case 'q2_k_s':
      if (v) return (role.gqa ?? 1) >= 4 ? 'q4_k' : undefined;
      return down && layer < Math.floor(layers / 8) ? 'q4_k' : undefined;
    case 'q3_k_m':
      if (v) return layer < 2 ? 'q5_k' : 'q4_k';
      if (down) return layer < Math.floor(layers / 16) ? 'q5_k' : 'q4_k';
      return o ? 'q4_k' : undefined;
    case 'q3_k_l':
      return v || down || o ? 'q5_k' : undefined;
    case 'q4_k_m':
    case 'q5_k_m':
      return (v || down) && useMoreBits(layer, layers) ? 'q6_k' : undefined;
    case 'q4_k_s':
      return (v && layer < 4) || (down && layer < Math.floor(layers / 8)) ? 'q5_k' : undefined;
    case 'q4_0_mix':
    case 'q5_0_mix':
      if (!(down && role.imatrix && layer < Math.floor(layers / 8))) return undefined;
      return mix === 'q4_0_mix' ? 'q4_1' : 'q5_1';
    case 'iq4_nl_mix':
    case 'iq4_xs_mix':
      if (v) return (role.gqa ?? 1) >= 4 ? 'q5_k' : undefined;
      return down && !role.imatrix && layer < Math.floor(layers / 8) ? 'q5_k' : undefined;
    case 'iq3_xs':
      if (v) return (role.gqa ?? 1) >= 4 ? 'q4_k' : undefined;
      if (name === 'q_proj' || name === 'k_proj') return 'iq3_xxs';
      if (name !== 'gate_proj' && name !== 'up_proj') return undefined;
      return layer >= Math.floor(layers / 8) && layer < Math.floor((7 * layers) / 8) ? 'iq3_xxs' : undefined;
    case 'iq3_s_mix':
      return v && (role.gqa ?? 1) >= 4 ? 'q4_k' : undefined;
    case 'iq3_m':
      return v || o || (down && layer < Math.floor(layers / 8)) ? 'q4_k' : undefined;
    case 'iq3_xxs_mix':
      if (v) return (role.gqa ?? 1) >= 4 ? 'q4_k' : role.imatrix ? undefined : 'iq3_s';
      if (name === 'q_proj' || name === 'k_proj') return 'iq2_s';
      if (down && !role.imatrix) return layer < Math.floor(layers / 8) ? 'q4_k' : 'q3_k';
      return o ? 'iq3_s' : undefined;
    case 'iq2_m':
    case 'iq2_s_mix':
      if (v) return (role.gqa ?? 1) >= 4 ? 'q4_k' : 'iq3_s';
      return o || (down && layer < Math.floor(layers / 8)) ? 'iq3_s' : undefined;
    case 'iq2_xs_mix':
    case 'iq2_xxs_mix':
    case 'iq1_s_mix':
    case 'iq1_m_mix':
      if (v) return (role.gqa ?? 1) >= 4 ? 'q4_k' : 'q2_k';
      if (o && (mix === 'iq1_s_mix' || mix === 'iq1_m_mix')) return 'iq2_xxs';
      return down && layer < Math.floor(layers / 8) ? 'q2_k' : undefined;
    default:
      return undefined;
  }
}

const MIX_BASE: Record<LlamaMix, LlamaTensorType> = {
  q2_k_mix: 'q2_k',
  q2_k_s: 'q2_k',
  q3_k_s: 'q3_k',
  q3_k_m: 'q3_k',
  q3_k_l: 'q3_k',
  q4_k_s: 'q4_k',
  q4_k_m: 'q4_k',
  q5_k_s: 'q5_k',
  q5_k_m: 'q5_k',
  q4_0_mix: 'q4_0',
  q5_0_mix: 'q5_0',
  iq4_nl_mix: 'iq4_nl',
  iq4_xs_mix: 'iq4_xs',
  iq3_xs: 'iq3_s',
  iq3_s_mix: 'iq3_s',
  iq3_m: 'iq3_s',
  iq3_xxs_mix: 'iq3_xxs',
  iq2_m: 'iq2_s',
  iq2_s_mix: 'iq2_xs',
  iq2_xs_mix: 'iq2_xs',
  iq2_xxs_mix: 'iq2_xxs',
  iq1_s_mix: 'iq1_s',
  iq1_m_mix: 'iq1_m',
};

/** The tensor types llama-quantize's tensor_requires_imatrix refuses to write without an importance matrix. */
const IMATRIX_TENSOR_TYPES: readonly string[] = ['iq3_xxs', 'iq2_xxs', 'iq2_xs', 'iq2_s', 'iq1_s', 'iq1_m'];

const LINEAR_NAMES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

/**
 * Whether llama-quantize writes a weight format's linears only with an importance matrix: a tensor type
 * of IMATRIX_TENSOR_TYPES, a mix that gives any linear one (in the first or a later layer, with an
 * imatrix), or Q2_K_S (its Q2_K tensors: tensor_requires_imatrix's one file-type rule).
 */
export function needsImatrix(type: string): boolean {
  if (type === 'q2_k_s') return true;
  if (!isLlamaMix(type)) return IMATRIX_TENSOR_TYPES.includes(type);
  return LINEAR_NAMES.some((name) =>
    [0, 7].some((layer) => {
      const role = { kind: 'linear', name, layer, layers: 8, imatrix: true } as const;
      return IMATRIX_TENSOR_TYPES.includes(sensitiveType(type, role) ?? MIX_BASE[type]);
    }),
  );
}

/** The tensor type a mix gives most linears; any other type is itself. */
export function baseTensorType(type: string): string {
  return isLlamaMix(type) ? MIX_BASE[type] : type;
}

/** File types named as their tensor type, and the mix that is the file type. */
const FILE_TYPE_MIX: Partial<Record<LlamaFileType, LlamaMix>> = {
  q2_k: 'q2_k_mix',
  q4_0: 'q4_0_mix',
  q5_0: 'q5_0_mix',
  iq4_nl: 'iq4_nl_mix',
  iq4_xs: 'iq4_xs_mix',
  iq3_s: 'iq3_s_mix',
  iq3_xxs: 'iq3_xxs_mix',
  iq2_s: 'iq2_s_mix',
  iq2_xs: 'iq2_xs_mix',
  iq2_xxs: 'iq2_xxs_mix',
  iq1_s: 'iq1_s_mix',
  iq1_m: 'iq1_m_mix',
};

/** The file types of llama-quantize's low-bit IQ branch: Q5_K output, IQ3_S or Q2_K embeddings. */
const LOW_BIT_EMBED: Partial<Record<LlamaMix, LlamaTensorType>> = {
  iq3_xxs_mix: 'iq3_s',
  iq2_m: 'iq3_s',
  iq2_s_mix: 'iq3_s',
  iq2_xs_mix: 'q2_k',
  iq2_xxs_mix: 'q2_k',
  iq1_s_mix: 'q2_k',
  iq1_m_mix: 'q2_k',
};

/** The IQ2 and IQ1 file types, whose v_proj rule comes before (and so skips) the 70B bump. */
const NO_70B_BUMP: readonly LlamaMix[] = [
  'iq2_m',
  'iq2_s_mix',
  'iq2_xs_mix',
  'iq2_xxs_mix',
  'iq1_s_mix',
  'iq1_m_mix',
];

function mixType(fileType: LlamaFileType, role: TensorRole, cols: number): LlamaTensorType {
  if (fileType === 'q8_0') return 'q8_0';
  const mix = FILE_TYPE_MIX[fileType] ?? fileType;
  const lowBitEmbed = LOW_BIT_EMBED[mix as LlamaMix];
  if (role.kind === 'output') return cols % 256 !== 0 ? 'q8_0' : lowBitEmbed ? 'q5_k' : 'q6_k';
  if (!isLlamaMix(mix)) return mix;
  if (role.kind !== 'linear') return lowBitEmbed ?? MIX_BASE[mix];
  const type = sensitiveType(mix, role) ?? MIX_BASE[mix];
  const bumped =
    role.llama70B &&
    !NO_70B_BUMP.includes(mix) &&
    role.name === 'v_proj' &&
    (type === 'q3_k' || type === 'q4_k');
  return bumped ? 'q5_k' : type;
}

const FALLBACK: Partial<Record<LlamaTensorType, LlamaTensorType>> = {
  q2_k: 'q4_0',
  q3_k: 'q4_0',
  q4_k: 'q5_0',
  q5_k: 'q5_1',
  q6_k: 'q8_0',
  iq4_xs: 'iq4_nl',
  iq3_xxs: 'iq4_nl',
  iq3_s: 'iq4_nl',
  iq2_xxs: 'iq4_nl',
  iq2_xs: 'iq4_nl',
  iq2_s: 'iq4_nl',
  iq1_s: 'iq4_nl',
  iq1_m: 'iq4_nl',
};

/** tensor_type_fallback, then F16 for rows that fit no 32-block. */
export function fallbackType(type: LlamaTensorType, cols: number): LlamaTensorType {
  if (cols % 32 !== 0) return 'f16';
  if (cols % 256 === 0) return type;
  return FALLBACK[type] ?? type;
}

/** The type llama-quantize writes a tensor of this role with rows of `cols` values in. */
export function llamaTensorType(fileType: LlamaFileType, role: TensorRole, cols: number): LlamaTensorType {
  return fallbackType(mixType(fileType, role, cols), cols);
}

/** Whether the type was a fallback from the one the mix picks (rows that do not fit its blocks). */
export function isFallbackType(fileType: LlamaFileType, role: TensorRole, cols: number): boolean {
  return llamaTensorType(fileType, role, cols) !== mixType(fileType, role, cols);
}
