/**
 * AWQ (Lin et al., 2024): activation-aware per-input-channel weight scaling, then a clipping search.
 * Defaults follow the authors' llm-awq code (read to learn them, reimplemented here):
 * - groups: input_layernorm -> q,k,v (loss on the attention block output); v_proj -> o_proj when
 *   the two weights have the same shape (not with GQA); post_attention_layernorm -> gate,up (loss
 *   on the MLP output); up_proj -> down_proj;
 * - statistic: per input channel mean |x| over all calibration tokens;
 * - grid: ratio r = i / grid for i = 0 .. grid-1; s = max(x_mean^r, 1e-4), s /= sqrt(max(s) min(s));
 *   loss = mean squared error of the inspected block's output, weights Q(W diag(s)), inputs x / s;
 *   every group searched on the original layer, then all scales folded (norm or previous linear's
 *   rows divided by s, the group's input columns multiplied by s);
 * - AutoAWQ's "duo" scaling as an option: s = x_mean^r / (w_mean^(1-r) + 1e-4);
 * - clip (not q/k): per output channel and weight group, max |w| shrunk by (1 - k/20), k = 0..9,
 *   error of the group's partial outputs on 512 tokens taken with a stride; best clamp kept.
 * With `withActivations` (AWQ for W4A4) the loss also quantizes the group's inputs (x / s) with the
 * recipe's activation format, so the search trades activation error against weight error.
 */
import { fail } from '../errors.ts';
import { QK } from '../formats/ggml.ts';
import { ggmlBlockLayout, isGgmlBlockType } from '../formats/ggml-codes.ts';
import type { FormatSpec } from '../formats/spec.ts';
import { type BatchShape, type LinearName, type LlamaModel, SHARED_INPUT } from '../model/llama.ts';
import type { Backend, Tensor } from '../tensor/tensor.ts';
import { type LayerContext, registerLayerStep, runLayer, timed } from './pipeline.ts';
import type { AwqStep } from './recipe.ts';
import { fakeQuantWeight, readOnce, searchRoundTrip, setWeight, weightSpecOf } from './weights.ts';

type Block = 'attention' | 'mlp' | 'o_proj' | 'down_proj';

interface ScaleGroup {
  /** the op whose output feeds the group: a norm, or a linear whose rows absorb 1/s */
  prev: 'inputNorm' | 'postNorm' | 'v_proj' | 'up_proj';
  linears: LinearName[];
  /** the block whose output the loss compares */
  inspect: Block;
}

const GROUPS: ScaleGroup[] = [
  { prev: 'inputNorm', linears: ['q_proj', 'k_proj', 'v_proj'], inspect: 'attention' },
  { prev: 'v_proj', linears: ['o_proj'], inspect: 'o_proj' },
  { prev: 'postNorm', linears: ['gate_proj', 'up_proj'], inspect: 'mlp' },
  { prev: 'up_proj', linears: ['down_proj'], inspect: 'down_proj' },
];

const CLIP_TOKENS = 512;
const CLIP_GRID = 20;
const CLIP_STEPS = 10;

/** Captured inputs of the four groups, chunk by chunk. */
type Captured = Map<LinearName, Tensor[]>;

async function captureInputs(ctx: LayerContext): Promise<Captured> {
  const wanted: LinearName[] = ['q_proj', 'o_proj', 'gate_proj', 'down_proj'];
  const captured: Captured = new Map(wanted.map((n) => [n, []]));
  const b = ctx.model.backend;
  await runLayer(
    ctx,
    {
      linearInput: (_l, name, x) => {
        captured.get(name)?.push(b.toF32(x));
        return undefined;
      },
    },
    false,
  );
  return captured;
}

function groupApplies(model: LlamaModel, group: ScaleGroup): boolean {
  if (group.prev !== 'v_proj') return true;
  const { numHeads, numKvHeads } = model.config;
  return numHeads === numKvHeads;
}

/** Runs the inspected block of `layer` on one chunk. */
function inspectBlock(model: LlamaModel, layer: number, block: Block, x: Tensor, shape: BatchShape): Tensor {
  if (block === 'attention') return model.attentionBlock(layer, x, shape);
  if (block === 'mlp') return model.mlpBlock(layer, x);
  return model.applyLinear(layer, block, x);
}

