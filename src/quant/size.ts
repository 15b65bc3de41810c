/**
 * Bits per weight of the quantized linears as their format stores them: codes; INT / FP8 scales in fp16
 * (as the exports write them) and zero points; MX E8M0 exponents; NVFP4 E4M3 scales; llama.cpp blocks
 * as their GGUF bytes (Q4_0 / Q8_0: an fp16 scale a block; K-quants, IQ4 and IQ3 whole blocks, whose
 * codes the checkpoint keeps one per value); salient columns and g_idx. The f32 scales an llmq
 * checkpoint also keeps for its runtime are not counted where the format's own bytes determine them.
 */
import { ggmlBlockLayout, isBlockFormat } from '../formats/ggml-codes.ts';
import type { Encoded } from '../formats/index.ts';
import type { LlamaModel } from '../model/llama.ts';

export function linearBitsPerWeight(model: LlamaModel): number {
  let bits = 0;
  let weights = 0;
  for (const L of model.layers)
    for (const lin of Object.values(L.linears)) {
      const q = lin.quantized;
      if (!q) continue;
      weights += q.encoded.rows * q.encoded.cols;
      bits += encodedBits(q.encoded);
      bits += (q.salient?.values.length ?? 0) * 32 + (q.gIdx?.length ?? 0) * 32;
    }
  return weights ? bits / weights : 16;
}

function encodedBits(e: Encoded): number {
  if (isBlockFormat(e.spec)) {
    const { values, bytes } = ggmlBlockLayout(e.spec.type);
    return (e.codes.length / values) * bytes * 8;
  }
  const codes = e.codes.length * e.bits;
  if (e.scaleCodes) return codes + e.scaleCodes.length * 8;
  if (e.exponents) return codes + e.exponents.length * 8;
  return codes + e.scales.length * 16 + (e.zeros?.length ?? 0) * e.bits;
}
