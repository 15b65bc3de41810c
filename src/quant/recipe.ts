/**
 * Recipes: target formats for weights and activations plus an ordered list of method steps.
 * Built-in names expand to recipes; a JSON or YAML file with the same fields is accepted too.
 */

import fs from 'node:fs';
import path from 'node:path';
import yaml from 'js-yaml';
import { CALIB_SAMPLERS, type CalibSampler } from '../calib/data.ts';
import { fail } from '../errors.ts';
import { isBlockFormatOrMix, isLatticeType } from '../formats/ggml-codes.ts';
import { describeFormat, formatName, parseFormat, takesImportance } from '../formats/index.ts';
import { baseTensorType, LLAMA_MIXES, needsImatrix } from '../formats/llama-mix.ts';
import type { FormatSpec } from '../formats/spec.ts';
import { LINEARS, type LinearName } from '../model/llama.ts';
import { usesImatrix } from './weights.ts';

export interface ActivationQuant {
  format: FormatSpec;
  /** one per-tensor scale per linear input from calibration instead of dynamic scales */
  static: boolean;
}

export interface SmoothQuantStep {
  method: 'smoothquant';
  alpha: number;
}
export interface SqPlusStep {
  method: 'sqplus';
  /** alpha grid step over [0, 1] */
  step: number;
  /** calibration samples the whole-model loss is measured on */
  lossSamples: number;
  /**
   * 'logit-mse': mean squared error of the quantized model's logits against the full-precision
   * model's (the paper's "output error"); 'nll': calibration next-token NLL of the quantized model
   */
  loss: 'logit-mse' | 'nll';
}
export interface AwqStep {
  method: 'awq';
  grid: number;
  clip: boolean;
  /** AutoAWQ's duo scaling (x_mean^a / w_mean^(1-a)) instead of llm-awq's x_mean^a */
  duo: boolean;
  /** include activation quantization in the search loss (AWQ for W4A4) */
  withActivations: boolean;
}
export interface GptqStep {
  method: 'gptq';
  damp: number;
  blockSize: number;
  actOrder: boolean;
  staticGroups: boolean;
  /** INT scales by the GPTQ quantizer's shrink grid search instead of min/max (gptq.ts) */
  mse: boolean;
  /** llama.cpp types: block scales by llama.cpp's importance path, weighted by diag(H) (gptq.ts) */
  importance: boolean;
}
export interface MixedStep {
  method: 'mixed';
  /** percentage of input channels (by calibration activation magnitude) kept in full precision */
  salientPercent: number;
}
export interface FlatQuantStep {
  method: 'flatquant';
  epochs: number;
  /** learning rate of the transforms and the scaling (10x for the clip factors) */
  lr: number;
  /** calibration samples per optimizer step */
  batchSamples: number;
  /** SmoothQuant-style initialisation exponent of the per-channel scaling */
  diagAlpha: number;
  /** seed of the random orthogonal initial factors */
  seed: number;
}
/** llama.cpp's importance matrix: mean x^2 per input channel weighting the Q5_0 / K-quant rounding. */
export interface ImatrixStep {
  method: 'imatrix';
  /** a llama-imatrix file (GGUF or legacy .dat) to take the importance from instead of calibration */
  file?: string;
}

export type Step =
  | SmoothQuantStep
  | SqPlusStep
  | AwqStep
  | GptqStep
  | MixedStep
  | FlatQuantStep
  | ImatrixStep;

export interface Recipe {
  name: string;
  description: string;
  /** weight format; undefined keeps weights in full precision */
  weights?: FormatSpec;
  activations?: ActivationQuant;
  /** keys and values in the attention / KV cache; per-row INT means one scale per head and token */
  kvCache?: FormatSpec;
  steps: Step[];
  /** linears whose weights (and inputs) are quantized */
  targets: LinearName[];
  calib: RecipeCalib;
  /**
   * Where the next layer's calibration inputs come from: the full-precision layer (llm-awq, AutoAWQ,
   * SmoothQuant) or the quantized one (GPTQ). Default: 'quantized' when the recipe runs GPTQ.
   */
  propagate: 'fp' | 'quantized';
}

const STEP_DEFAULTS: { [M in Step['method']]: Extract<Step, { method: M }> } = {
  smoothquant: { method: 'smoothquant', alpha: 0.5 },
  sqplus: { method: 'sqplus', step: 0.05, lossSamples: 16, loss: 'logit-mse' },
  awq: { method: 'awq', grid: 20, clip: true, duo: false, withActivations: false },
  gptq: {
    method: 'gptq',
    damp: 0.01,
    blockSize: 128,
    actOrder: false,
    staticGroups: false,
    mse: false,
    importance: false,
  },
  mixed: { method: 'mixed', salientPercent: 1 },
  flatquant: { method: 'flatquant', epochs: 15, lr: 5e-3, batchSamples: 4, diagAlpha: 0.3, seed: 0 },
  imatrix: { method: 'imatrix', file: undefined },
};