function candidateScales(xMean: Float32Array, wMean: Float32Array | undefined, ratio: number): Float32Array {
  const s = new Float32Array(xMean.length);
  for (let j = 0; j < s.length; j++) {
    const v = wMean ? xMean[j] ** ratio / (wMean[j] ** (1 - ratio) + 1e-4) : xMean[j] ** ratio;
    s[j] = Math.max(v, 1e-4);
  }
  let max = 0;
  let min = Number.POSITIVE_INFINITY;
  for (const v of s) {
    if (v > max) max = v;
    if (v < min) min = v;
  }
  const norm = Math.sqrt(max * min);
  for (let j = 0; j < s.length; j++) s[j] /= norm;
  return s;
}

/** AutoAWQ's w_mean: per input channel mean over the group's rows of |w| / (its weight group's max |w|). */
async function weightMean(b: Backend, weights: Tensor[], spec: FormatSpec): Promise<Float32Array> {
  const cols = weights[0].shape[1];
  // w_mean normalises NVFP4 weights per row; their 16-wide blocks bound only the clip search
  const group = spec.kind === 'nvfp4' ? cols : weightGroupSize(spec, cols);
  const sum = new Float64Array(cols);
  let rows = 0;
  for (const w of weights) {
    const v = await b.read(w);
    const r = w.shape[0];
    rows += r;
    for (let i = 0; i < r; i++)
      for (let g = 0; g < cols; g += group) {
        let m = 0;
        for (let j = g; j < g + group; j++) m = Math.max(m, Math.abs(v[i * cols + j]));
        for (let j = g; j < g + group; j++) sum[j] += Math.abs(v[i * cols + j]) / (m || 1);
      }
  }
  return Float32Array.from(sum, (s) => s / rows);
}

interface SearchResult {
  ratio: number;
  scales: Float32Array;
  losses: number[];
}

async function searchGroup(
  ctx: LayerContext,
  group: ScaleGroup,
  step: AwqStep,
  inputs: Tensor[],
  xMean: Float32Array,
): Promise<SearchResult> {
  const { model, layer } = ctx;
  const b = model.backend;
  const specs = group.linears.map((n) => weightSpecOf(model, ctx.recipe, layer, n));
  const lins = group.linears.map((n) => model.layers[layer].linears[n]);
  const original = lins.map((l) => l.weight);
  const savedQuant = lins.map((l) => l.inputQuant);
  const reference = inputs.map((x, c) => inspectBlock(model, layer, group.inspect, x, ctx.shapes[c]));
  const wMean = step.duo
    ? await weightMean(b, original, specs[0] ?? (ctx.recipe.weights as FormatSpec))
    : undefined;
  const losses: number[] = [];
  let best: SearchResult = { ratio: -1, scales: new Float32Array(0), losses };
  let bestLoss = Number.POSITIVE_INFINITY;
  try {
    for (let i = 0; i < step.grid; i++) {
      const ratio = i / step.grid;
      const s = candidateScales(xMean, wMean, ratio);
      const sT = b.upload(s, [s.length], 'f32');
      const invT = b.upload(
        s.map((v) => 1 / v),
        [s.length],
        'f32',
      );
      for (const [k, l] of lins.entries()) {
        const scaled = b.scaleColumns(original[k], sT);
        const spec = specs[k];
        l.weight = spec ? await fakeQuantWeight(b, scaled, spec) : scaled;
        if (spec) scaled.dispose();
        if (step.withActivations && ctx.recipe.activations)
          l.inputQuant = { spec: ctx.recipe.activations.format };
      }
      let loss = 0;
      let count = 0;
      for (let c = 0; c < inputs.length; c++) {
        const xs = b.scaleColumns(inputs[c], invT);
        const out = inspectBlock(model, layer, group.inspect, xs, ctx.shapes[c]);
        loss += await b.sumSquaredDiff(out, reference[c]);
        count += out.shape[0] * out.shape[1];
        xs.dispose();
        out.dispose();
      }
      for (const l of lins) l.weight.dispose();
      sT.dispose();
      invT.dispose();
      loss /= count;
      losses.push(loss);
      if (loss < bestLoss) {
        bestLoss = loss;
        best = { ratio, scales: s, losses };
      }
    }
  } finally {
    lins.forEach((l, k) => {
      l.weight = original[k];
      l.inputQuant = savedQuant[k];
    });
    for (const t of reference) t.dispose();
  }
  if (best.ratio < 0)
    fail(`awq: layer ${layer} ${group.linears.join('/')}: every scale candidate gave a non-finite loss`);
  return best;
}

