/**
 * Loading a model for evaluation or further work: a full-precision HF checkpoint, an llmq quantized
 * checkpoint (decoded, with its recorded activation quantization), or a full-precision checkpoint
 * quantized on the fly with a recipe.
 */
import { type CalibOptions, loadCalibration } from '../calib/data.ts';
import { fail } from '../errors.ts';
import { loadTokenizer } from '../io/tokenizer.ts';
import { LlamaModel } from '../model/llama.ts';
import type { Backend } from '../tensor/tensor.ts';
import { loadQuantized, readQuantizationConfig } from './checkpoint.ts';
import './methods.ts';
import { type PipelineOptions, type QuantReport, quantizeModel } from './pipeline.ts';
import { type Recipe, recipeNeedsCalibration } from './recipe.ts';

export interface LoadOptions extends PipelineOptions {
  recipe?: Recipe;
  calib?: Partial<CalibOptions>;
  /** tokenizing the calibration text: tokens so far of the pool's target */
  onCalibration?: (tokens: number, target: number) => void;
}

export interface LoadedModel {
  model: LlamaModel;
  report?: QuantReport;
  calibration?: Record<string, unknown>;
}

export async function loadModel(dir: string, backend: Backend, opts: LoadOptions = {}): Promise<LoadedModel> {
  const stored = readQuantizationConfig(dir);
  if (stored) {
    if (opts.recipe)
      fail(
        `${dir} is already quantized (recipe ${stored.recipe.name}); --recipe needs a full-precision model`,
      );
    return { model: loadQuantized(dir, backend, stored) };
  }
  const model = LlamaModel.load(dir, backend);
  if (!opts.recipe) return { model };
  const recipe = opts.recipe;
  const calib = recipeNeedsCalibration(recipe)
    ? await loadCalibration(loadTokenizer(dir), {
        samples: opts.calib?.samples ?? recipe.calib.samples,
        seqLen: opts.calib?.seqLen ?? recipe.calib.seqLen,
        seed: opts.calib?.seed ?? 0,
        sampler: opts.calib?.sampler ?? recipe.calib.sampler,
        file: opts.calib?.file,
        onProgress: opts.onCalibration,
      })
    : undefined;
  const report = await quantizeModel(model, recipe, calib, opts);
  const calibration = calib && {
    source: calib.source,
    samples: calib.samples,
    seqLen: calib.seqLen,
    sampler: calib.sampler,
    sha256: calib.sha256,
  };
  return { model, report, calibration };
}
