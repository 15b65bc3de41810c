/** Loading a GGUF file's model and tokenizer from disk (Node only). */
import type { LlamaModel } from '../model/llama.ts';
import type { CodesOnly } from '../model/packed.ts';
import type { Backend } from '../tensor/tensor.ts';
import { readGguf } from './gguf.ts';
import { ggufModelFromFile, ggufTokenizer } from './gguf-model.ts';
import type { TextTokenizer } from './tokenizer-json.ts';

/**
 * The LlamaModel of a GGUF file, its weights dequantized (Q4_0 / Q8_0 linears with their codes too:
 * those `codesOnly` accepts get no f32 weight); quantization.recipe names the file type.
 */
export function loadGgufModel(path: string, backend: Backend, codesOnly?: CodesOnly): LlamaModel {
  return ggufModelFromFile(readGguf(path), backend, codesOnly);
}

/** The tokenizer embedded in a GGUF file (byte-level BPE only). */
export function loadGgufTokenizer(path: string): TextTokenizer {
  return ggufTokenizer(readGguf(path));
}
