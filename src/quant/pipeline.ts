/**
 * The layer-by-layer quantization pipeline (DESIGN.md "The quantization pipeline"):
 * embed the calibration samples; for each decoder layer run it in full precision capturing what the
 * recipe's steps need, run the steps (scale folding, clipping, GPTQ), quantize the remaining
 * weights, set the activation quantizers, then produce the next layer's inputs (from the
 * full-precision layer as llm-awq/AutoAWQ do, or from the quantized layer as GPTQ does).
 * Peak memory: one layer's calibration activations (plus what a step keeps) and the weights.
 */
import type { CalibSet } from '../calib/data.ts';
import type { FormatSpec } from '../formats/spec.ts';
import {
  type BatchShape,
  type ForwardHooks,
  kvCacheSpec,
  type LinearName,
  type LlamaModel,
} from '../model/llama.ts';
import type { ColumnStats, Tensor } from '../tensor/tensor.ts';
import { type Recipe, recipeNeedsCalibration, type Step, stepNeedsCalibration } from './recipe.ts';
import type { ResumeStore } from './resume.ts';
import { keepMasks, roundToNearest, weightSpecOf } from './weights.ts';

/** Rows of calibration tokens per forward chunk (bounds transient memory). */
const CHUNK_TOKENS = 4096;

export interface LayerContext {
  model: LlamaModel;
  layer: number;
  recipe: Recipe;
  /** this layer's calibration inputs, one tensor per chunk of samples */
  inputs: Tensor[];
  shapes: BatchShape[];
  /** per-channel |x| statistics of every linear's input in the full-precision layer */
  stats: Map<LinearName, ColumnStats>;
  /** input channels a step asked to keep in full precision (mixed precision) */
  salient: Map<LinearName, Int32Array>;
  /** static activation quantization: max |x| of each linear's input after the steps */
  staticAbsMax: Map<LinearName, number>;
  /** seconds spent per phase, summed over layers */
  timings: Record<string, number>;
  /** what steps report (chosen ratios, losses...) keyed by step */
  notes: Record<string, unknown>;
  /**
   * per chunk, the residual stream after the quantized layer's attention half, left by the last step
   * (GPTQ) when residualsPropagate(recipe): propagation then runs only the MLP half
   */
  attentionResiduals?: Tensor[];
  onProgress?: PipelineOptions['onProgress'];
}

export type StepRunner = (ctx: LayerContext, step: Step) => Promise<void>;

/** Whole-model steps (SmoothQuant+): run before the layer loop, may rewrite the model. */
export type ModelStepRunner = (
  model: LlamaModel,
  recipe: Recipe,
  calib: CalibSet,
  report: QuantReport,
) => Promise<void>;

const LAYER_STEPS = new Map<Step['method'], StepRunner>();
const MODEL_STEPS = new Map<Step['method'], ModelStepRunner>();

/** Layer steps that read ctx.stats (the full-precision layer's input statistics). */
const STATS_READERS = new Set<Step['method']>();

export function registerLayerStep(
  method: Step['method'],
  run: StepRunner,
  opts: { readsStats?: boolean } = {},
): void {
  LAYER_STEPS.set(method, run);
  if (opts.readsStats) STATS_READERS.add(method);
}

export function registerModelStep(method: Step['method'], run: ModelStepRunner): void {
  MODEL_STEPS.set(method, run);
}

export interface QuantReport {
  recipe: string;
  seconds: number;
  timings: Record<string, number>;
  layers: Record<string, unknown>[];
  model: Record<string, unknown>;
  /**
   * calibration hidden states held across a layer (its inputs and outputs, f32 values); steps add
   * their own captures on top (AWQ: the four linear inputs), which the measured peak RSS includes
   */
  peakActivationValues: number;
  /** decoder layers taken over from an interrupted earlier run instead of quantized again */
  resumedLayers: number;
}

export interface PipelineOptions {
  onLayer?: (done: number, total: number) => void;
  /** progress inside long steps (FlatQuant's optimizer steps over the whole model), by phase */
  onProgress?: (phase: string, done: number, total: number) => void;
  /** where finished layers are kept so that an interrupted run can go on (see resume.ts) */
  resume?: ResumeStore;
}

