/** Loading a model from a directory on disk (Node only; the browser entry builds from bytes). */

import { loadModelConfig } from '../io/config-file.ts';
import { openCheckpoint } from '../io/safetensors.ts';
import type { Backend } from '../tensor/tensor.ts';
import { LlamaModel } from './llama.ts';

/** The model in `dir` (config.json + safetensors), its weights uploaded to `backend`. */
export function loadLlama(dir: string, backend: Backend): LlamaModel {
  const config = loadModelConfig(dir);
  const ckpt = openCheckpoint(dir);
  try {
    return LlamaModel.fromCheckpoint(dir, config, ckpt, backend);
  } finally {
    ckpt.close();
  }
}
