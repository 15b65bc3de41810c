/**
 * llama.cpp's importance matrix (llama-imatrix + llama-quantize --imatrix) as a recipe step: for each
 * linear, the mean of x^2 per input channel over the calibration tokens reaching it, which llama.cpp's
 * quantizers use to weight each value's rounding error (ggml-quants.c's *_impl functions). The step
 * quantizes the layer's linears itself, in each linear's llama.cpp type (formats/llama-mix.ts), so the
 * checkpoint holds exactly the blocks llama-quantize would write with the same importance values;
 * linears in Q8_0, which has no importance path, are left to the pipeline's plain rounding. With an
 * imatrix llama-quantize's Q4_0 / Q5_0 file types put ffn_down of the first eighth of the layers in
 * Q4_1 / Q5_1 (the mixes q4_0_mix / q5_0_mix; `q4_0` weights keep every linear in Q4_0), and its
 * IQ4_NL / IQ4_XS keep them in their type instead of Q5_K. The collected sums
 * go beside the checkpoint as imatrix.gguf, the file llama-quantize --imatrix reads. With `file`, the
 * importance comes from a llama-imatrix file instead (GGUF or legacy .dat, io/imatrix-file.ts) and no
 * calibration runs; a linear it has no entry for is rounded without one, as llama-quantize does (but
 * q2_k_s, whose Q2_K linears llama-quantize refuses to write without one).
 */

import { fail } from '../errors.ts';
import { encodeAsync, takesImportance } from '../formats/index.ts';
import type { FormatSpec } from '../formats/spec.ts';
import { LINEAR_GGUF } from '../io/gguf-format.ts';
import { type Imatrix, type ImatrixSums, readImatrix, writeImatrix } from '../io/imatrix-file.ts';
import { type LinearName, type LlamaModel, SHARED_INPUT } from '../model/llama.ts';
import { type LayerContext, registerLayerStep, runLayer, timed } from './pipeline.ts';
import type { ImatrixStep } from './recipe.ts';
import { setQuantizedWeight, weightSpecOf } from './weights.ts';

/** Per input channel sum of x^2 (float64) and the token count, for each distinct linear input. */
class SquareSums {
  readonly sums = new Map<LinearName, Float64Array>();
  readonly tokens = new Map<LinearName, number>();

  add(name: LinearName, x: Float32Array, cols: number): void {
    let sum = this.sums.get(name);
    if (!sum) this.sums.set(name, (sum = new Float64Array(cols)));
    for (let i = 0; i < x.length; i++) sum[i % cols] += x[i] * x[i];
    this.tokens.set(name, (this.tokens.get(name) ?? 0) + x.length / cols);
  }

  /**
   * mean x^2 per channel as llama-quantize reads it from the imatrix file beside the checkpoint: the
   * float32 sum divided by the count in float32, so that file gives llama-quantize these blocks
   */
  mean(name: LinearName): Float32Array | undefined {
    const sum = this.sums.get(name);
    const n = this.tokens.get(name) ?? 0;
    return sum && Float32Array.from(sum, (s) => Math.fround(Math.fround(s) / n));
  }
}

async function captureSquares(ctx: LayerContext): Promise<SquareSums> {
  const sums = new SquareSums();
  const wanted = new Set(ctx.recipe.targets.map((n) => SHARED_INPUT[n]));
  const pending: Promise<void>[] = [];
  const b = ctx.model.backend;
  await runLayer(
    ctx,
    {
      linearInput: (_l, name, x) => {
        if (!wanted.has(name)) return undefined;
        const cols = x.shape[x.shape.length - 1];
        const copy = b.toF32(x);
        pending.push(
          b.read(copy).then((v) => {
            copy.dispose();
            sums.add(name, v, cols);
          }),
        );
        return undefined;
      },
    },
    false,
  );
  await Promise.all(pending);
  return sums;
}

const FILES = new WeakMap<ImatrixStep, Imatrix>();

/** The importance matrix a model's quantization collected, layer by layer, as llama-imatrix records it. */
interface Collected {
  entries: ImatrixSums[];
  layers: Set<number>;
  chunks: number;
  chunkSize: number;
}
const COLLECTED = new WeakMap<LlamaModel, Collected>();

