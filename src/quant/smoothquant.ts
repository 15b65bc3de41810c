/**
 * SmoothQuant (Xiao et al., 2023): per input channel s_j = max|X_j|^a / max|W_j|^(1-a), activations
 * divided by s (folded into the preceding RMSNorm), weight columns multiplied by s, so activation
 * outliers migrate into the weights. As the authors' code: only input_layernorm -> q,k,v and
 * post_attention_layernorm -> gate,up are smoothed; max|W_j| is over all linears of the group;
 * s is floored at 1e-5; max|X_j| comes from the full-precision calibration pass.
 */
import { fail } from '../errors.ts';
import type { LinearName, LlamaModel } from '../model/llama.ts';
import type { Backend, Tensor } from '../tensor/tensor.ts';
import { type LayerContext, registerLayerStep, timed } from './pipeline.ts';
import type { SmoothQuantStep } from './recipe.ts';
import { readOnce, setWeight } from './weights.ts';

export interface SmoothGroup {
  norm: 'inputNorm' | 'postNorm';
  linears: LinearName[];
}

export const SMOOTH_GROUPS: SmoothGroup[] = [
  { norm: 'inputNorm', linears: ['q_proj', 'k_proj', 'v_proj'] },
  { norm: 'postNorm', linears: ['gate_proj', 'up_proj'] },
];

/** Per input channel max |w| over the rows of every given weight. */
async function weightColumnMax(b: Backend, weights: Tensor[]): Promise<Float32Array> {
  const cols = weights[0].shape[1];
  const max = new Float32Array(cols);
  for (const w of weights) {
    const v = await b.read(w);
    for (let i = 0; i < v.length; i++) {
      const a = Math.abs(v[i]);
      const j = i % cols;
      if (a > max[j]) max[j] = a;
    }
  }
  return max;
}

export function smoothingScales(actMax: Float32Array, weightMax: Float32Array, alpha: number): Float32Array {
  return actMax.map((a, j) => Math.max(a ** alpha / weightMax[j] ** (1 - alpha), 1e-5));
}

/** Divides the group's norm by s and multiplies its linears' input columns by s. */
export async function foldSmoothing(
  model: LlamaModel,
  layer: number,
  group: SmoothGroup,
  s: Float32Array,
): Promise<void> {
  const b = model.backend;
  const L = model.layers[layer];
  const norm = await b.read(L[group.norm]);
  L[group.norm].dispose();
  L[group.norm] = b.upload(
    norm.map((v, j) => v / s[j]),
    [norm.length],
    'f32',
  );
  const sT = b.upload(s, [s.length], 'f32');
  for (const name of group.linears) {
    setWeight(model, layer, name, await readOnce(b, b.scaleColumns(L.linears[name].weight, sT)));
  }
  sT.dispose();
}

/** Smooths one layer with activation maxima `actMax` (per group, keyed by its first linear). */
export async function smoothLayer(
  model: LlamaModel,
  layer: number,
  actMax: (name: LinearName) => Float32Array | undefined,
  alpha: number,
): Promise<void> {
  for (const group of SMOOTH_GROUPS) {
    const act = actMax(group.linears[0]);
    if (!act) fail(`smoothquant: no activation statistics for layer ${layer} ${group.linears[0]}`);
    const weights = group.linears.map((n) => model.layers[layer].linears[n].weight);
    const s = smoothingScales(act, await weightColumnMax(model.backend, weights), alpha);
    await foldSmoothing(model, layer, group, s);
  }
}

registerLayerStep(
  'smoothquant',
  (ctx: LayerContext, step) =>
    timed(ctx.timings, 'smoothquant', () =>
      smoothLayer(ctx.model, ctx.layer, (n) => ctx.stats.get(n)?.absMax, (step as SmoothQuantStep).alpha),
    ),
  { readsStats: true },
);
