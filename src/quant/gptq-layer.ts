/**
 * GPTQ as a pipeline step, "true sequential" as the reference code's option: inside a layer the
 * linears are quantized in the order [q, k, v], [o], [gate, up], [down], and each group's Hessian
 * is measured on inputs that already pass through the quantized earlier groups. Each group's pass
 * runs only the part of the layer that feeds it (q/k/v: the input norm; o: attention, kept; gate/up
 * and down: from the residual after attention, made once from the kept attention after o is
 * quantized), not the whole layer; the next layer's inputs then need only the MLP half.
 *
 * H = 2/N sum x x^T: each calibration chunk's X^T X is one backend matmul (f32, at most 4096
 * tokens per chunk: CPU WASM / WebGPU), the chunks are summed on the host in float64.
 * Each linear also reports its calibration reconstruction loss tr((W - Q) H (W - Q)^T) / 2 next to
 * RTN's at the same format, so "GPTQ beats RTN on what it minimises" is visible per linear.
 */
import type { FormatSpec } from '../formats/spec.ts';
import type { LinearName } from '../model/llama.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { factorHessian, gptq } from './gptq.ts';
import { addMatmulNT, HessianAccumulator } from './hessian.ts';
import { addMs, type LayerContext, registerLayerStep, residualsPropagate, timed } from './pipeline.ts';
import type { GptqStep } from './recipe.ts';
import { fakeQuantWeight, readOnce, setQuantizedWeight, weightSpecOf } from './weights.ts';

const SEQUENTIAL: LinearName[][] = [
  ['q_proj', 'k_proj', 'v_proj'],
  ['o_proj'],
  ['gate_proj', 'up_proj'],
  ['down_proj'],
];

/**
 * What one true-sequential group's Hessian pass computes from one calibration chunk: the group's
 * input, through only the part of the layer that feeds it (the quantized earlier groups included).
 * `kept`: the tensor belongs to the stages (shared with a later pass), not to the caller.
 */
type GroupInput = (ctx: LayerContext, chunk: number, stages: Stages) => { x: Tensor; kept: boolean };

const attentionNorm: GroupInput = ({ model, layer, inputs }, c) => ({
  x: model.attentionNorm(layer, inputs[c]),
  kept: false,
});
const mlpNorm: GroupInput = ({ model, layer }, c, stages) => ({
  x: model.mlpNorm(layer, stages.residual(c)),
  kept: false,
});

const GROUP_INPUTS: Record<LinearName, GroupInput> = {
  q_proj: attentionNorm,
  k_proj: attentionNorm,
  v_proj: attentionNorm,
  o_proj: (_ctx, c, stages) => ({ x: stages.attention(c), kept: true }),
  gate_proj: mlpNorm,
  up_proj: mlpNorm,
  down_proj: (ctx, c, stages) => {
    const x2 = mlpNorm(ctx, c, stages).x;
    const act = ctx.model.mlpActivation(ctx.layer, x2);
    x2.dispose();
    return { x: act, kept: false };
  },
};

/** H = 2/N sum over calibration tokens of x x^T for the input of `name`, float64 [cols, cols]. */
async function hessian(ctx: LayerContext, name: LinearName, stages: Stages): Promise<Float64Array> {
  const b = ctx.model.backend;
  const cols = ctx.model.layers[ctx.layer].linears[name].weight.shape[1];
  const acc = new HessianAccumulator(cols);
  const pending: Promise<void>[] = [];
  for (let c = 0; c < ctx.inputs.length; c++) {
    const input = GROUP_INPUTS[name](ctx, c, stages);
    const x = ctx.model.linearInput(ctx.layer, name, input.x);
    const tokens = x.shape[0];
    const xT = b.transpose(x);
    if (x !== input.x) x.dispose();
    if (!input.kept) input.x.dispose();
    const xtx = b.linear(xT, xT);
    xT.dispose();
    pending.push(
      b.read(xtx).then((gram) => {
        xtx.dispose();
        acc.addGram(gram, tokens);
      }),
    );
  }
  await Promise.all(pending);
  return acc.finish();
}

/**
 * Per calibration chunk, what later passes share: the attention mix (o_proj's input, made once q/k/v
 * are quantized) and from it, once o_proj is quantized, the residual stream after attention.
 */
class Stages {
  private readonly mixes: (Tensor | undefined)[] = [];
  private residuals: Tensor[] = [];
  constructor(private readonly ctx: LayerContext) {}

  attention(c: number): Tensor {
    const { model, layer, inputs, shapes } = this.ctx;
    if (!this.mixes[c]) {
      const x1 = model.attentionNorm(layer, inputs[c]);
      this.mixes[c] = model.attentionMix(layer, x1, shapes[c]);
      x1.dispose();
    }
    return this.mixes[c];
  }

