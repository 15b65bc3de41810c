/**
 * The llmq quantized checkpoint: a Hugging Face model directory whose quantized linears are stored
 * as packed integer codes + scales (+ zero points / shared exponents), with the recipe and a
 * manifest in config.json's `quantization_config` (quant_method "llmq").
 *
 * Per quantized linear `<p>` = model.layers.i.{self_attn|mlp}.<name>:
 *   <p>.qweight          U8   codes packed `bits` wide, little-endian bit stream (4-bit: 2 per byte)
 *   <p>.scales           F32  one per group / block / row / tensor (MX: 2^e; NVFP4: E4M3 block scale)
 *   <p>.qzeros           U8   asymmetric INT zero points, packed `bits` wide
 *   <p>.exponents        I16  MX shared exponents (unbiased)
 *   <p>.scale_codes      U8   NVFP4 E4M3 block-scale bit patterns; <p>.global_scale F32 [1]
 *   <p>.salient_columns  I32  mixed precision: input channels kept in full precision,
 *   <p>.salient_values   F32  [out, n] their weights
 *   <p>.g_idx            I32  GPTQ act_order: scale group of each input column
 *   <p>.input_scale      F32  [1] static activation scale
 *   <p>.input_clip       F32  [1] activation clip factor (FlatQuant's learned clipping)
 *   <p>.input_transform_left, <p>.input_transform_right
 *                        F32  [n1, n1], [n2, n2] FlatQuant's online transform x -> x (left ⊗ right)
 * Everything else is stored as found (bf16 when its values are exactly bf16, else f32).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../errors.ts';
import { formatName, packCodes } from '../formats/index.ts';
import { loadModelConfig } from '../io/config-file.ts';
import { type Checkpoint, openCheckpoint, type TensorToWrite, writeSafetensors } from '../io/safetensors.ts';
import {
  LINEARS,
  type Linear,
  type LinearName,
  type LlamaModel,
  linearTensorName,
  type QuantizedWeight,
} from '../model/llama.ts';
import type { CodesOnly } from '../model/packed.ts';
import { bf16ToF32, f32ToBf16 } from '../tensor/dtype.ts';
import type { Backend, Tensor } from '../tensor/tensor.ts';
import { writeCollectedImatrix } from './imatrix.ts';
import type { Recipe } from './recipe.ts';
import {
  type Manifest,
  type QuantizationConfig,
  quantizationConfigOf,
  quantizedFromCheckpoint,
} from './stored.ts';

export {
  type Manifest,
  type QuantizationConfig,
  readEncoded,
  readStoredLinear,
} from './stored.ts';

export const TOOL_VERSION = '0.1.0';
/** Files besides weights and config.json that a derived checkpoint copies from its source. */
export const COPIED_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'generation_config.json',
];

/** sha256 over the source checkpoint's safetensors files (in name order). */
export function hashCheckpointFiles(ckpt: Checkpoint): string {
  const h = crypto.createHash('sha256');
  for (const file of [...ckpt.files].sort()) {
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(1 << 22);
    try {
      for (let n = fs.readSync(fd, buf); n > 0; n = fs.readSync(fd, buf)) h.update(buf.subarray(0, n));
    } finally {
      fs.closeSync(fd);
    }
  }
  return h.digest('hex');
}

export async function plainTensor(b: Backend, name: string, t: Tensor): Promise<TensorToWrite> {
  const values = await b.read(t);
  const bf16 = f32ToBf16(values);
  const exact = t.dtype === 'bf16' || bf16ToF32(bf16).every((v, i) => v === values[i]);
  return exact
    ? { name, dtype: 'BF16', shape: t.shape, data: bf16 }
    : { name, dtype: 'F32', shape: t.shape, data: values };
}

function encodedTensors(prefix: string, q: QuantizedWeight): TensorToWrite[] {
  const e = q.encoded;
  const out: TensorToWrite[] = [];
  const packed = packCodes(e.codes, e.bits);
  out.push({ name: `${prefix}.qweight`, dtype: 'U8', shape: [packed.length], data: packed });
  out.push({ name: `${prefix}.scales`, dtype: 'F32', shape: [e.scales.length], data: e.scales });
  if (e.zeros) {
    const z = packCodes(e.zeros, e.bits);
    out.push({ name: `${prefix}.qzeros`, dtype: 'U8', shape: [z.length], data: z });
  }
  if (e.exponents)
    out.push({ name: `${prefix}.exponents`, dtype: 'I16', shape: [e.exponents.length], data: e.exponents });
  if (e.scaleCodes)
    out.push({
      name: `${prefix}.scale_codes`,
      dtype: 'U8',
      shape: [e.scaleCodes.length],
      data: e.scaleCodes,
    });
  if (e.globalScale !== undefined)
    out.push({
      name: `${prefix}.global_scale`,
      dtype: 'F32',
      shape: [1],
      data: new Float32Array([e.globalScale]),
    });
  if (q.gIdx) out.push({ name: `${prefix}.g_idx`, dtype: 'I32', shape: [q.gIdx.length], data: q.gIdx });
  if (q.salient) {
    const n = q.salient.columns.length;
    out.push({ name: `${prefix}.salient_columns`, dtype: 'I32', shape: [n], data: q.salient.columns });
    out.push({ name: `${prefix}.salient_values`, dtype: 'F32', shape: [e.rows, n], data: q.salient.values });
  }
  return out;
}

