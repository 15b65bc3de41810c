/**
 * Reading an llmq quantized checkpoint's tensors (layout: checkpoint.ts) from any Checkpoint, on disk
 * or in memory: pure, so the browser entry loads quantized models too.
 */
import { fail } from '../errors.ts';
import { codeBits, type Encoded, parseFormat, unpackCodes } from '../formats/index.ts';
import type { FormatSpec } from '../formats/spec.ts';
import type { ModelConfig } from '../io/config.ts';
import type { Checkpoint } from '../io/safetensors-format.ts';
import { type InputQuant, kvCacheSpec, type Linear, LlamaModel, linearTensorName } from '../model/llama.ts';
import { type CodesOnly, codesOnlyWeight } from '../model/packed.ts';
import type { Backend } from '../tensor/tensor.ts';
import type { Recipe } from './recipe.ts';
import {
  dequantizeWeight,
  keepMasks,
  type LinearPlace,
  linearPlace,
  linearWeightSpec,
  usesImatrix,
} from './weights.ts';

export interface Manifest {
  tool: string;
  tool_version: string;
  created: string;
  source_model: string;
  source_sha256: string;
  calibration?: Record<string, unknown>;
  timings: Record<string, number>;
  notes?: unknown;
}

export interface QuantizationConfig {
  quant_method: 'llmq';
  recipe: Recipe;
  weight_format: string | null;
  activation_format: string | null;
  activation_static: boolean;
  manifest: Manifest;
}

/**
 * config.json's llmq quantization_config, undefined for a full-precision model; `label` names the
 * config in errors.
 */
export function quantizationConfigOf(config: ModelConfig, label: string): QuantizationConfig | undefined {
  const q = config.raw.quantization_config as Record<string, unknown> | undefined;
  if (!q) return undefined;
  if (q.quant_method !== 'llmq')
    fail(
      `${label}: quantization_config.quant_method "${String(q.quant_method)}": quantized by another tool, not an llmq checkpoint (llmq eval measures awq, gptq and compressed-tensors checkpoints; this needs a full-precision or llmq one)`,
    );
  return q as unknown as QuantizationConfig;
}

/** An llmq quantized checkpoint as a model: decoded weights, recorded activation quantization. */
export function quantizedFromCheckpoint(
  dir: string,
  config: ModelConfig,
  ckpt: Checkpoint,
  backend: Backend,
  q: QuantizationConfig,
  codesOnly?: CodesOnly,
): LlamaModel {
  const model = LlamaModel.fromCheckpoint(dir, config, ckpt, backend, (layer, name, shape) =>
    readStoredLinear(ckpt, backend, q, linearPlace(config, layer, name), shape, codesOnly),
  );
  model.quantization = { recipe: q.recipe.name };
  if (q.recipe.kvCache) model.kvQuant = kvCacheSpec(q.recipe.kvCache, config.headDim);
  return model;
}

export function readEncoded(
  ckpt: Checkpoint,
  prefix: string,
  spec: FormatSpec,
  rows: number,
  cols: number,
): Encoded {
  const get = (suffix: string) =>
    ckpt.has(`${prefix}.${suffix}`) ? ckpt.read(`${prefix}.${suffix}`).data : undefined;
  const width = codeBits(spec);
  const qweight = get('qweight') as Uint8Array;
  const scales = get('scales') as Float32Array | undefined;
  if (!scales) return fail(`${ckpt.dir}: tensor "${prefix}.scales" is missing`);
  const zeros = get('qzeros') as Uint8Array | undefined;
  const global = get('global_scale') as Float32Array | undefined;
  return {
    spec,
    rows,
    cols,
    bits: width,
    codes: unpackCodes(qweight, width, rows * cols),
    block: (rows * cols) / scales.length,
    scales,
    ...(zeros ? { zeros: unpackCodes(zeros, width, scales.length) } : {}),
    ...(get('exponents') ? { exponents: get('exponents') as Int16Array } : {}),
    ...(get('scale_codes') ? { scaleCodes: get('scale_codes') as Uint8Array } : {}),
    ...(global ? { globalScale: global[0] } : {}),
  };
}

/**
 * What a checkpoint stores for one linear beyond a plain weight: the encoded weight (decoded to f32 for
 * the forward pass), salient columns, g_idx, and the activation quantizer with its static scale.
 */
