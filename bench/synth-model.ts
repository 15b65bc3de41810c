/** A Llama-3-8B-shaped model for GPU benchmarks, small enough to upload in seconds. */
import { SYNTH_ARCHS, synthTensors } from '../src/cli/synth.ts';
import { parseModelConfig } from '../src/io/config.ts';
import {
  type DecoderLayer,
  LINEARS,
  type Linear,
  type LinearName,
  LlamaModel,
  linearTensorName,
} from '../src/model/llama.ts';
import type { Backend, Tensor } from '../src/tensor/tensor.ts';

/**
 * Llama-3-8B with random bf16 weights; every layer uses the same weight tensors (the same work and
 * weight traffic per layer as 32 distinct ones; 2 GB uploaded instead of 16 GB).
 */
export function synthLlama3(b: Backend, layers?: number): LlamaModel {
  const raw = SYNTH_ARCHS['llama-3-8b'];
  const config = parseModelConfig(layers ? { ...raw, num_hidden_layers: layers } : raw);
  const byName = new Map<string, Tensor>();
  for (const { layer, tensor } of synthTensors({ ...raw, num_hidden_layers: 1 }, 1))
    if (layer <= 0) byName.set(tensor.name, b.upload(tensor.make(), tensor.shape, 'bf16'));
  const get = (n: string) => byName.get(n)!;
  const linears = {} as Record<LinearName, Linear>;
  for (const n of LINEARS) linears[n] = { weight: get(linearTensorName(0, n)) };
  const layer: DecoderLayer = {
    inputNorm: get('model.layers.0.input_layernorm.weight'),
    postNorm: get('model.layers.0.post_attention_layernorm.weight'),
    linears,
  };
  return new LlamaModel(
    config,
    b,
    get('model.embed_tokens.weight'),
    Array.from({ length: config.numLayers }, () => layer),
    get('model.norm.weight'),
    get('lm_head.weight'),
    'synthetic',
  );
}