/** Folds s: previous op's output divided by s, the group's input columns multiplied by s. */
async function applyScales(ctx: LayerContext, group: ScaleGroup, s: Float32Array): Promise<void> {
  const { model, layer } = ctx;
  const b = model.backend;
  const L = model.layers[layer];
  const sT = b.upload(s, [s.length], 'f32');
  const invT = b.upload(
    s.map((v) => 1 / v),
    [s.length],
    'f32',
  );
  if (group.prev === 'inputNorm' || group.prev === 'postNorm') {
    L[group.prev] = await divideVector(b, L[group.prev], s);
  } else {
    const prev = L.linears[group.prev];
    setWeight(model, layer, group.prev, await readOnce(b, b.scaleRows(prev.weight, invT)));
    if (prev.bias) prev.bias = await divideVector(b, prev.bias, s);
  }
  for (const name of group.linears)
    setWeight(model, layer, name, await readOnce(b, b.scaleColumns(L.linears[name].weight, sT)));
  sT.dispose();
  invT.dispose();
}

/** v / s elementwise for a 1-D tensor (norm weights, biases), as f32. */
async function divideVector(b: Backend, v: Tensor, s: Float32Array): Promise<Tensor> {
  const values = await b.read(v);
  v.dispose();
  return b.upload(
    values.map((x, j) => x / s[j]),
    [values.length],
    'f32',
  );
}

/** Every `stride`-th row of the captured chunks, about CLIP_TOKENS of them. */
function subsampleRows(b: Backend, chunks: Tensor[]): Tensor {
  const all = b.concatRows(chunks);
  const rows = all.shape[0];
  const stride = Math.max(1, Math.floor(rows / CLIP_TOKENS));
  const picked: Tensor[] = [];
  for (let r = 0; r < rows && picked.length < CLIP_TOKENS; r += stride)
    picked.push(b.sliceRows(all, r, r + 1));
  const out = b.concatRows(picked);
  for (const t of picked) t.dispose();
  all.dispose();
  return out;
}

function weightGroupSize(spec: FormatSpec, cols: number): number {
  if (spec.kind === 'int' && spec.granularity === 'group') return spec.group ?? cols;
  if (spec.kind === 'mx') return spec.block;
  if (spec.kind === 'nvfp4') return 16;
  if (spec.kind === 'ggml') return isGgmlBlockType(spec.type) ? ggmlBlockLayout(spec.type).group : QK;
  return cols;
}

/** Columns [start, start + n) of a 2-D tensor (through transposes). */
function columnSlice(b: Backend, xT: Tensor, start: number, n: number): Tensor {
  const part = b.sliceRows(xT, start, start + n);
  const out = b.transpose(part);
  part.dispose();
  return out;
}

/**
 * Clip search of one linear: per output channel and weight group, the shrink of max |w| whose
 * quantized partial outputs on the sampled tokens are closest to the original. Returns the
 * clamped weights (host, row-major) and the mean chosen shrink.
 */
async function clipLinear(
  b: Backend,
  w: Float32Array,
  rows: number,
  cols: number,
  x: Tensor,
  spec: FormatSpec,
): Promise<{ clamped: Float32Array; meanShrink: number }> {
  const group = weightGroupSize(spec, cols);
  const groups = cols / group;
  const absMax = new Float32Array(rows * groups);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < groups; g++) {
      let m = 0;
      for (let j = g * group; j < (g + 1) * group; j++) m = Math.max(m, Math.abs(w[r * cols + j]));
      absMax[r * groups + g] = m;
    }
  const bestErr = new Float64Array(rows * groups).fill(Number.POSITIVE_INFINITY);
  const bestShrink = new Float32Array(rows * groups);
  const xT = b.transpose(x);
  const tokens = x.shape[0];
  const xg = Array.from({ length: groups }, (_, g) => columnSlice(b, xT, g * group, group));
  const reference = await partialOutputs(b, xg, w, rows, cols, group);
  for (let k = 0; k < CLIP_STEPS; k++) {
    const shrink = 1 - k / CLIP_GRID;
    const clamped = clampGroups(w, rows, cols, group, absMax, shrink);
    const q = await searchRoundTrip(b, clamped, rows, cols, spec);
    const outs = await partialOutputs(b, xg, q, rows, cols, group);
    for (let g = 0; g < groups; g++) {
      const ref = reference[g];
      const cur = outs[g];
      for (let r = 0; r < rows; r++) {
        let e = 0;
        for (let t = 0; t < tokens; t++) e += (cur[t * rows + r] - ref[t * rows + r]) ** 2;
        const idx = r * groups + g;
        if (e < bestErr[idx]) {
          bestErr[idx] = e;
          bestShrink[idx] = shrink;
        }
      }
    }
  }
  for (const t of [xT, ...xg]) t.dispose();
  const clamped = new Float32Array(w.length);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < groups; g++) {
      const m = Math.fround(absMax[r * groups + g] * bestShrink[r * groups + g]);
      for (let j = g * group; j < (g + 1) * group; j++)
        clamped[r * cols + j] = Math.min(m, Math.max(-m, w[r * cols + j]));
    }
  return { clamped, meanShrink: bestShrink.reduce((a, v) => a + v, 0) / bestShrink.length };
}