async function linearTensors(
  b: Backend,
  layer: number,
  name: LinearName,
  lin: Linear,
): Promise<TensorToWrite[]> {
  const prefix = linearTensorName(layer, name).replace(/\.weight$/, '');
  const out = lin.quantized
    ? encodedTensors(prefix, lin.quantized)
    : [await plainTensor(b, `${prefix}.weight`, lin.weight)];
  if (lin.bias) out.push(await plainTensor(b, `${prefix}.bias`, lin.bias));
  const s = lin.inputQuant?.spec;
  if (s?.kind === 'int' && s.staticScale !== undefined)
    out.push({
      name: `${prefix}.input_scale`,
      dtype: 'F32',
      shape: [1],
      data: new Float32Array([s.staticScale]),
    });
  if (s?.kind === 'int' && s.clip !== undefined && s.clip !== 1)
    out.push({ name: `${prefix}.input_clip`, dtype: 'F32', shape: [1], data: new Float32Array([s.clip]) });
  const transform = lin.inputQuant?.transform;
  if (transform) {
    for (const [side, t] of [
      ['left', transform.left],
      ['right', transform.right],
    ] as const)
      out.push({
        name: `${prefix}.input_transform_${side}`,
        dtype: 'F32',
        shape: t.shape,
        data: await b.read(t),
      });
  }
  return out;
}

/** Decoder layer i as stored: its two norms and its linears (quantized ones encoded). */
export async function layerTensors(model: LlamaModel, i: number): Promise<TensorToWrite[]> {
  const b = model.backend;
  const L = model.layers[i];
  const out = [
    await plainTensor(b, `model.layers.${i}.input_layernorm.weight`, L.inputNorm),
    await plainTensor(b, `model.layers.${i}.post_attention_layernorm.weight`, L.postNorm),
  ];
  for (const name of LINEARS) out.push(...(await linearTensors(b, i, name, L.linears[name])));
  return out;
}

async function modelTensors(model: LlamaModel): Promise<TensorToWrite[]> {
  const b = model.backend;
  const out = [await plainTensor(b, 'model.embed_tokens.weight', model.embedTokens)];
  for (let i = 0; i < model.layers.length; i++) out.push(...(await layerTensors(model, i)));
  out.push(await plainTensor(b, 'model.norm.weight', model.finalNorm));
  if (model.lmHead !== model.embedTokens) out.push(await plainTensor(b, 'lm_head.weight', model.lmHead));
  return out;
}

/** Refuses an existing output unless `force`; the caller writes into the returned temp dir. */
export function prepareOutputDir(out: string, force: boolean): string {
  if (fs.existsSync(out) && !force) fail(`${out} already exists (pass --force to replace it)`);
  const tmp = `${out.replace(/\/+$/, '')}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  return tmp;
}

/** Moves the finished temp dir into place, replacing an existing output only now. */
export function commitOutputDir(tmp: string, out: string): void {
  if (fs.existsSync(out)) {
    const old = `${out.replace(/\/+$/, '')}.old-${process.pid}`;
    fs.renameSync(out, old);
    fs.renameSync(tmp, out);
    fs.rmSync(old, { recursive: true, force: true });
  } else fs.renameSync(tmp, out);
}

export async function saveQuantized(
  model: LlamaModel,
  recipe: Recipe,
  manifest: Manifest,
  out: string,
  force: boolean,
): Promise<void> {
  const tmp = prepareOutputDir(out, force);
  try {
    writeSafetensors(path.join(tmp, 'model.safetensors'), await modelTensors(model), { format: 'pt' });
    const quantization: QuantizationConfig = {
      quant_method: 'llmq',
      recipe,
      weight_format: recipe.weights ? formatName(recipe.weights) : null,
      activation_format: recipe.activations ? formatName(recipe.activations.format) : null,
      activation_static: recipe.activations?.static ?? false,
      manifest,
    };
    const config = { ...model.config.raw, quantization_config: quantization };
    fs.writeFileSync(path.join(tmp, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
    writeCollectedImatrix(model, path.join(tmp, 'imatrix.gguf'), manifest.calibration?.source);
    for (const f of COPIED_FILES) {
      const src = path.join(model.dir, f);
      if (fs.existsSync(src)) fs.copyFileSync(src, path.join(tmp, f));
    }
    commitOutputDir(tmp, out);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

export function readQuantizationConfig(dir: string): QuantizationConfig | undefined {
  return quantizationConfigOf(loadModelConfig(dir), `${dir}/config.json`);
}

/** Loads an llmq quantized checkpoint from disk: decoded weights, recorded activation quantization. */
export function loadQuantized(
  dir: string,
  backend: Backend,
  q: QuantizationConfig,
  codesOnly?: CodesOnly,
): LlamaModel {
  const ckpt = openCheckpoint(dir);
  try {
    return quantizedFromCheckpoint(dir, loadModelConfig(dir), ckpt, backend, q, codesOnly);
  } finally {
    ckpt.close();
  }
}
