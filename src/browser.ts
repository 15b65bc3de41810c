/**
 * The browser entry: a model from bytes (fetched from a URL or picked by the user) run on WebGPU
 * through `navigator.gpu`. Nothing it imports touches `node:` modules; `npm run build:browser`
 * bundles it into dist/llmq.browser.js. Full-precision and llmq quantized checkpoints load, AutoAWQ,
 * GPTQ and compressed-tensors ones, and GGUF files; quantized linears run from their integer codes (packed GEMV/GEMM, int8 matmuls) as in Node.
 */
import { fail } from './errors.ts';
import { type ModelConfig, parseModelConfig } from './io/config.ts';
import type { GgufFile } from './io/gguf-format.ts';
import { ggufModelFromFile } from './io/gguf-model.ts';
import {
  foreignQuantizationOf,
  foreignQuantizedFromCheckpoint,
  LEGACY_CONFIG_FILES,
} from './io/import-format.ts';
import { parseJsonObject } from './io/json-object.ts';
import { checkpointFromBytes, INDEX_FILE, SINGLE_FILE } from './io/safetensors-format.ts';
import { type TextTokenizer, tokenizerFromJson } from './io/tokenizer-json.ts';
import { int8Eligible, useInt8Matmuls } from './model/int8.ts';
import { LlamaModel } from './model/llama.ts';
import { type CodesOnly, packable, usePackedWeights } from './model/packed.ts';
import { quantizationConfigOf, quantizedFromCheckpoint } from './quant/stored.ts';
import { chatTemplateFrom, ggufChatTemplateOf } from './runtime/chat-template.ts';
import { eosIdsFrom, ModelEngine } from './runtime/generate.ts';
import { concatArrays } from './tensor/dtype.ts';
import type { Backend } from './tensor/tensor.ts';

export { UserError } from './errors.ts';
export { perplexity, windowNlls } from './eval/perplexity.ts';
export { type GgufFile, ggufFromBytes } from './io/gguf-format.ts';
/** The tokenizer a GGUF file embeds (byte-level BPE only). */
export { ggufTokenizer as tokenizerFromGguf } from './io/gguf-model.ts';
export type { TextTokenizer } from './io/tokenizer-json.ts';
export { LlamaModel } from './model/llama.ts';
export type { ChatMessage, GenerateOptions, GenerateResult } from './runtime/engine.ts';
export { ModelEngine } from './runtime/generate.ts';
export type { Backend, Tensor } from './tensor/tensor.ts';
export { WebGpuBackend, webgpuAvailable } from './tensor/webgpu/backend.ts';

/** A model directory in memory: file name (as in the directory) to its bytes. */
export type ModelFiles = Record<string, Uint8Array>;

/** files fetchModelFiles skips when the server answers 404 */
const OPTIONAL_FILES = [
  'tokenizer_config.json',
  'generation_config.json',
  'chat_template.jinja',
  INDEX_FILE,
  ...LEGACY_CONFIG_FILES.map(([file]) => file),
];

function text(files: ModelFiles, name: string): string | undefined {
  const bytes = files[name];
  return bytes === undefined ? undefined : new TextDecoder().decode(bytes);
}

function json(files: ModelFiles, name: string, label: string): Record<string, unknown> | undefined {
  const body = text(files, name);
  return body === undefined ? undefined : parseJsonObject(body, `${label}/${name}`);
}

function requiredJson(files: ModelFiles, name: string, label: string): Record<string, unknown> {
  return json(files, name, label) ?? fail(`${label}: ${name} is missing`);
}

export function configFromFiles(files: ModelFiles, label = 'model'): ModelConfig {
  return parseModelConfig(requiredJson(files, 'config.json', label), `${label}/config.json`);
}

/**
 * The model of a directory in memory, weights uploaded to `backend`: full precision, llmq quantized,
 * or quantized by AutoAWQ / GPTQ / compressed-tensors. Quantized linears on WebGPU stay codes (no f32
 * copies); elsewhere they are decoded to f32.
 */
export function modelFromFiles(files: ModelFiles, backend: Backend, label = 'model'): LlamaModel {
  const config = configFromFiles(files, label);
  const weights: ModelFiles = {};
  for (const [name, bytes] of Object.entries(files)) if (name.endsWith('.safetensors')) weights[name] = bytes;
  const ckpt = checkpointFromBytes(label, weights);
  const codes = fromCodes(backend);
  const foreign = foreignQuantizationOf(
    config.raw,
    (name) => `${label}/${name}`,
    (name) => json(files, name, label),
  );
  if (foreign)
    return codes.finish(
      foreignQuantizedFromCheckpoint(label, config, ckpt, backend, foreign, codes.codesOnly),
    );
  const q = quantizationConfigOf(config, `${label}/config.json`);
  if (!q) return LlamaModel.fromCheckpoint(label, config, ckpt, backend);
  return codes.finish(quantizedFromCheckpoint(label, config, ckpt, backend, q, codes.codesOnly));
}

/**
 * On WebGPU, quantized linears run from their codes as `eval` does in Node: no f32 copies, W8A8 on
 * the int8 matmuls, weight-only ones packed. Elsewhere they are decoded to f32.
 */
