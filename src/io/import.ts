/**
 * Loading checkpoints other tools quantized from disk (the reading itself: import-format.ts), so
 * `llmq eval` measures them with llmq's protocol.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../errors.ts';
import type { LlamaModel } from '../model/llama.ts';
import type { CodesOnly } from '../model/packed.ts';
import type { Backend } from '../tensor/tensor.ts';
import { loadModelConfig } from './config-file.ts';
import {
  type ForeignQuantization,
  foreignQuantizationOf,
  foreignQuantizedFromCheckpoint,
} from './import-format.ts';
import { openCheckpoint } from './safetensors.ts';

export type { ForeignQuantization } from './import-format.ts';

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return fail(`${file}: cannot read JSON (${(e as Error).message.split('\n')[0]})`);
  }
}

/**
 * The quantization of the checkpoint in `dir` if another tool wrote it (config.json, or AutoGPTQ's /
 * AutoAWQ's legacy quantize_config.json / quant_config.json); undefined for full precision and llmq.
 */
export function readForeignQuantConfig(dir: string): ForeignQuantization | undefined {
  return foreignQuantizationOf(
    loadModelConfig(dir).raw,
    (name) => path.join(dir, name),
    (name) => {
      const file = path.join(dir, name);
      return fs.existsSync(file) ? readJson(file) : undefined;
    },
  );
}

/** Loads a checkpoint another tool quantized (readForeignQuantConfig); weights decoded to f32. */
export function loadForeignQuantized(
  dir: string,
  backend: Backend,
  fq: ForeignQuantization,
  codesOnly?: CodesOnly,
): LlamaModel {
  const ckpt = openCheckpoint(dir);
  try {
    return foreignQuantizedFromCheckpoint(dir, loadModelConfig(dir), ckpt, backend, fq, codesOnly);
  } finally {
    ckpt.close();
  }
}