  residual(c: number): Tensor {
    const { model, layer, inputs } = this.ctx;
    if (!this.residuals[c]) {
      const att = this.attention(c);
      const o = model.applyLinear(layer, 'o_proj', att);
      this.residuals[c] = model.backend.add(inputs[c], o);
      o.dispose();
      att.dispose();
      this.mixes[c] = undefined;
    }
    return this.residuals[c];
  }

  /** Every chunk's residual, made if need be; the caller owns them from now on. */
  takeResiduals(): Tensor[] {
    const all = this.ctx.inputs.map((_, c) => this.residual(c));
    this.residuals = [];
    return all;
  }

  dispose(): void {
    for (const t of [...this.mixes, ...this.residuals]) t?.dispose();
  }
}

/** Rows of D = W - Q multiplied by H at once in reconstructionLoss. */
const LOSS_ROWS = 64;

/** tr(D H D^T) / 2 for D = W - Q (rows x cols): sum over rows of d^T H d, as blocked D H products. */
export function reconstructionLoss(
  w: Float32Array,
  q: Float32Array,
  rows: number,
  cols: number,
  H: Float64Array,
): number {
  const d = new Float64Array(LOSS_ROWS * cols);
  const dh = new Float64Array(LOSS_ROWS * cols);
  let total = 0;
  for (let r0 = 0; r0 < rows; r0 += LOSS_ROWS) {
    const n = Math.min(LOSS_ROWS, rows - r0) * cols;
    for (let k = 0; k < n; k++) d[k] = w[r0 * cols + k] - q[r0 * cols + k];
    dh.fill(0, 0, n);
    // H is symmetric, so row j of H is column j: dh = D H
    addMatmulNT(1, dh, 0, cols, d, 0, cols, H, 0, cols, n / cols, cols, cols);
    for (let k = 0; k < n; k++) total += dh[k] * d[k];
  }
  return total / 2;
}

async function gptqLayer(ctx: LayerContext, step: GptqStep): Promise<void> {
  const losses: Record<string, { gptq: number; rtn: number }> = {};
  const stages = new Stages(ctx);
  try {
    for (const group of SEQUENTIAL) await gptqGroup(ctx, step, group, stages, losses);
    // with GPTQ the last step, the quantized attention half is final: propagation runs only the MLP half
    if (ctx.recipe.steps.at(-1) === step && residualsPropagate(ctx.recipe))
      ctx.attentionResiduals = stages.takeResiduals();
  } finally {
    stages.dispose();
  }
  ctx.notes.gptqLoss = losses;
}

async function gptqGroup(
  ctx: LayerContext,
  step: GptqStep,
  group: LinearName[],
  stages: Stages,
  losses: Record<string, { gptq: number; rtn: number }>,
): Promise<void> {
  const { model, layer, recipe } = ctx;
  const b = model.backend;
  // llama.cpp mixes give each linear its own type; one whose rows fit no block stays in full precision
  const specs = new Map<LinearName, FormatSpec>();
  for (const name of group) {
    const spec = recipe.targets.includes(name) && weightSpecOf(model, recipe, layer, name);
    if (spec) specs.set(name, spec);
  }
  const names = [...specs.keys()];
  if (!names.length) return;
  const H = await timed(ctx.timings, 'gptq hessian', () => hessian(ctx, names[0], stages));
  const cols = model.layers[layer].linears[names[0]].weight.shape[1];
  // the linears of a group read the same input: one inverse for all of them
  const factor = await timed(ctx.timings, 'gptq factor', async () => factorHessian(H, cols, step));
  for (const [name, spec] of specs) {
    const weight = model.layers[layer].linears[name].weight;
    const w = await b.read(weight);
    const rows = weight.shape[0];
    const result = gptq(w, rows, cols, H, spec, step, factor);
    addMs(ctx.timings, 'gptq factor', result.timings.inverse);
    addMs(ctx.timings, 'gptq columns', result.timings.columns);
    addMs(ctx.timings, 'gptq updates', result.timings.updates);
    const rtn = await readOnce(b, await fakeQuantWeight(b, weight, spec));
    losses[name] = await timed(ctx.timings, 'gptq loss report', () => ({
      gptq: reconstructionLoss(w, result.dequant, rows, cols, H),
      rtn: reconstructionLoss(w, rtn, rows, cols, H),
    }));
    setQuantizedWeight(model, layer, name, { encoded: result.encoded, gIdx: result.gIdx });
  }
}

registerLayerStep('gptq', (ctx, step) => gptqLayer(ctx, step as GptqStep));
