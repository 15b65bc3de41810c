/**
 * Mixed precision (AWQ paper, Table 1): the p% input channels of each linear with the largest
 * calibration activation magnitude (mean |x|) stay in full precision, in the weights (their
 * columns are stored unquantized) and in the activations (left out of the input quantizer).
 */
import { type LayerContext, registerLayerStep } from './pipeline.ts';
import type { MixedStep } from './recipe.ts';

/** Indices of the `count` largest values, ascending by index. */
export function topChannels(magnitude: Float32Array, count: number): Int32Array {
  const order = Array.from(magnitude.keys()).sort((a, b) => magnitude[b] - magnitude[a] || a - b);
  return Int32Array.from(order.slice(0, count)).sort();
}

function pickSalient(ctx: LayerContext, step: MixedStep): void {
  const counts: Record<string, number> = {};
  for (const name of ctx.recipe.targets) {
    const mean = ctx.stats.get(name)?.absMean;
    if (!mean) continue;
    const count = Math.round((step.salientPercent / 100) * mean.length);
    if (count > 0) ctx.salient.set(name, topChannels(mean, count));
    counts[name] = count;
  }
  ctx.notes.salientChannels = counts;
}

registerLayerStep('mixed', async (ctx, step) => pickSalient(ctx, step as MixedStep), {
  readsStats: true,
});