/** Adds `ms` milliseconds to a phase's seconds. */
export function addMs(timings: Record<string, number>, phase: string, ms: number): void {
  timings[phase] = (timings[phase] ?? 0) + ms / 1000;
}

/** Runs `fn`, adding its wall time to timings[phase]. */
export async function timed<T>(
  timings: Record<string, number>,
  phase: string,
  fn: () => Promise<T> | T,
): Promise<T> {
  const start = performance.now();
  try {
    return await fn();
  } finally {
    addMs(timings, phase, performance.now() - start);
  }
}

export async function quantizeModel(
  model: LlamaModel,
  recipe: Recipe,
  calib: CalibSet | undefined,
  opts: PipelineOptions = {},
): Promise<QuantReport> {
  const start = performance.now();
  const report: QuantReport = {
    recipe: recipe.name,
    seconds: 0,
    timings: {},
    layers: [],
    model: {},
    peakActivationValues: 0,
    resumedLayers: 0,
  };
  // the KV cache is quantized from the start, so that calibration passes see it as inference will
  if (recipe.kvCache) model.kvQuant = kvCacheSpec(recipe.kvCache, model.config.headDim);
  if (recipeNeedsCalibration(recipe)) {
    if (!calib) throw new Error(`recipe ${recipe.name} needs calibration data`);
    for (const step of recipe.steps) {
      const run = MODEL_STEPS.get(step.method);
      if (run) await run(model, recipe, calib, report);
    }
  }
  const layerSteps = recipe.steps.some((s) => LAYER_STEPS.has(s.method));
  if (calib && (layerSteps || recipe.activations?.static))
    await layerByLayer(model, recipe, calib, report, opts);
  else {
    for (let i = 0; i < model.layers.length; i++) {
      await runStepsWithoutCalibration(model, i, recipe, report);
      await timed(report.timings, 'quantize', () => finishLayer(model, i, recipe, new Map()));
      opts.onLayer?.(i + 1, model.layers.length);
    }
  }
  model.quantization = { recipe: recipe.name };
  report.seconds = (performance.now() - start) / 1000;
  return report;
}

/** A layer's fresh step context over the given calibration inputs. */
function layerContext(
  model: LlamaModel,
  layer: number,
  recipe: Recipe,
  report: QuantReport,
  run: Pick<LayerContext, 'inputs' | 'shapes' | 'onProgress'>,
): LayerContext {
  return {
    model,
    layer,
    recipe,
    ...run,
    stats: new Map(),
    salient: new Map(),
    staticAbsMax: new Map(),
    timings: report.timings,
    notes: {},
  };
}

/** The layer steps that need no calibration (an imatrix from a file), run without inputs. */
async function runStepsWithoutCalibration(
  model: LlamaModel,
  layer: number,
  recipe: Recipe,
  report: QuantReport,
): Promise<void> {
  const steps = recipe.steps.filter((s) => !stepNeedsCalibration(s) && LAYER_STEPS.has(s.method));
  if (steps.length === 0) return;
  const ctx = layerContext(model, layer, recipe, report, { inputs: [], shapes: [] });
  for (const step of steps) await LAYER_STEPS.get(step.method)?.(ctx, step);
  report.layers.push({ layer, ...ctx.notes });
}

/** The calibration samples in chunks of whole samples. */
function chunkShapes(calib: CalibSet): BatchShape[] {
  const perChunk = Math.max(1, Math.floor(CHUNK_TOKENS / calib.seqLen));
  const shapes: BatchShape[] = [];
  for (let s = 0; s < calib.samples; s += perChunk)
    shapes.push({ batch: Math.min(perChunk, calib.samples - s), seqLen: calib.seqLen });
  return shapes;
}

function embedCalibration(model: LlamaModel, calib: CalibSet, shapes: BatchShape[]): Tensor[] {
  let sample = 0;
  return shapes.map(({ batch, seqLen }) => {
    const ids = calib.ids.subarray(sample * seqLen, (sample + batch) * seqLen);
    sample += batch;
    return model.embed(ids);
  });
}

