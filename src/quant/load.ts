/**
 * Loading a model for evaluation or further work: a full-precision HF checkpoint, an llmq quantized
 * checkpoint (decoded, with its recorded activation quantization), a checkpoint another tool
 * quantized (AutoAWQ, GPTQ, compressed-tensors: io/import.ts), or a full-precision checkpoint
 * quantized on the fly with a recipe, or a llama.cpp .gguf file (dequantized; Q4_0 / Q8_0 linears keep their codes: io/gguf-model.ts).
 */
import { type CalibOptions, loadCalibration } from '../calib/data.ts';
import { fail } from '../errors.ts';
import { loadGgufModel } from '../io/gguf-load.ts';
import { isGgufPath } from '../io/gguf-model.ts';
import { loadForeignQuantized, readForeignQuantConfig } from '../io/import.ts';
import { loadTokenizer } from '../io/tokenizer.ts';
import type { LlamaModel } from '../model/llama.ts';
import { loadLlama } from '../model/llama-dir.ts';
import type { CodesOnly } from '../model/packed.ts';
import type { Backend } from '../tensor/tensor.ts';
import { loadQuantized, readQuantizationConfig, TOOL_VERSION } from './checkpoint.ts';
import './methods.ts';
import { type PipelineOptions, type QuantReport, quantizeModel } from './pipeline.ts';
import { type Recipe, recipeNeedsCalibration } from './recipe.ts';
import { ResumeStore } from './resume.ts';

export interface LoadOptions extends Omit<PipelineOptions, 'resume'> {
  recipe?: Recipe;
  /**
   * Keep finished layers in `dir` and go on from an earlier interrupted run's state there when it was
   * made from the same source (`source`: its sha256), recipe, calibration and backend.
   */
  resume?: { dir: string; source: string; fresh?: boolean; intervalMs?: number };
  calib?: Partial<CalibOptions>;
  /** tokenizing the calibration text: tokens so far of the pool's target */
  onCalibration?: (tokens: number, target: number) => void;
  /** a stored quantized checkpoint: linears that will run from codes get no f32 weight (model/packed.ts) */
  codesOnly?: CodesOnly;
}

export interface LoadedModel {
  model: LlamaModel;
  report?: QuantReport;
  calibration?: Record<string, unknown>;
  /** the resume state in use (quantize clears it once the checkpoint is written) */
  resume?: ResumeStore;
}

export async function loadModel(dir: string, backend: Backend, opts: LoadOptions = {}): Promise<LoadedModel> {
  if (isGgufPath(dir)) {
    if (opts.recipe) fail(`${dir} is already quantized (GGUF file); --recipe needs a full-precision model`);
    return { model: loadGgufModel(dir, backend, opts.codesOnly) };
  }
  const foreign = readForeignQuantConfig(dir);
  if (foreign) {
    if (opts.recipe)
      fail(
        `${dir} is already quantized (${foreign.method} checkpoint); --recipe needs a full-precision model`,
      );
    return { model: loadForeignQuantized(dir, backend, foreign, opts.codesOnly) };
  }
  const stored = readQuantizationConfig(dir);
  if (stored) {
    if (opts.recipe)
      fail(
        `${dir} is already quantized (recipe ${stored.recipe.name}); --recipe needs a full-precision model`,
      );
    return { model: loadQuantized(dir, backend, stored, opts.codesOnly) };
  }
  const model = loadLlama(dir, backend);
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
  const resume =
    opts.resume && calib ? resumeStore(opts.resume, recipe, calib.sha256, backend.name) : undefined;
  const report = await quantizeModel(model, recipe, calib, { ...opts, resume });
  const calibration = calib && {
    source: calib.source,
    samples: calib.samples,
    seqLen: calib.seqLen,
    sampler: calib.sampler,
    sha256: calib.sha256,
  };
  return { model, report, calibration, resume };
}

function resumeStore(
  where: NonNullable<LoadOptions['resume']>,
  recipe: Recipe,
  calibSha: string,
  backend: string,
): ResumeStore {
  const key = ResumeStore.key({ tool: TOOL_VERSION, source: where.source, recipe, calibSha, backend });
  const store = new ResumeStore(where.dir, key, where.intervalMs);
  if (where.fresh) store.clear();
  return store;
}
