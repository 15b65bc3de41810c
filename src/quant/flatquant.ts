/**
 * FlatQuant (Sun et al., 2024) as a layer step: for each group of linears sharing an input (q/k/v,
 * o, gate/up, down) a learned transform D (L ⊗ R) with clip factors (flatquant-train.ts). Then:
 * D is folded into the op before the group (input/post-attention RMSNorm, up_proj rows for
 * down_proj's input), the weights are stored in the transformed basis, clipped per row and rounded,
 * and every linear's input quantizer first applies x -> x (L ⊗ R) online (Backend.kron) and uses
 * the learned activation clip.
 *
 * Where llmq differs from FlatQuant's code (its defaults otherwise: 15 epochs, AdamW lr 5e-3 with
 * 10x for clip factors, cosine schedule, batches of 4 samples, SmoothQuant-style scaling init with
 * alpha 0.3, clip logits at 4, W4 per-channel and A4 per-token symmetric):
 * - the loss is per group (mean squared error of the group's outputs), not of the whole decoder
 *   layer's output, so no gradient flows through attention or the MLP non-linearity; every group is
 *   trained on the full-precision layer's inputs;
 * - the factors are trained directly with their inverses computed in float64 (FlatQuant's
 *   --direct_inv option) rather than FlatQuant's default U diag(s) V^T parametrization;
 * - o_proj's transform (heads ⊗ head_dim) is applied online whole; FlatQuant folds the head_dim
 *   factor into v_proj;
 * - KV4 (`flatquant-w4a4kv4`, recipe key kv) quantizes keys and values without FlatQuant's learned
 *   K/Q transform, and training does not see it; gradients reach the clip factors through the scale
 *   only (not through max |x|).
 */

import { encode } from '../formats/index.ts';
import type { LinearName, LlamaModel } from '../model/llama.ts';
import { concatArrays } from '../tensor/dtype.ts';
import type { Backend, Tensor } from '../tensor/tensor.ts';
import {
  inverseTranspose,
  kroneckerSizes,
  kronRows,
  type LearnedTransform,
  trainTransform,
} from './flatquant-train.ts';
import { type LayerContext, registerLayerStep, runLayer, timed } from './pipeline.ts';
import type { FlatQuantStep } from './recipe.ts';
import { foldSmoothing } from './smoothquant.ts';
import { readOnce, setQuantizedWeight, setWeight } from './weights.ts';

interface TransformGroup {
  linears: LinearName[];
  /** where the per-channel scaling is folded; undefined: no scaling (o_proj, as FlatQuant) */
  fold?: 'inputNorm' | 'postNorm' | 'up_proj';
}

export const FLATQUANT_GROUPS: TransformGroup[] = [
  { linears: ['q_proj', 'k_proj', 'v_proj'], fold: 'inputNorm' },
  { linears: ['o_proj'] },
  { linears: ['gate_proj', 'up_proj'], fold: 'postNorm' },
  { linears: ['down_proj'], fold: 'up_proj' },
];

/** The group's input over all calibration chunks, as host rows [rows, n]. */
async function captureInputs(
  ctx: LayerContext,
  name: LinearName,
): Promise<{ x: Float32Array; rows: number }> {
  const pending: Promise<Float32Array>[] = [];
  await runLayer(
    ctx,
    {
      linearInput: (_layer, seen, x) => {
        if (seen === name) pending.push(ctx.model.backend.read(x));
        return undefined;
      },
    },
    false,
  );
  const x = concatF32(await Promise.all(pending));
  const n = ctx.model.layers[ctx.layer].linears[name].weight.shape[1];
  return { x, rows: x.length / n };
}

async function stackedWeights(model: LlamaModel, layer: number, names: LinearName[]): Promise<Float32Array> {
  return concatF32(
    await Promise.all(names.map((n) => model.backend.read(model.layers[layer].linears[n].weight))),
  );
}

const concatF32 = (parts: Float32Array[]) => concatArrays(parts, (n) => new Float32Array(n));

/** FlatQuant's SmoothQuant-style scaling init: max|W_j|^(1-a) / max|X_j|^a, floored at 1e-5. */
function initialScaling(w: Float32Array, n: number, xMax: Float32Array, alpha: number): Float32Array {
  const wMax = new Float32Array(n);
  for (let e = 0; e < w.length; e++) wMax[e % n] = Math.max(wMax[e % n], Math.abs(w[e]));
  return wMax.map((m, j) => Math.max(m ** (1 - alpha) / Math.max(xMax[j], 1e-5) ** alpha, 1e-5));
}

function factorSizes(model: LlamaModel, group: TransformGroup, n: number): [number, number] {
  const { numHeads, headDim } = model.config;
  return group.linears[0] === 'o_proj' && numHeads * headDim === n ? [numHeads, headDim] : kroneckerSizes(n);
}

