/**
 * llama-quantize's choice of ggml type per tensor (src/llama-quant.cpp, llama_tensor_get_type and
 * tensor_type_fallback, read at ggml-org/llama.cpp 007dbbf), for a dense Llama without an importance
 * matrix: shared by the GGUF export and by recipes whose weight format is a llama.cpp file type, so a
 * recipe quantizes each linear in exactly the type its GGUF file will hold.
 * - Q4_K_M: Q4_K, with Q6_K for attn_v and ffn_down in the layers use_more_bits picks.
 * - output.weight (token_embd when tied): Q6_K under the 4-bit file types, Q8_0 where its rows are
 *   not a multiple of 256.
 * - A K-type tensor whose rows are not a multiple of 256 falls back: Q4_K to Q5_0, Q6_K to Q8_0; rows
 *   not a multiple of 32 stay F16.
 */
export type LlamaFileType = 'q4_0' | 'q8_0' | 'q4_k_m';
export type LlamaTensorType = 'q4_0' | 'q8_0' | 'q5_0' | 'q4_k' | 'q6_k' | 'f16';

/** 'layer': a linear of decoder layer `layer` (of `layers`); v_proj / down_proj may take more bits. */
export type TensorRole =
  | { kind: 'embed' | 'output' }
  | { kind: 'linear'; name: string; layer: number; layers: number };

/** use_more_bits: the first and last eighth of the layers and every third one between. */
export function useMoreBits(layer: number, layers: number): boolean {
  const eighth = Math.floor(layers / 8);
  return layer < eighth || layer >= Math.floor((7 * layers) / 8) || (layer - eighth) % 3 === 2;
}

function mixType(fileType: LlamaFileType, role: TensorRole, cols: number): LlamaTensorType {
  if (fileType === 'q8_0') return 'q8_0';
  if (role.kind === 'output') return cols % 256 === 0 ? 'q6_k' : 'q8_0';
  if (fileType === 'q4_0') return 'q4_0';
  const moreBits =
    role.kind === 'linear' &&
    (role.name === 'v_proj' || role.name === 'down_proj') &&
    useMoreBits(role.layer, role.layers);
  return moreBits ? 'q6_k' : 'q4_k';
}

/** tensor_type_fallback, then F16 for rows that fit no 32-block. */
export function fallbackType(type: LlamaTensorType, cols: number): LlamaTensorType {
  if (cols % 32 !== 0) return 'f16';
  if (cols % 256 === 0) return type;
  return type === 'q4_k' ? 'q5_0' : type === 'q6_k' ? 'q8_0' : type;
}

/** The type llama-quantize writes a tensor of this role with rows of `cols` values in. */
export function llamaTensorType(fileType: LlamaFileType, role: TensorRole, cols: number): LlamaTensorType {
  return fallbackType(mixType(fileType, role, cols), cols);
}

/** Whether the type was a fallback from the one the mix picks (rows that do not fit its blocks). */
export function isFallbackType(fileType: LlamaFileType, role: TensorRole, cols: number): boolean {
  return llamaTensorType(fileType, role, cols) !== mixType(fileType, role, cols);
}