async function layerByLayer(
  model: LlamaModel,
  recipe: Recipe,
  calib: CalibSet,
  report: QuantReport,
  opts: PipelineOptions,
): Promise<void> {
  const shapes = chunkShapes(calib);
  const resumed = opts.resume?.restore(model, recipe, shapes);
  let inputs = resumed?.inputs ?? embedCalibration(model, calib, shapes);
  if (resumed) {
    report.resumedLayers = resumed.layers;
    report.layers.push(...resumed.notes);
    Object.assign(report.timings, resumed.timings);
    opts.onLayer?.(resumed.layers, model.layers.length);
  }
  const width = model.config.hiddenSize;
  for (let layer = resumed?.layers ?? 0; layer < model.layers.length; layer++) {
    const ctx = layerContext(model, layer, recipe, report, { inputs, shapes, onProgress: opts.onProgress });
    const before = { ...report.timings };
    const layerStart = performance.now();
    const fpOutputs = await captureIfNeeded(ctx);
    report.peakActivationValues = calib.samples * calib.seqLen * 2 * width;
    for (const step of recipe.steps) {
      const run = LAYER_STEPS.get(step.method);
      if (run) await run(ctx, step);
    }
    if (recipe.activations?.static) await timed(report.timings, 'static scales', () => staticScales(ctx));
    await timed(report.timings, 'quantize', () =>
      finishLayer(model, layer, recipe, ctx.salient, ctx.staticAbsMax),
    );
    const next =
      recipe.propagate === 'quantized'
        ? await timed(report.timings, 'propagate', () => propagateQuantized(ctx))
        : fpOutputs;
    for (const t of inputs) t.dispose();
    inputs = next;
    const seconds = {
      ...phaseSeconds(report.timings, before),
      layer: (performance.now() - layerStart) / 1000,
    };
    report.layers.push({ layer, ...ctx.notes, seconds });
    await opts.resume?.save(model, layer, inputs, report.layers, report.timings);
    opts.onLayer?.(layer + 1, model.layers.length);
  }
  for (const t of inputs) t.dispose();
}

/** Seconds per phase spent since `before` (a copy of the timings taken then); `layer` adds the wall time. */
function phaseSeconds(
  timings: Record<string, number>,
  before: Record<string, number>,
): Record<string, number> {
  return Object.fromEntries(Object.entries(timings).map(([phase, s]) => [phase, s - (before[phase] ?? 0)]));
}

/** Runs the layer over every calibration chunk with hooks; returns the outputs when asked. */
export async function runLayer(
  ctx: LayerContext,
  hooks: ForwardHooks,
  keepOutputs: boolean,
): Promise<Tensor[]> {
  const outputs: Tensor[] = [];
  for (let c = 0; c < ctx.inputs.length; c++) {
    const out = ctx.model.layerForward(ctx.layer, ctx.inputs[c], ctx.shapes[c], hooks);
    if (keepOutputs) outputs.push(out);
    else out.dispose();
  }
  return outputs;
}

/**
 * The full-precision pass before the steps, run only when something reads it: the input statistics
 * (for steps that read them) and the outputs (the next layer's inputs when propagating fp).
 */
async function captureIfNeeded(ctx: LayerContext): Promise<Tensor[]> {
  const keepOutputs = ctx.recipe.propagate === 'fp';
  const readsStats = ctx.recipe.steps.some((s) => STATS_READERS.has(s.method));
  if (!keepOutputs && !readsStats) return [];
  return timed(ctx.timings, 'capture', () => captureStats(ctx, keepOutputs));
}

/**
 * Whether residuals after the quantized attention half, made by the last step, give the next layer's
 * inputs: finishLayer changes no weight a step quantized, but installs activation quantizers.
 */
export function residualsPropagate(recipe: Recipe): boolean {
  return recipe.propagate === 'quantized' && !recipe.activations;
}

