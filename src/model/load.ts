/** Loads a model directory: a full-precision HF checkpoint or an llmq quantized checkpoint. */
import type { Backend } from '../tensor/tensor.ts';
import { LlamaModel } from './llama.ts';

export interface LoadOptions {
  recipe?: string;
  calib?: string;
  quiet?: boolean;
}

export async function loadModel(dir: string, backend: Backend, _opts: LoadOptions = {}): Promise<LlamaModel> {
  return LlamaModel.load(dir, backend);
}
