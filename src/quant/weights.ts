/**
 * Putting quantized weights into a model: the encoded (stored) form is the source of truth and the
 * forward pass uses its decoded values, so a saved and reloaded checkpoint computes exactly the same.
 */

import { isBlockFormat, isBlockFormatOrMix } from '../formats/ggml-codes.ts';
import { decode, type Encoded, encodeAsync, fakeQuantRowsAsync } from '../formats/index.ts';
import {
  fallbackType,
  isLlama70B,
  isLlamaMix,
  type LlamaTensorType,
  llamaTensorType,
} from '../formats/llama-mix.ts';
import type { FormatSpec } from '../formats/spec.ts';
import type { ModelConfig } from '../io/config.ts';
import type { InputQuant, LinearName, LlamaModel, QuantizedWeight, SalientColumns } from '../model/llama.ts';
import type { Backend, Tensor } from '../tensor/tensor.ts';
import { dequantizeGptq } from './gptq.ts';
import type { Recipe } from './recipe.ts';

/** Decoded weight values, with full-precision salient columns put back. */
export function dequantizeWeight(q: QuantizedWeight): Float32Array {
  const values = q.gIdx ? dequantizeGptq(q.encoded, q.gIdx) : decode(q.encoded);
  if (q.salient) restoreColumns(values, q.encoded.cols, q.salient);
  return values;
}

function restoreColumns(w: Float32Array, cols: number, salient: SalientColumns): void {
  const n = salient.columns.length;
  const rows = w.length / cols;
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < n; j++) w[r * cols + salient.columns[j]] = salient.values[r * n + j];
}

/** The weight's columns `columns` as a row-major [rows, n] block. */
function takeColumns(w: Float32Array, cols: number, columns: Int32Array): Float32Array {
  const rows = w.length / cols;
  const n = columns.length;
  const out = new Float32Array(rows * n);
  for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) out[r * n + j] = w[r * cols + columns[j]];
  return out;
}

/** Installs a quantized weight: records its stored form and uploads its values for the forward pass. */
export function setQuantizedWeight(
  model: LlamaModel,
  layer: number,
  name: LinearName,
  q: QuantizedWeight,
): void {
  const lin = model.layers[layer].linears[name];
  const [rows, cols] = lin.weight.shape;
  lin.weight.dispose();
  lin.weight = model.backend.upload(dequantizeWeight(q), [rows, cols], 'f32');
  lin.quantized = q;
}

export interface LinearPlace {
  layer: number;
  name: LinearName;
  layers: number;
  /** llama.cpp's 70B typing (formats/llama-mix.ts isLlama70B) */
  llama70B: boolean;
  /** query heads per KV head (llama.cpp's n_gqa) */
  gqa: number;
  /** the recipe weights with an importance matrix (llama-quantize's has_imatrix) */
  imatrix?: boolean;
}

/** Where a linear sits, for the llama.cpp types its file type gives it. */
export function linearPlace(config: ModelConfig, layer: number, name: LinearName): LinearPlace {
  return {
    layer,
    name,
    layers: config.numLayers,
    llama70B: isLlama70B(config),
    gqa: Math.floor(config.numHeads / config.numKvHeads),
  };
}

/**
 * The format linear `name` of `layer` takes under a recipe's weight format: the format itself, except
 * for llama.cpp's types, which pick per tensor as llama-quantize does (formats/llama-mix.ts): a mix
 * (q4_k_m, ...) its type for the linear, and a K-type whose blocks do not fit the rows its fallback.
 * Undefined: the linear stays in full precision (rows fit no llama.cpp block, as llama-quantize
 * leaves them F16).
 */
export function linearWeightSpec(
  weights: FormatSpec,
  linear: LinearPlace,
  cols: number,
): FormatSpec | undefined {
  if (!isBlockFormatOrMix(weights)) return weights;
  const role = { kind: 'linear', ...linear } as const;
  const type = isLlamaMix(weights.type)
    ? llamaTensorType(weights.type, role, cols)
    : fallbackType(weights.type as LlamaTensorType, cols);
  return type === 'f16' ? undefined : { kind: 'ggml', type };
}

/** What picks each linear's format: the recipe's weight format and whether it has an imatrix step. */
export type WeightPlan = Pick<Recipe, 'weights' | 'steps'>;