async function trainGroup(
  ctx: LayerContext,
  step: FlatQuantStep,
  group: TransformGroup,
  index: number,
  groups: number,
): Promise<LearnedTransform> {
  const { model, layer, recipe } = ctx;
  const first = group.linears[0];
  const n = model.layers[layer].linears[first].weight.shape[1];
  const { x, rows } = await captureInputs(ctx, first);
  const w = await stackedWeights(model, layer, group.linears);
  const xMax = ctx.stats.get(first)?.absMax;
  const [n1, n2] = factorSizes(model, group, n);
  const bitsOf = (f: typeof recipe.weights) => (f?.kind === 'int' ? f.bits : 16);
  return trainTransform(
    model.backend,
    {
      x,
      rows,
      w,
      m: w.length / n,
      n1,
      n2,
      weightBits: bitsOf(recipe.weights),
      actBits: bitsOf(recipe.activations?.format),
      diag: group.fold && xMax ? initialScaling(w, n, xMax, step.diagAlpha) : undefined,
    },
    {
      epochs: step.epochs,
      lr: step.lr,
      batchRows: step.batchSamples * ctx.shapes[0].seqLen,
      seed: step.seed + layer * FLATQUANT_GROUPS.length + index,
      clipInit: 4,
      // optimizer steps over the whole model: every layer and group takes as many as this one
      onStep: (done, total) =>
        ctx.onProgress?.(
          'flatquant',
          (layer * groups + index) * total + done,
          model.layers.length * groups * total,
        ),
    },
  );
}

/** Folds the scaling d (inputs become x * d) into the op before the group; the weights' columns / d. */
async function foldScaling(
  model: LlamaModel,
  layer: number,
  group: TransformGroup,
  d: Float32Array,
): Promise<void> {
  if (group.fold === 'inputNorm' || group.fold === 'postNorm') {
    await foldSmoothing(
      model,
      layer,
      { norm: group.fold, linears: group.linears },
      d.map((v) => 1 / v),
    );
    return;
  }
  const b = model.backend;
  const L = model.layers[layer].linears;
  const dT = b.upload(d, [d.length], 'f32');
  const inv = b.upload(
    d.map((v) => 1 / v),
    [d.length],
    'f32',
  );
  setWeight(model, layer, 'up_proj', await readOnce(b, b.scaleRows(L.up_proj.weight, dT)));
  setWeight(model, layer, 'down_proj', await readOnce(b, b.scaleColumns(L.down_proj.weight, inv)));
  dT.dispose();
  inv.dispose();
}

/** Stores a linear's weight in the transformed basis, each row clipped to its learned range, rounded. */
async function quantizeTransformed(
  ctx: LayerContext,
  name: LinearName,
  t: LearnedTransform,
  sizes: [number, number],
  clips: Float32Array,
): Promise<void> {
  const { model, layer, recipe } = ctx;
  const [n1, n2] = sizes;
  const [rows, cols] = model.layers[layer].linears[name].weight.shape;
  const w = await model.backend.read(model.layers[layer].linears[name].weight);
  const leftInvT = inverseTranspose(t.left, n1);
  const rightInvT = inverseTranspose(t.right, n2);
  const { out } = await kronRows(model.backend, w, rows, leftInvT, n1, rightInvT, n2);
  for (let r = 0; r < rows; r++) {
    const row = out.subarray(r * cols, (r + 1) * cols);
    let amax = 0;
    for (const v of row) amax = Math.max(amax, Math.abs(v));
    const lim = Math.fround(clips[r] * amax);
    for (let j = 0; j < cols; j++) row[j] = Math.min(Math.max(row[j], -lim), lim);
  }
  if (!recipe.weights) throw new Error('flatquant needs a weight format');
  setQuantizedWeight(model, layer, name, { encoded: encode(out, rows, cols, recipe.weights) });
}

async function installGroup(ctx: LayerContext, group: TransformGroup, t: LearnedTransform): Promise<void> {
  const { model, layer, recipe } = ctx;
  const b: Backend = model.backend;
  if (t.diag) await foldScaling(model, layer, group, t.diag);
  const n = model.layers[layer].linears[group.linears[0]].weight.shape[1];
  const sizes = factorSizes(model, group, n);
  const left: Tensor = b.upload(Float32Array.from(t.left), [sizes[0], sizes[0]], 'f32');
  const right: Tensor = b.upload(Float32Array.from(t.right), [sizes[1], sizes[1]], 'f32');
  let row = 0;
  for (const name of group.linears) {
    const rows = model.layers[layer].linears[name].weight.shape[0];
    await quantizeTransformed(ctx, name, t, sizes, t.weightClips.subarray(row, row + rows));
    row += rows;
    const format = recipe.activations?.format;
    if (format?.kind === 'int')
      model.layers[layer].linears[name].inputQuant = {
        spec: { ...format, clip: Math.fround(t.actClip) },
        transform: { left, right },
      };
  }
}

export async function flatQuantLayer(ctx: LayerContext, step: FlatQuantStep): Promise<void> {
  const groups = FLATQUANT_GROUPS.filter((g) => g.linears.every((n) => ctx.recipe.targets.includes(n)));
  const learned: LearnedTransform[] = [];
  for (const [i, group] of groups.entries())
    learned.push(await trainGroup(ctx, step, group, i, groups.length));
  for (const [i, group] of groups.entries()) await installGroup(ctx, group, learned[i]);
  ctx.notes.flatquant = Object.fromEntries(
    groups.map((g, i) => [
      g.linears.join('/'),
      {
        lossFirstEpoch: learned[i].lossFirst,
        lossLastEpoch: learned[i].lossLast,
        actClip: learned[i].actClip,
      },
    ]),
  );
}

registerLayerStep(
  'flatquant',
  (ctx, step) => timed(ctx.timings, 'flatquant', () => flatQuantLayer(ctx, step as FlatQuantStep)),
  { readsStats: true },
);