function clampGroups(
  w: Float32Array,
  rows: number,
  cols: number,
  group: number,
  absMax: Float32Array,
  shrink: number,
): Float32Array {
  const out = new Float32Array(w.length);
  const groups = cols / group;
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < groups; g++) {
      const m = Math.fround(absMax[r * groups + g] * shrink);
      for (let j = g * group; j < (g + 1) * group; j++)
        out[r * cols + j] = Math.min(m, Math.max(-m, w[r * cols + j]));
    }
  return out;
}

/** For each weight group g: x[:, g] w[:, g]^T as [tokens, rows] on the host. */
async function partialOutputs(
  b: Backend,
  xg: Tensor[],
  w: Float32Array,
  rows: number,
  cols: number,
  group: number,
): Promise<Float32Array[]> {
  const wt = b.upload(w, [rows, cols], 'f32');
  const wT = b.transpose(wt);
  wt.dispose();
  const outs: Float32Array[] = [];
  for (let g = 0; g < xg.length; g++) {
    const wg = columnSlice(b, wT, g * group, group);
    const y = b.linear(xg[g], wg);
    outs.push(await b.read(y));
    y.dispose();
    wg.dispose();
  }
  wT.dispose();
  return outs;
}

async function clipLayer(ctx: LayerContext, captured: Captured): Promise<Record<string, number>> {
  const { model, layer } = ctx;
  const b = model.backend;
  const shrinks: Record<string, number> = {};
  const samples = new Map<LinearName, Tensor>();
  for (const name of ctx.recipe.targets) {
    if (name === 'q_proj' || name === 'k_proj') continue;
    const source = SHARED_INPUT[name];
    if (!samples.has(source)) samples.set(source, subsampleRows(b, captured.get(source) ?? []));
    const spec = weightSpecOf(model, ctx.recipe, layer, name);
    if (!spec) continue;
    const w = model.layers[layer].linears[name].weight;
    const [rows, cols] = w.shape;
    const { clamped, meanShrink } = await clipLinear(
      b,
      await b.read(w),
      rows,
      cols,
      samples.get(source) as Tensor,
      spec,
    );
    setWeight(model, layer, name, clamped);
    shrinks[name] = meanShrink;
  }
  for (const t of samples.values()) t.dispose();
  return shrinks;
}

async function awqLayer(ctx: LayerContext, step: AwqStep): Promise<void> {
  if (!ctx.recipe.weights) fail(`awq: recipe ${ctx.recipe.name} has no weight format`);
  const b = ctx.model.backend;
  const captured = await timed(ctx.timings, 'awq capture', () => captureInputs(ctx));
  const chosen: Record<string, { ratio: number; losses: number[]; scales: number[] }> = {};
  const found: [ScaleGroup, Float32Array][] = [];
  await timed(ctx.timings, 'awq search', async () => {
    for (const group of GROUPS) {
      if (!groupApplies(ctx.model, group) || !group.linears.every((n) => ctx.recipe.targets.includes(n)))
        continue;
      const inputs = captured.get(group.linears[0]) ?? [];
      const xMean = ctx.stats.get(group.linears[0])?.absMean;
      if (!xMean) fail(`awq: no activation statistics for layer ${ctx.layer} ${group.linears[0]}`);
      const r = await searchGroup(ctx, group, step, inputs, xMean);
      found.push([group, r.scales]);
      chosen[group.linears.join(',')] = { ratio: r.ratio, losses: r.losses, scales: Array.from(r.scales) };
    }
  });
  await timed(ctx.timings, 'awq apply', async () => {
    for (const [group, s] of found) {
      await applyScales(ctx, group, s);
      const inv = b.upload(
        s.map((v) => 1 / v),
        [s.length],
        'f32',
      );
      const list = captured.get(group.linears[0]) ?? [];
      captured.set(
        group.linears[0],
        list.map((x) => {
          const y = b.scaleColumns(x, inv);
          x.dispose();
          return y;
        }),
      );
    }
  });
  ctx.notes.awq = chosen;
  if (step.clip) ctx.notes.awqClip = await timed(ctx.timings, 'awq clip', () => clipLayer(ctx, captured));
  for (const list of captured.values()) for (const t of list) t.dispose();
}

registerLayerStep('awq', (ctx, step) => awqLayer(ctx, step as AwqStep), { readsStats: true });