/**
 * Whether the recipe weights with an importance matrix (llama-quantize's has_imatrix). Here, not in
 * recipe.ts, so that the browser bundle, which takes this file, does not take recipe.ts's Node imports.
 */
export function usesImatrix(recipe: Pick<Recipe, 'steps'>): boolean {
  return recipe.steps.some((s) => s.method === 'imatrix');
}

/** The format of a linear of the model under the recipe (see linearWeightSpec); undefined: full precision. */
export function weightSpecOf(model: LlamaModel, plan: WeightPlan, layer: number, name: LinearName) {
  if (!plan.weights) return undefined;
  const linear = { ...linearPlace(model.config, layer, name), imatrix: usesImatrix(plan) };
  return linearWeightSpec(plan.weights, linear, model.layers[layer].linears[name].weight.shape[1]);
}

/**
 * fakeQuant of a weight for a search (AWQ's, SmoothQuant+'s) on its backend. llama.cpp's Q4_K / Q5_K /
 * Q6_K / IQ4_NL / IQ4_XS and the IQ3 / IQ2 / IQ1 types run on a device's search kernel where it has one
 * (float32 as llama.cpp, not bit for bit: it only ranks candidates; stored blocks come from the exact
 * host quantizer), the other block types on the host.
 */
export async function fakeQuantWeight(b: Backend, w: Tensor, spec: FormatSpec): Promise<Tensor> {
  if (!isBlockFormat(spec)) return b.fakeQuant(w, spec);
  const onDevice = b.searchFakeQuant?.(w, spec);
  if (onDevice) return onDevice;
  const [rows, cols] = w.shape;
  return b.upload(await fakeQuantRowsAsync(await b.read(w), rows, cols, spec), [rows, cols], 'f32');
}

/** fakeQuantRows of host values for a search (AWQ's clip search), on the device's kernel where it has one. */
export async function searchRoundTrip(
  b: Backend,
  values: Float32Array,
  rows: number,
  cols: number,
  spec: FormatSpec,
): Promise<Float32Array> {
  if (isBlockFormat(spec) && b.searchFakeQuant) {
    const t = b.upload(values, [rows, cols], 'f32');
    const y = b.searchFakeQuant(t, spec);
    const out = y && (await b.read(y));
    y?.dispose();
    t.dispose();
    if (out) return out;
  }
  return fakeQuantRowsAsync(values, rows, cols, spec);
}

/** Round-to-nearest: encodes the linear's current weight (host copy) with `spec`. */
export async function roundToNearest(
  model: LlamaModel,
  layer: number,
  name: LinearName,
  spec: FormatSpec,
  salientColumns?: Int32Array,
): Promise<void> {
  const w = model.layers[layer].linears[name].weight;
  const [rows, cols] = w.shape;
  const values = await model.backend.read(w);
  const encoded: Encoded = await encodeAsync(values, rows, cols, spec);
  const salient = salientColumns?.length
    ? { columns: salientColumns, values: takeColumns(values, cols, salientColumns) }
    : undefined;
  setQuantizedWeight(model, layer, name, { encoded, salient });
}

/** Replaces a linear's weight with new full-precision values (scale folding, clipping). */
export function setWeight(model: LlamaModel, layer: number, name: LinearName, values: Float32Array): void {
  const lin = model.layers[layer].linears[name];
  const shape = lin.weight.shape;
  lin.weight.dispose();
  lin.weight = model.backend.upload(values, shape, 'f32');
  lin.quantized = undefined;
}

/** 0/1 column masks for an input quantizer that leaves `columns` unquantized. */
export function keepMasks(b: Backend, cols: number, columns?: Int32Array): InputQuant['keep'] {
  if (!columns?.length) return undefined;
  const keep = new Float32Array(cols);
  for (const c of columns) keep[c] = 1;
  const quant = keep.map((k) => 1 - k);
  return { columns, keepMask: b.upload(keep, [cols], 'f32'), quantMask: b.upload(quant, [cols], 'f32') };
}

/** Host values of a temporary tensor, which is freed after the read. */
export async function readOnce(b: Backend, t: Tensor): Promise<Float32Array> {
  const values = await b.read(t);
  t.dispose();
  return values;
}