/** The quantized layer's outputs, the next layer's inputs: the MLP half alone when a step left the residuals. */
async function propagateQuantized(ctx: LayerContext): Promise<Tensor[]> {
  const residuals = ctx.attentionResiduals;
  if (!residuals) return runLayer(ctx, {}, true);
  ctx.attentionResiduals = undefined;
  return residuals.map((h1) => {
    const out = ctx.model.mlpResidual(ctx.layer, h1);
    h1.dispose();
    return out;
  });
}

/** Runs the full-precision layer, recording every linear's input statistics; returns its outputs when asked. */
async function captureStats(ctx: LayerContext, keepOutputs: boolean): Promise<Tensor[]> {
  const parts = new Map<LinearName, ColumnStats[]>();
  const rows = new Map<LinearName, number[]>();
  const pending: Promise<void>[] = [];
  const outputs = await runLayer(
    ctx,
    {
      linearInput: (_layer, name, x) => {
        pending.push(
          ctx.model.backend.columnStats(x).then((s) => {
            parts.set(name, [...(parts.get(name) ?? []), s]);
            rows.set(name, [...(rows.get(name) ?? []), x.shape[0]]);
          }),
        );
        return undefined;
      },
    },
    keepOutputs,
  );
  await Promise.all(pending);
  for (const [name, list] of parts) ctx.stats.set(name, mergeStats(list, rows.get(name) ?? []));
  return outputs;
}

function mergeStats(parts: ColumnStats[], rows: number[]): ColumnStats {
  const n = parts[0].absMax.length;
  const absMax = new Float32Array(n);
  const sum = new Float64Array(n);
  const total = rows.reduce((a, b) => a + b, 0);
  parts.forEach((p, i) => {
    for (let j = 0; j < n; j++) {
      if (p.absMax[j] > absMax[j]) absMax[j] = p.absMax[j];
      sum[j] += p.absMean[j] * rows[i];
    }
  });
  return { absMax, absMean: Float32Array.from(sum, (s) => s / total) };
}

/**
 * Static per-tensor activation scales: max |x| of each linear's input over the calibration set,
 * measured through the layer as transformed by the steps (smoothing), before weight rounding.
 */
async function staticScales(ctx: LayerContext): Promise<void> {
  const absMax = new Map<LinearName, number>();
  const pending: Promise<void>[] = [];
  await runLayer(
    ctx,
    {
      linearInput: (_layer, name, x) => {
        pending.push(
          ctx.model.backend.columnStats(x).then((s) => {
            const m = s.absMax.reduce((a, b) => Math.max(a, b), 0);
            absMax.set(name, Math.max(absMax.get(name) ?? 0, m));
          }),
        );
        return undefined;
      },
    },
    false,
  );
  await Promise.all(pending);
  for (const [name, m] of absMax) ctx.staticAbsMax.set(name, m);
}

/** Rounds the weights no step quantized and installs the activation quantizers. */
async function finishLayer(
  model: LlamaModel,
  layer: number,
  recipe: Recipe,
  salient: Map<LinearName, Int32Array>,
  staticAbsMax?: Map<LinearName, number>,
): Promise<void> {
  for (const name of recipe.targets) {
    const lin = model.layers[layer].linears[name];
    const weightSpec = weightSpecOf(model, recipe, layer, name);
    if (weightSpec && !lin.quantized) await roundToNearest(model, layer, name, weightSpec, salient.get(name));
    // a step that installed its own input quantizer (FlatQuant's transform and clip) keeps it
    if (recipe.activations && !lin.inputQuant?.transform) {
      const spec = activationSpec(recipe.activations.format, staticAbsMax?.get(name));
      lin.inputQuant = { spec, keep: keepMasks(model.backend, lin.weight.shape[1], salient.get(name)) };
    }
  }
}

function activationSpec(format: FormatSpec, absMax: number | undefined): FormatSpec {
  if (absMax === undefined || format.kind !== 'int') return format;
  const levels = 2 ** (format.bits - 1) - 1;
  return { ...format, staticScale: Math.fround(Math.max(absMax, 1e-5) / levels) };
}