/** Calibration size, and how the windows are drawn (`sampler`, see calib/data.ts; default 'pool'). */
export interface RecipeCalib {
  samples: number;
  seqLen: number;
  sampler?: CalibSampler;
}

const DEFAULT_CALIB: RecipeCalib = { samples: 128, seqLen: 512 };

export interface RecipeText {
  description: string;
  weights?: string;
  activations?: string;
  kv?: string;
  static?: boolean;
  steps?: Partial<Step>[];
  calib?: Partial<RecipeCalib>;
  propagate?: 'fp' | 'quantized';
}

const BUILTINS: Record<string, RecipeText> = {
  'rtn-w4g128': {
    description: 'round-to-nearest INT4 weights, asymmetric, groups of 128',
    weights: 'int4-g128',
  },
  'rtn-w3g128': {
    description: 'round-to-nearest INT3 weights, asymmetric, groups of 128',
    weights: 'int3-g128',
  },
  'rtn-w4': {
    description: 'round-to-nearest INT4 weights, asymmetric, per output channel',
    weights: 'int4-row',
  },
  'rtn-w8': {
    description: 'round-to-nearest INT8 weights, symmetric per output channel',
    weights: 'int8-row-sym',
  },
  'rtn-w8a8': {
    description: 'INT8 weights symmetric per output channel; INT8 activations symmetric, dynamic per token',
    weights: 'int8-row-sym',
    activations: 'int8-row-sym',
  },
  'rtn-w8a8-static': {
    description:
      'INT8 weights symmetric per output channel; INT8 activations symmetric, static per tensor (calibrated)',
    weights: 'int8-row-sym',
    activations: 'int8-tensor-sym',
    static: true,
  },
  'rtn-w4a8': {
    description: 'INT4 weights asymmetric g128; INT8 activations symmetric, dynamic per token',
    weights: 'int4-g128',
    activations: 'int8-row-sym',
  },
  'rtn-w4a4': {
    description: 'INT4 weights asymmetric g128; INT4 activations symmetric, dynamic per token',
    weights: 'int4-g128',
    activations: 'int4-row-sym',
  },
  'rtn-w4a4kv4': {
    description:
      'INT4 weights asymmetric g128; INT4 activations symmetric, dynamic per token; KV cache INT4 asymmetric, one scale per head and token',
    weights: 'int4-g128',
    activations: 'int4-row-sym',
    kv: 'int4-row',
  },
  'mxint4-128': { description: 'MXINT4 weights, blocks of 128 (E8M0 scales)', weights: 'mxint4-128' },
  'mxint8-128-a-mxint8-128': {
    description: 'MXINT8 weights and activations, blocks of 128 along the input dimension',
    weights: 'mxint8-128',
    activations: 'mxint8-128',
  },
  mxfp4: { description: 'MXFP4 (E2M1) weights, blocks of 32 (E8M0 scales)', weights: 'mxfp4' },
  nvfp4: {
    description: 'NVFP4 weights: E2M1, blocks of 16 with FP8 E4M3 scales and an f32 tensor scale',
    weights: 'nvfp4',
  },
  'rtn-q4_0': {
    description:
      "llama.cpp Q4_0 weights (blocks of 32, fp16 scale), rounded exactly as llama.cpp's quantizer; exports to GGUF Q4_0 unchanged",
    weights: 'q4_0',
  },
  'rtn-q8_0': {
    description:
      "llama.cpp Q8_0 weights (blocks of 32, fp16 scale), rounded exactly as llama.cpp's quantizer; exports to GGUF Q8_0 unchanged",
    weights: 'q8_0',
  },
  'awq-q4_0': {
    description:
      'AWQ (llm-awq defaults, its search and clipping done with Q4_0 rounding) then llama.cpp Q4_0 weights: AWQ for llama.cpp',
    weights: 'q4_0',
    steps: [{ method: 'awq' }],
  },
  'rtn-q4_k_m': {
    description:
      "llama.cpp Q4_K_M as llama-quantize writes it without an importance matrix: each linear in its type (Q4_K; Q6_K for v_proj and down_proj in a third of the layers; Q5_0 / Q8_0 where rows are not a multiple of 256), rounded exactly as llama.cpp's quantizers; exports to GGUF Q4_K_M unchanged",
    weights: 'q4_k_m',
  },
  'awq-q4_k_m': {
    description:
      "AWQ (llm-awq defaults, its search and clipping done with each linear's llama.cpp Q4_K_M type) then those types: AWQ for llama.cpp Q4_K_M; exports to GGUF Q4_K_M unchanged",
    weights: 'q4_k_m',
    steps: [{ method: 'awq' }],
  },
  'imatrix-q4_k_m': {
    description:
      "llama.cpp Q4_K_M with an importance matrix, as llama-imatrix + llama-quantize --imatrix make it: mean x^2 per input channel from the calibration text weights each linear's Q4_K / Q6_K / Q5_0 rounding; exports to GGUF Q4_K_M unchanged",
    weights: 'q4_k_m',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-q2_k_s': {
    description:
      "llama.cpp Q2_K_S, which llama-quantize writes only with an importance matrix: mean x^2 per input channel from the calibration text weights each linear's Q2_K (Q4_K for v_proj with 4+ query heads per KV head and for down_proj in the first eighth of the layers; Q4_0 / Q5_0 where rows are not a multiple of 256) rounding; exports to GGUF Q2_K_S unchanged",
    weights: 'q2_k_s',
    steps: [{ method: 'imatrix' }],
  },
  'rtn-iq4_xs': {
    description:
      "llama.cpp IQ4_XS as llama-quantize writes it without an importance matrix: each linear in its type (IQ4_XS on a 16-level non-linear grid; Q5_K for v_proj with 4+ query heads per KV head and for down_proj in the first eighth of the layers; IQ4_NL / Q5_1 where rows are not a multiple of 256), exactly as llama.cpp's quantizers; exports to GGUF IQ4_XS unchanged",
    weights: 'iq4_xs_mix',
  },
  'imatrix-iq4_xs': {
    description:
      "llama.cpp IQ4_XS with an importance matrix, as llama-imatrix + llama-quantize --imatrix make it: mean x^2 per input channel from the calibration text weights each linear's IQ4_XS (Q5_K for v_proj with 4+ query heads per KV head; IQ4_NL where rows are not a multiple of 256) rounding; exports to GGUF IQ4_XS unchanged",
    weights: 'iq4_xs_mix',
    steps: [{ method: 'imatrix' }],
  },
  'rtn-iq3_m': {
    description:
      "llama.cpp IQ3_M as llama-quantize writes it without an importance matrix: each linear in its type (IQ3_S, groups of 4 weights on a 512-point grid; Q4_K for v_proj, o_proj and down_proj in the first eighth of the layers; IQ4_NL / Q5_0 where rows are not a multiple of 256), exactly as llama.cpp's quantizers; exports to GGUF IQ3_M unchanged",
    weights: 'iq3_m',
  },
  'imatrix-iq3_m': {
    description:
      "llama.cpp IQ3_M with an importance matrix, as llama-imatrix + llama-quantize --imatrix make it: mean x^2 per input channel from the calibration text weights each linear's IQ3_S / Q4_K grid search; exports to GGUF IQ3_M unchanged",
    weights: 'iq3_m',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-iq3_xs': {
    description:
      "llama.cpp IQ3_XS with an importance matrix: IQ3_S, with IQ3_XXS (a 256-point grid, 3.06 bits) for q_proj, k_proj and the middle layers' gate_proj / up_proj, each grid search weighted by the mean x^2 per input channel; exports to GGUF IQ3_XS unchanged",
    weights: 'iq3_xs',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-iq3_xxs': {
    description:
      'llama.cpp IQ3_XXS (the file type) with an importance matrix: IQ3_XXS (a 256-point grid, 3.06 bits), IQ2_S for q_proj and k_proj, IQ3_S for o_proj, each grid search weighted by the mean x^2 per input channel; exports to GGUF IQ3_XXS unchanged',
    weights: 'iq3_xxs_mix',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-iq2_m': {
    description:
      'llama.cpp IQ2_M with an importance matrix: IQ2_S (groups of 8 weights on a 1024-point grid, 2.56 bits), IQ3_S for o_proj, v_proj and down_proj in the first eighth of the layers, each grid search weighted by the mean x^2 per input channel; exports to GGUF IQ2_M unchanged',
    weights: 'iq2_m',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-iq2_s': {
    description:
      'llama.cpp IQ2_S (the file type) with an importance matrix: IQ2_XS (groups of 8 weights on a 512-point grid, 2.31 bits), IQ3_S for o_proj, v_proj and down_proj in the first eighth of the layers, each grid search weighted by the mean x^2 per input channel; exports to GGUF IQ2_S unchanged',
    weights: 'iq2_s_mix',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-iq2_xs': {
    description:
      'llama.cpp IQ2_XS (the file type) with an importance matrix: IQ2_XS (groups of 8 weights on a 512-point grid, 2.31 bits), Q2_K for v_proj and down_proj in the first eighth of the layers, each search weighted by the mean x^2 per input channel; exports to GGUF IQ2_XS unchanged',
    weights: 'iq2_xs_mix',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-iq2_xxs': {
    description:
      'llama.cpp IQ2_XXS (the file type) with an importance matrix: IQ2_XXS (groups of 8 weights on a 256-point grid, 2.06 bits), Q2_K for v_proj and down_proj in the first eighth of the layers, each search weighted by the mean x^2 per input channel; exports to GGUF IQ2_XXS unchanged',
    weights: 'iq2_xxs_mix',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-iq1_s': {
    description:
      'llama.cpp IQ1_S (the file type) with an importance matrix: IQ1_S (groups of 8 weights on a 2048-point grid of -1, 0, 1, 1.56 bits), IQ2_XXS for o_proj, Q2_K for v_proj and down_proj in the first eighth of the layers, each search weighted by the mean x^2 per input channel; exports to GGUF IQ1_S unchanged',
    weights: 'iq1_s_mix',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-iq1_m': {
    description:
      'llama.cpp IQ1_M (the file type) with an importance matrix: IQ1_M (groups of 8 weights on a 2048-point grid of -1, 0, 1, each shifted by +-1/8, 1.75 bits), IQ2_XXS for o_proj, Q2_K for v_proj and down_proj in the first eighth of the layers, each search weighted by the mean x^2 per input channel; exports to GGUF IQ1_M unchanged',
    weights: 'iq1_m_mix',
    steps: [{ method: 'imatrix' }],
  },
  'imatrix-q4_0': {
    description:
      'llama.cpp Q4_0 with an importance matrix, as llama-imatrix + llama-quantize --imatrix make it: Q4_0, with Q4_1 for down_proj in the first eighth of the layers, each rounding weighted by the mean x^2 per input channel; exports to GGUF Q4_0 unchanged',
    weights: 'q4_0_mix',
    steps: [{ method: 'imatrix' }],
  },
  'rtn-q5_k_m': {
    description:
      "llama.cpp Q5_K_M as llama-quantize writes it without an importance matrix: each linear in its type (Q5_K; Q6_K for v_proj and down_proj in a third of the layers; Q5_1 / Q8_0 where rows are not a multiple of 256), rounded exactly as llama.cpp's quantizers; exports to GGUF Q5_K_M unchanged",
    weights: 'q5_k_m',
  },
  'awq-q5_k_m': {
    description:
      "AWQ (llm-awq defaults, its search and clipping done with each linear's llama.cpp Q5_K_M type) then those types: AWQ for llama.cpp Q5_K_M; exports to GGUF Q5_K_M unchanged",
    weights: 'q5_k_m',
    steps: [{ method: 'awq' }],
  },
  'rtn-q3_k_m': {
    description:
      "llama.cpp Q3_K_M as llama-quantize writes it without an importance matrix: each linear in its type (Q3_K; Q4_K for o_proj; Q5_K / Q4_K for v_proj and down_proj; Q4_0 / Q5_0 / Q5_1 where rows are not a multiple of 256), rounded exactly as llama.cpp's quantizers; exports to GGUF Q3_K_M unchanged",
    weights: 'q3_k_m',
  },
  'awq-q3_k_m': {
    description:
      "AWQ (llm-awq defaults, its search and clipping done with each linear's llama.cpp Q3_K_M type) then those types: AWQ for llama.cpp Q3_K_M; exports to GGUF Q3_K_M unchanged",
    weights: 'q3_k_m',
    steps: [{ method: 'awq' }],
  },
  'gptq-q4_0': {
    description:
      "GPTQ (damp 0.01, blocks of 128, true sequential) to llama.cpp Q4_0 weights, each block's scale as llama.cpp's quantizer picks it; exports to GGUF Q4_0 unchanged",
    weights: 'q4_0',
    steps: [{ method: 'gptq' }],
  },
  'gptq-q4_k_m': {
    description:
      "GPTQ (damp 0.01, blocks of 128, true sequential) to each linear's llama.cpp Q4_K_M type, each block's scales and mins as llama.cpp's quantizer picks them when GPTQ reaches the block; exports to GGUF Q4_K_M unchanged",
    weights: 'q4_k_m',
    steps: [{ method: 'gptq' }],
  },
  'awq-w4g128': {
    description: 'AWQ (llm-awq defaults: 20-point scale grid, clip search) then INT4 asymmetric g128 weights',
    weights: 'int4-g128',
    steps: [{ method: 'awq' }],
  },
  'awq-w3g128': {
    description: 'AWQ (llm-awq defaults: 20-point scale grid, clip search) then INT3 asymmetric g128 weights',
    weights: 'int3-g128',
    steps: [{ method: 'awq' }],
  },
  'awq-w4a4': {
    description:
      'AWQ whose scale search also quantizes the activations (INT4 symmetric per token); INT4 asymmetric g128 weights',
    weights: 'int4-g128',
    activations: 'int4-row-sym',
    steps: [{ method: 'awq', withActivations: true }],
  },
  'smoothquant-w8a8': {
    description:
      'SmoothQuant (alpha 0.5) then INT8 weights symmetric per channel, INT8 activations symmetric dynamic per token',
    weights: 'int8-row-sym',
    activations: 'int8-row-sym',
    steps: [{ method: 'smoothquant' }],
  },
  'smoothquant-w8a8-static': {
    description:
      'SmoothQuant (alpha 0.5) then INT8 weights symmetric per channel, INT8 activations symmetric static per tensor',
    weights: 'int8-row-sym',
    activations: 'int8-tensor-sym',
    static: true,
    steps: [{ method: 'smoothquant' }],
  },
  'sqplus-w4g128': {
    description:
      'SmoothQuant+: smoothing with the alpha (grid step 0.05, or none) minimising the logit MSE of the whole W4 model against full precision on calibration text, then INT4 asymmetric g128 RTN',
    weights: 'int4-g128',
    steps: [{ method: 'sqplus' }],
    calib: { samples: 32, seqLen: 512 },
  },
  'gptq-w4g128': {
    description: 'GPTQ (damp 0.01, blocks of 128, true sequential) INT4 asymmetric g128 weights',
    weights: 'int4-g128',
    steps: [{ method: 'gptq' }],
  },
  'gptq-w3g128': {
    description: 'GPTQ (damp 0.01, blocks of 128, true sequential) INT3 asymmetric g128 weights',
    weights: 'int3-g128',
    steps: [{ method: 'gptq' }],
  },
  'gptq-w4g128-actorder': {
    description: 'GPTQ with act_order (columns by decreasing Hessian diagonal), INT4 asymmetric g128 weights',
    weights: 'int4-g128',
    steps: [{ method: 'gptq', actOrder: true }],
  },
  'gptq-w3g128-actorder': {
    description: 'GPTQ with act_order (columns by decreasing Hessian diagonal), INT3 asymmetric g128 weights',
    weights: 'int3-g128',
    steps: [{ method: 'gptq', actOrder: true }],
  },
  'smoothquant-gptq-w8a8': {
    description:
      'SmoothQuant (alpha 0.5) then GPTQ INT8 symmetric per-channel weights; INT8 per-token activations',
    weights: 'int8-row-sym',
    activations: 'int8-row-sym',
    steps: [{ method: 'smoothquant' }, { method: 'gptq' }],
  },
  'awq-gptq-w4g128': {
    description: 'AWQ scales (no clip search) then GPTQ instead of RTN, INT4 asymmetric g128 weights',
    weights: 'int4-g128',
    steps: [{ method: 'awq', clip: false }, { method: 'gptq' }],
  },
  'mxint4-awq-gptq': {
    description: 'AWQ scales then MX-aware GPTQ, MXINT4 weights in blocks of 128; MXINT8-128 activations',
    weights: 'mxint4-128',
    activations: 'mxint8-128',
    steps: [{ method: 'awq', clip: false }, { method: 'gptq' }],
  },
  'flatquant-w4a4': {
    description:
      'FlatQuant: learned Kronecker transforms with per-channel scaling and clipping (15 epochs, AdamW lr 5e-3), INT4 symmetric per-channel weights, INT4 symmetric per-token activations',
    weights: 'int4-row-sym',
    activations: 'int4-row-sym',
    steps: [{ method: 'flatquant' }],
  },
  'flatquant-w4a4kv4': {
    description:
      "FlatQuant's W4A4KV4: flatquant-w4a4 plus the KV cache in INT4 asymmetric, one scale per head and token (no learned K/Q transform)",
    weights: 'int4-row-sym',
    activations: 'int4-row-sym',
    kv: 'int4-row',
    steps: [{ method: 'flatquant' }],
  },
  'mixed-w4a4': {
    description:
      'Mixed precision (AWQ Table 1): the 1% input channels with the largest mean |x| kept in full precision; the rest INT4 g128 weights, INT4 per-token activations',
    weights: 'int4-g128',
    activations: 'int4-row-sym',
    steps: [{ method: 'mixed' }],
  },
};