function collect(ctx: LayerContext, sums: SquareSums): void {
  const { model, layer } = ctx;
  const chunks = ctx.shapes.reduce((n, s) => n + s.batch, 0);
  let c = COLLECTED.get(model);
  if (!c)
    COLLECTED.set(
      model,
      (c = { entries: [], layers: new Set(), chunks, chunkSize: ctx.shapes[0]?.seqLen ?? 0 }),
    );
  c.layers.add(layer);
  for (const name of ctx.recipe.targets) {
    const input = SHARED_INPUT[name];
    const s = sums.sums.get(input);
    if (s)
      c.entries.push({
        name: `blk.${layer}.${LINEAR_GGUF[name]}.weight`,
        sums: Float32Array.from(s),
        count: sums.tokens.get(input) ?? 0,
      });
  }
}

/**
 * Writes the importance matrix the imatrix step collected over every layer of the model as a
 * llama-imatrix GGUF file, `dataset` naming the calibration text; returns what it wrote, or undefined
 * (nothing written) when the step took a file or did not see every layer (a resumed run).
 */
export function writeCollectedImatrix(
  model: LlamaModel,
  file: string,
  dataset: unknown,
  opts: { force?: boolean } = {},
): (Omit<Collected, 'layers'> & { datasets: string[] }) | undefined {
  const c = COLLECTED.get(model);
  if (!c || c.layers.size !== model.layers.length) return undefined;
  const written = { ...c, datasets: [String(dataset ?? 'calibration')] };
  writeImatrix(file, c.entries, written, opts);
  return written;
}

/** The importance of a layer's linears: from the step's llama-imatrix file, else captured here. */
async function importanceOf(
  ctx: LayerContext,
  step: ImatrixStep,
): Promise<(name: LinearName) => Float32Array | undefined> {
  if (!step.file) {
    const sums = await timed(ctx.timings, 'imatrix capture', () => captureSquares(ctx));
    collect(ctx, sums);
    return (name) => sums.mean(SHARED_INPUT[name]);
  }
  const file = step.file;
  let imatrix = FILES.get(step);
  if (!imatrix) FILES.set(step, (imatrix = readImatrix(file)));
  const entries = imatrix.importance;
  return (name) => {
    const tensor = `blk.${ctx.layer}.${LINEAR_GGUF[name]}.weight`;
    const importance = entries.get(tensor);
    const cols = ctx.model.layers[ctx.layer].linears[name].weight.shape[1];
    if (importance && importance.length !== cols)
      fail(`${file}: ${tensor} has ${importance.length} importance values, the model's rows have ${cols}`);
    return importance;
  };
}

/** llama-quantize's Q2_K_S refuses its Q2_K tensors without an importance matrix. */
function needsImportance(weights: FormatSpec | undefined, spec: FormatSpec): boolean {
  return (
    weights?.kind === 'ggml' && weights.type === 'q2_k_s' && spec.kind === 'ggml' && spec.type === 'q2_k'
  );
}

async function imatrixLayer(ctx: LayerContext, step: ImatrixStep): Promise<void> {
  const { model, layer, recipe } = ctx;
  const importanceFor = await importanceOf(ctx, step);
  const used: Record<string, string> = {};
  for (const name of recipe.targets) {
    const spec = weightSpecOf(model, recipe, layer, name);
    // a linear the file has no entry for is rounded without one, as llama-quantize does
    const importance = importanceFor(name);
    if (!importance && spec && needsImportance(recipe.weights, spec))
      fail(
        `${step.file}: no entry for blk.${layer}.${LINEAR_GGUF[name]}.weight, whose Q2_K blocks llama-quantize's Q2_K_S only writes with an importance matrix`,
      );
    if (!spec || !takesImportance(spec) || !importance) continue;
    const w = model.layers[layer].linears[name].weight;
    const [rows, cols] = w.shape;
    const values = await model.backend.read(w);
    const encoded = await encodeAsync(values, rows, cols, spec, importance);
    setQuantizedWeight(model, layer, name, { encoded });
    used[name] = spec.type;
  }
  ctx.notes.imatrix = used;
}

registerLayerStep('imatrix', (ctx, step) => imatrixLayer(ctx, step as ImatrixStep));