function fromCodes(backend: Backend): { codesOnly: CodesOnly; finish: (model: LlamaModel) => LlamaModel } {
  const gpu = backend.name === 'webgpu';
  return {
    codesOnly: (lin) => gpu && (int8Eligible(lin) || packable(lin)),
    finish: (model) => {
      if (gpu) {
        useInt8Matmuls(model);
        usePackedWeights(model, true);
      }
      return model;
    },
  };
}

/** The model of a GGUF file; its block-quantized linears stay codes on WebGPU (model/packed.ts). */
export function modelFromGguf(file: GgufFile, backend: Backend): LlamaModel {
  const codes = fromCodes(backend);
  return codes.finish(ggufModelFromFile(file, backend, codes.codesOnly));
}

/** A chat/generation engine with the GGUF's chat template and the model's EOS id. */
export function engineFromGguf(
  file: GgufFile,
  model: LlamaModel,
  tokenizer: TextTokenizer,
  opts: { contextLength?: number } = {},
): ModelEngine {
  return new ModelEngine(model, tokenizer, {
    modelName: file.path,
    contextLength: opts.contextLength,
    template: ggufChatTemplateOf(file),
    eosIds: eosIdsFrom(model.config),
  });
}

export function tokenizerFromFiles(files: ModelFiles, label = 'model'): TextTokenizer {
  const tokenizer = requiredJson(files, 'tokenizer.json', label);
  return tokenizerFromJson(
    tokenizer,
    json(files, 'tokenizer_config.json', label) ?? {},
    `${label}/tokenizer.json`,
  );
}

/** A chat/generation engine: the model's chat template, EOS ids of config.json and generation_config.json. */
export function engineFromFiles(
  files: ModelFiles,
  model: LlamaModel,
  tokenizer: TextTokenizer,
  opts: { label?: string; contextLength?: number } = {},
): ModelEngine {
  const label = opts.label ?? 'model';
  const jinja = text(files, 'chat_template.jinja');
  const template = chatTemplateFrom(
    json(files, 'tokenizer_config.json', label) ?? {},
    `${label}/tokenizer_config.json`,
    jinja === undefined ? undefined : { file: `${label}/chat_template.jinja`, text: jinja },
  );
  return new ModelEngine(model, tokenizer, {
    modelName: label,
    contextLength: opts.contextLength,
    template,
    eosIds: eosIdsFrom(model.config, json(files, 'generation_config.json', label)),
  });
}

export interface FetchOptions {
  /** default: globalThis.fetch */
  fetch?: (url: string) => Promise<Response>;
  /** bytes received so far and the total of the files whose size is known */
  onProgress?: (loaded: number, total: number) => void;
}

/**
 * The files of a model directory served at `baseUrl` (config, tokenizer files, and model.safetensors
 * or the shards a model.safetensors.index.json names). Optional files that answer 404 are skipped.
 */
export async function fetchModelFiles(baseUrl: string, opts: FetchOptions = {}): Promise<ModelFiles> {
  const get = opts.fetch ?? ((url: string) => globalThis.fetch(url));
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  const files: ModelFiles = {};
  const counter = { loaded: 0, total: 0 };
  const fetchOne = async (name: string, required: boolean): Promise<void> => {
    const bytes = await fetchBytes(get, `${base}${name}`, required, counter, opts.onProgress);
    if (bytes) files[name] = bytes;
  };
  await Promise.all([
    fetchOne('config.json', true),
    fetchOne('tokenizer.json', true),
    ...OPTIONAL_FILES.map((f) => fetchOne(f, false)),
  ]);
  await Promise.all(weightFiles(files, base).map((f) => fetchOne(f, true)));
  return files;
}

function weightFiles(files: ModelFiles, label: string): string[] {
  const index = json(files, INDEX_FILE, label);
  if (!index) return [SINGLE_FILE];
  const map = index.weight_map;
  if (typeof map !== 'object' || map === null) return fail(`${label}${INDEX_FILE}: no weight_map object`);
  return [...new Set(Object.values(map).map(String))].sort();
}

async function fetchBytes(
  get: (url: string) => Promise<Response>,
  url: string,
  required: boolean,
  counter: { loaded: number; total: number },
  onProgress?: (loaded: number, total: number) => void,
): Promise<Uint8Array | undefined> {
  let res: Response;
  try {
    res = await get(url);
  } catch (e) {
    return fail(`${url}: cannot fetch (${(e as Error).message})`);
  }
  if (!res.ok) {
    if (!required && res.status === 404) return undefined;
    return fail(`${url}: HTTP ${res.status}${required ? ' (this file is required)' : ''}`);
  }
  counter.total += Number(res.headers.get('content-length') ?? 0);
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const chunks: Uint8Array[] = [];
  const reader = res.body.getReader();
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    chunks.push(r.value);
    counter.loaded += r.value.length;
    onProgress?.(counter.loaded, counter.total);
  }
  return concatArrays(chunks, (n) => new Uint8Array(n));
}
