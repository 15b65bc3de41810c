/**
 * Flags and loading shared by the commands that run a model (eval, generate, chat, serve): the device,
 * the tokenizer, an optional on-the-fly recipe, and the GPU's integer paths for stored checkpoints.
 */
import { fail } from '../errors.ts';
import { loadGgufTokenizer } from '../io/gguf-load.ts';
import { isGgufPath } from '../io/gguf-model.ts';
import { loadTokenizer, type TextTokenizer } from '../io/tokenizer.ts';
import { int8Eligible, useInt8Matmuls } from '../model/int8.ts';
import type { LlamaModel } from '../model/llama.ts';
import { packable, usePackedWeights } from '../model/packed.ts';
import { loadModel } from '../quant/load.ts';
import { type Recipe, resolveRecipe } from '../quant/recipe.ts';
import { createBackend, type DeviceName } from '../tensor/index.ts';
import type { Backend } from '../tensor/tensor.ts';
import { CALIB_FLAGS, calibFlags } from './calib-flags.ts';
import { Progress, phaseProgress } from './progress.ts';

export const MODEL_FLAGS = {
  tokenizer: { type: 'string' },
  recipe: { type: 'string' },
  ...CALIB_FLAGS,
  device: { type: 'string', default: 'cpu' },
  int8: { type: 'string', default: 'auto' },
  packed: { type: 'string', default: 'auto' },
} as const;

type ModelFlagValues = Record<string, string | boolean | undefined>;

export interface OpenedModel {
  backend: Backend;
  tokenizer: TextTokenizer;
  model: LlamaModel;
  recipe: Recipe | undefined;
  /** seconds spent quantizing on the fly (with --recipe) */
  quantizeSeconds: number | null;
  int8Linears: number;
  packedLinears: number;
}

/** Where the tokenizer (and a chat template) comes from: --tokenizer, else the model dir or .gguf file. */
export function tokenizerSource(dir: string, values: ModelFlagValues): string {
  return typeof values.tokenizer === 'string' ? values.tokenizer : dir;
}

/** The backend and tokenizer, before any weights are read (so a bad flag or text fails fast). */
export async function openBackendAndTokenizer(
  command: string,
  dir: string,
  values: ModelFlagValues,
): Promise<{ backend: Backend; tokenizer: TextTokenizer; recipe: Recipe | undefined }> {
  for (const flag of ['int8', 'packed'])
    if (values[flag] !== 'auto' && values[flag] !== 'off')
      fail(`${command}: --${flag} must be auto or off, got ${values[flag]}`);
  const recipe = typeof values.recipe === 'string' ? resolveRecipe(values.recipe) : undefined;
  const backend = await createBackend(values.device as DeviceName);
  const source = tokenizerSource(dir, values);
  const tokenizer = isGgufPath(source) ? loadGgufTokenizer(source) : loadTokenizer(source);
  return { backend, tokenizer, recipe };
}

/** Loads (and with a recipe, quantizes) the model; stored integer weights stay codes on the GPU. */
export async function openModel(
  dir: string,
  values: ModelFlagValues,
  opened: { backend: Backend; tokenizer: TextTokenizer; recipe: Recipe | undefined },
  quiet: boolean,
): Promise<OpenedModel> {
  const { backend, recipe } = opened;
  const layers = new Progress('quantize', 'layers', quiet);
  const tokenizing = new Progress('calibration', 'tokens', quiet);
  const gpu = backend.name === 'webgpu';
  const int8 = gpu && values.int8 === 'auto';
  const packed = gpu && values.packed === 'auto';
  const { model, report } = await loadModel(dir, backend, {
    recipe,
    calib: calibFlags(values as never),
    onLayer: (d, t) => layers.update(d, t),
    onProgress: phaseProgress(quiet),
    onCalibration: (d, t) => tokenizing.update(d, t),
    // a stored checkpoint's linears that run from codes never get f32 copies on the GPU
    codesOnly: (lin) => (int8 && int8Eligible(lin)) || (packed && packable(lin)),
  });
  return {
    ...opened,
    model,
    quantizeSeconds: report?.seconds ?? null,
    int8Linears: int8 ? useInt8Matmuls(model) : 0,
    packedLinears: packed ? usePackedWeights(model, true) : 0,
  };
}
