/** The library entry point: `import { loadModel, quantizeModel, perplexity } from 'llmq'`. */
export { type CalibOptions, type CalibSet, loadCalibration } from './calib/data.ts';
export { UserError } from './errors.ts';
export { readEvalText } from './eval/eval-text.ts';
export { perplexity } from './eval/perplexity.ts';
export { decode, encode, fakeQuantRows, formatName, parseFormat } from './formats/index.ts';
export type { FormatSpec } from './formats/spec.ts';
export { loadTokenizer } from './io/tokenizer.ts';
export { LlamaModel } from './model/llama.ts';
export { loadQuantized, readQuantizationConfig, saveQuantized } from './quant/checkpoint.ts';
export { loadModel } from './quant/load.ts';
export { quantizeModel } from './quant/pipeline.ts';
export { builtinRecipeNames, explainRecipe, type Recipe, resolveRecipe } from './quant/recipe.ts';
export { createBackend, type DeviceName } from './tensor/index.ts';
export type { Backend, Tensor } from './tensor/tensor.ts';
