import fs from 'node:fs';
import path from 'node:path';
import type { ModelConfig } from '../io/config.ts';
import { loadModelConfig } from '../io/config-file.ts';
import { ggmlTypeName, readGguf } from '../io/gguf.ts';
import { loadGgufTokenizer } from '../io/gguf-load.ts';
import { ggufFileTypeName, ggufModelConfig, isGgufPath } from '../io/gguf-model.ts';
import { openCheckpoint } from '../io/safetensors.ts';
import { loadTokenizer } from '../io/tokenizer.ts';
import { onePositional, parse, printJson } from './args.ts';

export const INSPECT_HELP = `llmq inspect <model-dir | model.gguf> [--json]
  Architecture, parameter count, dtypes (GGUF: tensor types), size on disk and tokenizer of a checkpoint.`;

export async function inspectCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('inspect', argv, { json: { type: 'boolean', default: false } });
  const dir = onePositional('inspect', positionals, 'model directory');
  if (isGgufPath(dir)) return inspectGguf(dir, values.json);
  const config = loadModelConfig(dir);
  const ckpt = openCheckpoint(dir);
  const dtypes: Record<string, number> = {};
  let params = 0;
  for (const name of ckpt.names()) {
    const info = ckpt.info(name);
    const n = info.shape.reduce((a, b) => a * b, 1);
    dtypes[info.dtype] = (dtypes[info.dtype] ?? 0) + n;
    params += n;
  }
  const diskBytes = ckpt.files.reduce((s, f) => s + fs.statSync(f).size, 0);
  ckpt.close();
  const tokenizer = loadTokenizer(dir);
  const qcfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).quantization_config;
  const out = {
    model: dir,
    ...configFields(config),
    parameters: params,
    dtypes,
    files: ckpt.files.map((f) => path.basename(f)),
    disk_bytes: diskBytes,
    tokenizer: tokenizer.summary,
    quantization: qcfg?.recipe ?? qcfg?.quant_method ?? null,
  };
  if (values.json) return printJson(out);
  console.log(`${dir}
  architecture  ${config.modelType}: ${shapeLine(config)}
  parameters    ${(params / 1e6).toFixed(2)} M stored values (${Object.entries(dtypes)
    .map(([d, n]) => `${d} ${(n / 1e6).toFixed(2)} M`)
    .join(', ')})
  on disk       ${(diskBytes / 2 ** 20).toFixed(1)} MiB in ${ckpt.files.length} file(s)
  tokenizer     ${tokenizer.summary}${out.quantization ? `\n  quantization  ${out.quantization}` : ''}`);
}

/** A llama.cpp file: its config as llmq reads it, tensor types by parameter count, tokenizer. */
function inspectGguf(file: string, json: boolean): void {
  const gguf = readGguf(file);
  const config = ggufModelConfig(gguf);
  const types: Record<string, number> = {};
  let params = 0;
  for (const t of gguf.tensors) {
    const n = t.dims.reduce((a, b) => a * b, 1);
    const type = ggmlTypeName(t.type);
    types[type] = (types[type] ?? 0) + n;
    params += n;
  }
  const tokenizer = loadGgufTokenizer(file).summary;
  const out = {
    model: file,
    ...configFields(config),
    file_type: ggufFileTypeName(gguf),
    parameters: params,
    tensor_types: types,
    disk_bytes: gguf.fileSize,
    tokenizer,
  };
  if (json) {
    printJson(out);
    return;
  }
  console.log(`${file}
  architecture  ${config.modelType} (GGUF v${gguf.version}, ${out.file_type}): ${shapeLine(config)}
  parameters    ${(params / 1e6).toFixed(2)} M (${Object.entries(types)
    .map(([t, n]) => `${t} ${(n / 1e6).toFixed(2)} M`)
    .join(', ')})
  on disk       ${(gguf.fileSize / 2 ** 20).toFixed(1)} MiB
  tokenizer     ${tokenizer}`);
}

function configFields(config: ModelConfig) {
  return {
    architecture: config.modelType,
    layers: config.numLayers,
    hidden_size: config.hiddenSize,
    intermediate_size: config.intermediateSize,
    heads: config.numHeads,
    kv_heads: config.numKvHeads,
    head_dim: config.headDim,
    vocab_size: config.vocabSize,
    tied_embeddings: config.tieWordEmbeddings,
  };
}

function shapeLine(config: ModelConfig): string {
  return (
    `${config.numLayers} layers x ${config.hiddenSize}, ${config.numHeads} heads / ${config.numKvHeads} kv heads ` +
    `(head_dim ${config.headDim}), ffn ${config.intermediateSize}, vocab ${config.vocabSize}` +
    (config.tieWordEmbeddings ? ', tied embeddings' : '')
  );
}
