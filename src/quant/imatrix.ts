/**
 * llama.cpp's importance matrix (llama-imatrix + llama-quantize --imatrix) as a recipe step: for each
 * linear, the mean of x^2 per input channel over the calibration tokens reaching it, which llama.cpp's
 * Q5_0 / Q4_K / Q6_K quantizers use to weight each value's rounding error (ggml-quants.c's *_impl
 * functions). The step quantizes the layer's linears itself, in each linear's llama.cpp type
 * (formats/llama-mix.ts), so the checkpoint holds exactly the blocks llama-quantize would write with
 * the same importance values; linears in a type without an importance path (Q4_0, Q8_0) are left to
 * the pipeline's plain rounding.
 */
import { isBlockFormat } from '../formats/ggml-codes.ts';
import { encodeAsync } from '../formats/index.ts';
import { type LinearName, SHARED_INPUT } from '../model/llama.ts';
import { type LayerContext, registerLayerStep, runLayer, timed } from './pipeline.ts';
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

  /** mean x^2 per channel, as llama-imatrix stores it (sum / count), in float32 */
  mean(name: LinearName): Float32Array | undefined {
    const sum = this.sums.get(name);
    const n = this.tokens.get(name) ?? 0;
    return sum && Float32Array.from(sum, (s) => s / n);
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

async function imatrixLayer(ctx: LayerContext): Promise<void> {
  const { model, layer, recipe } = ctx;
  const sums = await timed(ctx.timings, 'imatrix capture', () => captureSquares(ctx));
  const used: Record<string, string> = {};
  for (const name of recipe.targets) {
    const spec = recipe.weights && weightSpecOf(model, recipe.weights, layer, name);
    const importance = sums.mean(SHARED_INPUT[name]);
    if (!spec || !isBlockFormat(spec) || !importance) continue;
    const w = model.layers[layer].linears[name].weight;
    const [rows, cols] = w.shape;
    const values = await model.backend.read(w);
    const encoded = await encodeAsync(values, rows, cols, spec, importance);
    setQuantizedWeight(model, layer, name, { encoded });
    used[name] = spec.type;
  }
  ctx.notes.imatrix = used;
}

registerLayerStep('imatrix', (ctx) => imatrixLayer(ctx));