export function builtinRecipeNames(): string[] {
  return Object.keys(BUILTINS);
}

/** A recipe from its text form (formats by name, steps with defaults filled in), validated. */
export function defineRecipe(name: string, text: RecipeText): Recipe {
  return buildRecipe(name, text, `recipe ${name}`);
}

export function resolveRecipe(nameOrFile: string): Recipe {
  if (BUILTINS[nameOrFile]) return buildRecipe(nameOrFile, BUILTINS[nameOrFile], 'built-in');
  if (fs.existsSync(nameOrFile)) return loadRecipeFile(nameOrFile);
  return fail(`--recipe "${nameOrFile}" is neither a built-in recipe (see \`llmq recipes\`) nor a file`);
}

function loadRecipeFile(file: string): Recipe {
  let parsed: unknown;
  try {
    parsed = yaml.load(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return fail(`${file}: not valid JSON/YAML (${(e as Error).message.split('\n')[0]})`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed))
    fail(`${file}: a recipe must be an object`);
  const obj = parsed as Record<string, unknown>;
  checkKeys(file, obj, [
    'name',
    'description',
    'weights',
    'activations',
    'kv',
    'static',
    'steps',
    'targets',
    'calib',
    'base',
    'propagate',
  ]);
  if (obj.propagate !== undefined && obj.propagate !== 'fp' && obj.propagate !== 'quantized')
    fail(`${file}: "propagate" must be "fp" or "quantized", got ${JSON.stringify(obj.propagate)}`);
  const base = obj.base === undefined ? undefined : resolveRecipe(String(obj.base));
  const text: RecipeText = {
    description: String(obj.description ?? base?.description ?? `recipe from ${file}`),
    weights: obj.weights === undefined ? undefined : String(obj.weights),
    activations: obj.activations === undefined ? undefined : String(obj.activations),
    kv: obj.kv === undefined ? undefined : String(obj.kv),
    static: obj.static === undefined ? undefined : Boolean(obj.static),
    steps: obj.steps === undefined ? undefined : parseSteps(file, obj.steps),
    calib: obj.calib === undefined ? undefined : parseCalib(file, obj.calib),
    propagate: obj.propagate as RecipeText['propagate'],
  };
  const recipe = buildRecipe(String(obj.name ?? file), text, file, base);
  if (obj.targets !== undefined) recipe.targets = parseTargets(file, obj.targets);
  return recipe;
}

function checkKeys(where: string, obj: Record<string, unknown>, allowed: string[]): void {
  for (const key of Object.keys(obj))
    if (!allowed.includes(key)) fail(`${where}: unknown key "${key}" (allowed: ${allowed.join(', ')})`);
}

function parseSteps(file: string, steps: unknown): Partial<Step>[] {
  if (!Array.isArray(steps)) return fail(`${file}: "steps" must be a list`);
  return steps.map((raw, i) => {
    // `- awq: { grid: 20 }` or `- { method: awq, grid: 20 }`
    const entry = typeof raw === 'string' ? { method: raw } : (raw as Record<string, unknown>);
    const keys = Object.keys(entry ?? {});
    const step =
      'method' in entry
        ? { ...entry }
        : keys.length === 1
          ? { method: keys[0], ...(entry[keys[0]] as object) }
          : undefined;
    if (!step) return fail(`${file}: steps[${i}] must name one method`);
    const method = String(step.method);
    if (!(method in STEP_DEFAULTS))
      fail(
        `${file}: steps[${i}]: unknown method "${method}" (known: ${Object.keys(STEP_DEFAULTS).join(', ')})`,
      );
    checkKeys(`${file}: steps[${i}] (${method})`, step, Object.keys(STEP_DEFAULTS[method as Step['method']]));
    // a file a recipe file names is found beside it (an absolute path stays as it is)
    const named = step as { file?: unknown };
    if (method === 'imatrix' && typeof named.file === 'string')
      named.file = path.resolve(path.dirname(file), named.file);
    const loss = (step as { loss?: unknown }).loss;
    if (method === 'sqplus' && loss !== undefined && loss !== 'logit-mse' && loss !== 'nll')
      fail(`${file}: steps[${i}] (sqplus): loss must be "logit-mse" or "nll", got ${JSON.stringify(loss)}`);
    return step as Partial<Step>;
  });
}

/** The keys a recipe file sets; the rest come from its base or the method's defaults. */
function parseCalib(file: string, calib: unknown): Partial<RecipeCalib> {
  const c = calib as Record<string, unknown>;
  checkKeys(`${file}: calib`, c, ['samples', 'seqLen', 'sampler']);
  const out: Partial<RecipeCalib> = {};
  for (const [key, min] of [
    ['samples', 1],
    ['seqLen', 2],
  ] as const) {
    if (c[key] === undefined) continue;
    const value = Number(c[key]);
    if (!Number.isInteger(value) || value < min) fail(`${file}: calib.${key} must be an integer >= ${min}`);
    out[key] = value;
  }
  if (c.sampler !== undefined) {
    if (!CALIB_SAMPLERS.includes(c.sampler as CalibSampler))
      fail(
        `${file}: calib.sampler must be one of ${CALIB_SAMPLERS.join(', ')}, got ${JSON.stringify(c.sampler)}`,
      );
    out.sampler = c.sampler as CalibSampler;
  }
  return out;
}

function parseTargets(file: string, targets: unknown): LinearName[] {
  if (!Array.isArray(targets)) return fail(`${file}: "targets" must be a list of linear names`);
  for (const t of targets)
    if (!LINEARS.includes(t)) fail(`${file}: unknown target "${t}" (linears: ${LINEARS.join(', ')})`);
  return targets as LinearName[];
}

function buildRecipe(name: string, text: RecipeText, where: string, base?: Recipe): Recipe {
  const steps = text.steps
    ? text.steps.map((s) => ({ ...STEP_DEFAULTS[s.method as Step['method']], ...s }) as Step)
    : (base?.steps ?? []);
  const weights = text.weights ? parseFormat(text.weights) : base?.weights;
  const activations = text.activations
    ? { format: parseFormat(text.activations), static: text.static ?? false }
    : base?.activations;
  const recipe: Recipe = {
    name,
    description: text.description,
    weights,
    activations,
    kvCache: text.kv ? parseFormat(text.kv) : base?.kvCache,
    steps,
    targets: base?.targets ?? [...LINEARS],
    calib: { ...(base?.calib ?? calibFor(steps)), ...text.calib },
    propagate:
      text.propagate ?? base?.propagate ?? (steps.some((s) => s.method === 'gptq') ? 'quantized' : 'fp'),
  };
  validateRecipe(where, recipe);
  return recipe;
}

/** Calibration defaults of the reference tools: 128 x 2048 for GPTQ and FlatQuant, 128 x 512 otherwise (AWQ). */
function calibFor(steps: Step[]): RecipeCalib {
  return steps.some((s) => s.method === 'gptq' || s.method === 'flatquant')
    ? { samples: 128, seqLen: 2048 }
    : DEFAULT_CALIB;
}

function validateRecipe(where: string, r: Recipe): void {
  if (!r.weights && !r.activations)
    fail(`${where}: recipe quantizes nothing (set weights and/or activations)`);
  const acts = r.activations;
  if (
    acts?.static &&
    !(acts.format.kind === 'int' && acts.format.granularity === 'tensor' && acts.format.symmetric)
  )
    fail(`${where}: static activation scales need a symmetric per-tensor INT format (e.g. int8-tensor-sym)`);
  if (r.kvCache && (r.kvCache.kind === 'ggml' || r.kvCache.kind === 'nvfp4' || r.kvCache.kind === 'fp8'))
    fail(
      `${where}: kv takes INT (per row = per head, or groups) or MX formats, not ${formatName(r.kvCache)}`,
    );
  if (acts?.format.kind === 'ggml')
    fail(
      `${where}: ${acts.format.type} is a llama.cpp weight format; activations take INT, MX, FP8 or NVFP4`,
    );
  if (r.weights?.kind === 'ggml' && needsImatrix(r.weights.type) && !usesImatrix(r))
    fail(
      `${where}: ${r.weights.type} needs an importance matrix, as llama-quantize refuses to write its ${r.weights.type === 'q2_k_s' ? 'Q2_K' : 'IQ3_XXS / IQ2 / IQ1'} tensors without one: add the step imatrix`,
    );
  for (const s of r.steps) {
    if (
      s.method === 'gptq' &&
      s.actOrder &&
      !s.staticGroups &&
      (r.weights?.kind === 'mx' || r.weights?.kind === 'ggml')
    )
      fail(
        `${where}: gptq actOrder with ${formatName(r.weights)} needs staticGroups: true (its blocks are consecutive input channels whose scale must be fixed before the columns are reordered)`,
      );
    const blockFormat = r.weights !== undefined && isBlockFormatOrMix(r.weights);
    if (s.method === 'gptq' && r.weights && !['int', 'mx', 'ggml'].includes(r.weights.kind))
      fail(`${where}: gptq quantizes to INT, MX and llama.cpp formats, not ${formatName(r.weights)}`);
    if (s.method === 'gptq' && r.weights?.kind === 'ggml' && isLatticeType(baseTensorType(r.weights.type)))
      fail(
        `${where}: gptq rounds one weight at a time; ${r.weights.type}'s IQ3 codes are grid points of 4 weights, which that rounding cannot keep (use rtn, imatrix or awq)`,
      );
    if (s.method === 'gptq' && s.importance && r.weights?.kind !== 'ggml')
      fail(
        `${where}: gptq importance weights llama.cpp's block scales; ${r.weights ? formatName(r.weights) : 'full precision'} has none`,
      );
    if (s.method === 'gptq' && usesImatrix(r))
      fail(`${where}: gptq and imatrix both pick the final codes; a recipe takes one of them`);
    if ((s.method === 'awq' || s.method === 'gptq') && !r.weights)
      fail(`${where}: step ${s.method} needs a weight format`);
    if (s.method === 'smoothquant' && !(s.alpha >= 0 && s.alpha <= 1))
      fail(`${where}: smoothquant alpha must be in [0, 1], got ${s.alpha}`);
    if (s.method === 'mixed' && !(s.salientPercent >= 0 && s.salientPercent < 100))
      fail(`${where}: mixed salientPercent must be in [0, 100), got ${s.salientPercent}`);
    if (s.method === 'gptq' && !(s.damp > 0)) fail(`${where}: gptq damp must be > 0, got ${s.damp}`);
    if (s.method === 'flatquant') validateFlatQuant(where, r, s);
    if (
      s.method === 'imatrix' &&
      s.file !== undefined &&
      (typeof s.file !== 'string' || r.steps.length !== 1)
    )
      fail(
        `${where}: imatrix file must be a path, and the only step (its importance is of the unscaled model's inputs)`,
      );
    if (s.method === 'imatrix' && !(blockFormat || (r.weights && takesImportance(r.weights))))
      fail(
        `${where}: imatrix weights llama.cpp's q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs, iq3_xxs, iq3_s, iq2_xxs, iq2_xs, iq2_s, iq1_s, iq1_m quantizers and their mixes (${LLAMA_MIXES.join(', ')}), not ${r.weights ? formatName(r.weights) : 'full precision'}`,
      );
  }
}

function validateFlatQuant(where: string, r: Recipe, s: FlatQuantStep): void {
  const symmetricRows = (f: FormatSpec | undefined) =>
    f?.kind === 'int' && f.symmetric && f.granularity === 'row' && f.staticScale === undefined;
  if (!symmetricRows(r.weights))
    fail(`${where}: flatquant needs symmetric per-channel INT weights (e.g. int4-row-sym)`);
  if (!r.activations || r.activations.static || !symmetricRows(r.activations.format))
    fail(`${where}: flatquant needs dynamic symmetric per-token INT activations (e.g. int4-row-sym)`);
  if (!(Number.isInteger(s.epochs) && s.epochs >= 1))
    fail(`${where}: flatquant epochs must be an integer >= 1`);
  if (!(s.lr > 0)) fail(`${where}: flatquant lr must be > 0, got ${s.lr}`);
  if (!(Number.isInteger(s.batchSamples) && s.batchSamples >= 1))
    fail(`${where}: flatquant batchSamples must be an integer >= 1`);
  if (!(s.diagAlpha >= 0 && s.diagAlpha <= 1)) fail(`${where}: flatquant diagAlpha must be in [0, 1]`);
  if (r.steps.length !== 1)
    fail(`${where}: flatquant runs alone (its transforms change every linear's basis)`);
}

/** Whether a step reads calibration activations (an imatrix from a file does not). */
export function stepNeedsCalibration(s: Step): boolean {
  return !(s.method === 'imatrix' && s.file);
}

export function recipeNeedsCalibration(r: Recipe): boolean {
  return r.steps.some(stepNeedsCalibration) || Boolean(r.activations?.static);
}

/** Exact meaning of a recipe, for `llmq recipes --verbose` and the checkpoint manifest. */
export function explainRecipe(r: Recipe): string {
  const lines = [
    `${r.name}: ${r.description}`,
    `  weights      ${r.weights ? describeFormat(r.weights) : 'full precision'} on ${r.targets.join(', ')}; lm_head and embeddings full precision`,
    `  kv cache     ${r.kvCache ? `${describeFormat(r.kvCache)}${r.kvCache.kind === 'int' && r.kvCache.granularity === 'row' ? ' (one scale per head and token)' : ''}` : 'full precision'}`,
    `  activations  ${r.activations ? `${describeFormat(r.activations.format)}${r.activations.static ? ', static scale from calibration' : ', dynamic'}` : 'full precision'}`,
    `  steps        ${r.steps.length ? r.steps.map((s) => JSON.stringify(s)).join(' -> ') : 'none (round to nearest)'}`,
  ];
  if (recipeNeedsCalibration(r))
    lines.push(
      `  calibration  ${r.calib.samples} x ${r.calib.seqLen} tokens; next layer's inputs from the ${r.propagate === 'fp' ? 'full-precision' : 'quantized'} layer`,
    );
  return lines.join('\n');
}