export function readStoredLinear(
  ckpt: Checkpoint,
  backend: Backend,
  q: Pick<QuantizationConfig, 'weight_format' | 'activation_format' | 'recipe'>,
  place: LinearPlace,
  [rows, cols]: readonly number[],
  codesOnly?: CodesOnly,
): Partial<Linear> {
  const format = q.weight_format ? parseFormat(q.weight_format) : undefined;
  const { layer, name } = place;
  const weightSpec = format && linearWeightSpec(format, { ...place, imatrix: usesImatrix(q.recipe) }, cols);
  const actSpec = q.activation_format ? parseFormat(q.activation_format) : undefined;
  const prefix = linearTensorName(layer, name).replace(/\.weight$/, '');
  const stored: Partial<Linear> = {};
  if (weightSpec && ckpt.has(`${prefix}.qweight`)) {
    const encoded = readEncoded(ckpt, prefix, weightSpec, rows, cols);
    const salient = ckpt.has(`${prefix}.salient_columns`)
      ? {
          columns: ckpt.read(`${prefix}.salient_columns`).data as Int32Array,
          values: ckpt.read(`${prefix}.salient_values`).data as Float32Array,
        }
      : undefined;
    const gIdx = ckpt.has(`${prefix}.g_idx`) ? (ckpt.read(`${prefix}.g_idx`).data as Int32Array) : undefined;
    stored.quantized = { encoded, salient, gIdx };
  }
  if (actSpec && q.recipe.targets.includes(name)) {
    const scale = ckpt.has(`${prefix}.input_scale`)
      ? (ckpt.read(`${prefix}.input_scale`).data as Float32Array)[0]
      : undefined;
    const clip = ckpt.has(`${prefix}.input_clip`)
      ? (ckpt.read(`${prefix}.input_clip`).data as Float32Array)[0]
      : undefined;
    const spec =
      actSpec.kind === 'int' && (scale !== undefined || clip !== undefined)
        ? {
            ...actSpec,
            ...(scale !== undefined && { staticScale: scale }),
            ...(clip !== undefined && { clip }),
          }
        : actSpec;
    stored.inputQuant = {
      spec,
      keep: keepMasks(backend, cols, stored.quantized?.salient?.columns),
      transform: readTransform(ckpt, backend, prefix),
    };
  }
  if (stored.quantized)
    stored.weight = codesOnly?.(stored)
      ? codesOnlyWeight(backend, rows, cols)
      : backend.upload(dequantizeWeight(stored.quantized), [rows, cols], 'f32');
  return stored;
}

type Transform = NonNullable<InputQuant['transform']>;

/**
 * Transforms already uploaded from each checkpoint, by their values: linears whose stored transforms
 * are equal (FlatQuant's q/k/v, gate/up) get one pair of factor tensors, so the forward pass
 * transforms their common input once (LlamaModel.groupInput).
 */
const uploadedTransforms = new WeakMap<Checkpoint, Map<string, { backend: Backend; transform: Transform }>>();

/** FlatQuant's online transform of a linear's input, when the checkpoint has one. */
function readTransform(ckpt: Checkpoint, backend: Backend, prefix: string): InputQuant['transform'] {
  if (!ckpt.has(`${prefix}.input_transform_left`)) return undefined;
  const factor = (side: 'left' | 'right') => {
    const name = `${prefix}.input_transform_${side}`;
    const t = ckpt.read(name);
    if (t.dtype !== 'F32' || t.shape.length !== 2 || t.shape[0] !== t.shape[1])
      fail(
        `${ckpt.dir}: tensor "${name}" must be a square F32 matrix, got ${t.dtype} [${t.shape.join(', ')}]`,
      );
    return t;
  };
  const [left, right] = [factor('left'), factor('right')];
  const key = `${left.data.join(',')}|${right.data.join(',')}`;
  let uploaded = uploadedTransforms.get(ckpt);
  if (!uploaded) uploadedTransforms.set(ckpt, (uploaded = new Map()));
  const known = uploaded.get(key);
  if (known?.backend === backend) return known.transform;
  const upload = (t: typeof left) => backend.upload(t.data as Float32Array, t.shape, 'f32');
  const transform = { left: upload(left), right: upload(right) };
  uploaded.set(key, { backend, transform });
  return transform;
}
