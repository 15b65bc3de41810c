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
import { type Backend, packedTensors, type Tensor } from '../src/tensor/tensor.ts';

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

/** n pseudo-random 32-bit words (an LCG from `seed`): codes for synthetic weights. */
export function randomWords(n: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s | 0;
  }
  return out;
}

/**
 * Frees a linear's codes before new ones replace them (a dropped WebGPU buffer is destroyed when the
 * garbage collector takes it, which need not wait for the commands using it to be submitted).
 */
export function dropCodes(lin: Linear): void {
  for (const t of [...packedTensors(lin.packed), lin.int8?.codes, lin.int8?.scales]) t?.dispose();
  lin.packed = undefined;
  lin.int8 = undefined;
}

/** W8A8: INT8 per-channel weights (random codes), INT8 per-token activations. */
export function useInt8(b: Backend, lin: Linear): void {
  dropCodes(lin);
  const [rows, cols] = lin.weight.shape;
  const codes = new Int8Array(randomWords((rows * cols) / 4, rows * 3 + cols).buffer);
  lin.int8 = {
    codes: b.upload(codes, [rows, cols], 'i8'),
    scales: b.upload(new Float32Array(rows).fill(0.0005), [rows], 'f32'),
  };
  lin.inputQuant = { spec: { kind: 'int', bits: 8, symmetric: true, granularity: 'row' } };
}
