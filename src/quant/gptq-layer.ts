/**
 * GPTQ as a pipeline step, "true sequential" as the reference code's option: inside a layer the
 * linears are quantized in the order [q, k, v], [o], [gate, up], [down], and each group's Hessian
 * is measured on inputs that already pass through the quantized earlier groups. Each group's pass
 * runs only the part of the layer that feeds it (q/k/v: the input norm; o: attention; gate/up and
 * down: from the residual after attention, computed once after o is quantized), not the whole layer.
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
import { addMs, type LayerContext, registerLayerStep, timed } from './pipeline.ts';
import type { GptqStep } from './recipe.ts';
import { readOnce, setQuantizedWeight } from './weights.ts';

const SEQUENTIAL: LinearName[][] = [
  ['q_proj', 'k_proj', 'v_proj'],
  ['o_proj'],
  ['gate_proj', 'up_proj'],
  ['down_proj'],
];

/**
 * What one true-sequential group's Hessian pass computes from one calibration chunk: the group's
 * input, through only the part of the layer that feeds it (the quantized earlier groups included).
 * The MLP groups start from the residual after attention, computed once after o_proj is quantized.
 */
type GroupInput = (ctx: LayerContext, chunk: number, residual: () => Tensor) => Tensor;

const GROUP_INPUTS: Record<LinearName, GroupInput> = {
  q_proj: ({ model, layer, inputs }, c) => model.attentionNorm(layer, inputs[c]),
  k_proj: ({ model, layer, inputs }, c) => model.attentionNorm(layer, inputs[c]),
  v_proj: ({ model, layer, inputs }, c) => model.attentionNorm(layer, inputs[c]),
  o_proj: ({ model, layer, inputs, shapes }, c) => {
    const x1 = model.attentionNorm(layer, inputs[c]);
    const att = model.attentionMix(layer, x1, shapes[c]);
    x1.dispose();
    return att;
  },
  gate_proj: ({ model, layer }, _c, residual) => model.mlpNorm(layer, residual()),
  up_proj: ({ model, layer }, _c, residual) => model.mlpNorm(layer, residual()),
  down_proj: ({ model, layer }, _c, residual) => {
    const x2 = model.mlpNorm(layer, residual());
    const act = model.mlpActivation(layer, x2);
    x2.dispose();
    return act;
  },
};

/** H = 2/N sum over calibration tokens of x x^T for the input of `name`, float64 [cols, cols]. */
async function hessian(ctx: LayerContext, name: LinearName, residuals: Residuals): Promise<Float64Array> {
  const b = ctx.model.backend;
  const cols = ctx.model.layers[ctx.layer].linears[name].weight.shape[1];
  const acc = new HessianAccumulator(cols);
  const pending: Promise<void>[] = [];
  for (let c = 0; c < ctx.inputs.length; c++) {
    const normed = GROUP_INPUTS[name](ctx, c, () => residuals.get(c));
    const x = ctx.model.linearInput(ctx.layer, name, normed);
    const tokens = x.shape[0];
    const xT = b.transpose(x);
    if (x !== normed) x.dispose();
    normed.dispose();
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

/** Per chunk, the residual stream after the (already quantized) attention half, made on first use. */
class Residuals {
  private readonly chunks: Tensor[] = [];
  constructor(private readonly ctx: LayerContext) {}

  get(c: number): Tensor {
    const { model, layer, inputs, shapes } = this.ctx;
    this.chunks[c] ??= model.attentionResidual(layer, inputs[c], shapes[c]);
    return this.chunks[c];
  }

  dispose(): void {
    for (const t of this.chunks) t?.dispose();
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
  const residuals = new Residuals(ctx);
  try {
    for (const group of SEQUENTIAL) await gptqGroup(ctx, step, group, residuals, losses);
  } finally {
    residuals.dispose();
  }
  ctx.notes.gptqLoss = losses;
}

async function gptqGroup(
  ctx: LayerContext,
  step: GptqStep,
  group: LinearName[],
  residuals: Residuals,
  losses: Record<string, { gptq: number; rtn: number }>,
): Promise<void> {
  const { model, layer, recipe } = ctx;
  const spec = recipe.weights as FormatSpec;
  const b = model.backend;
  const names = group.filter((n) => recipe.targets.includes(n));
  if (!names.length) return;
  const H = await timed(ctx.timings, 'gptq hessian', () => hessian(ctx, names[0], residuals));
  const cols = model.layers[layer].linears[names[0]].weight.shape[1];
  // the linears of a group read the same input: one inverse for all of them
  const factor = await timed(ctx.timings, 'gptq factor', async () => factorHessian(H, cols, step));
  for (const name of names) {
    const w = await b.read(model.layers[layer].linears[name].weight);
    const rows = model.layers[layer].linears[name].weight.shape[0];
    const result = gptq(w, rows, cols, H, spec, step, factor);
    addMs(ctx.timings, 'gptq factor', result.timings.inverse);
    addMs(ctx.timings, 'gptq columns', result.timings.columns);
    addMs(ctx.timings, 'gptq updates', result.timings.updates);
    const rtn = await readOnce(b, b.fakeQuant(model.layers[layer].linears[name].weight, spec));
    losses[name] = await timed(ctx.timings, 'gptq loss report', () => ({
      gptq: reconstructionLoss(w, result.dequant, rows, cols, H),
      rtn: reconstructionLoss(w, rtn, rows, cols, H),
    }));
    setQuantizedWeight(model, layer, name, { encoded: result.encoded, gIdx: result.gIdx });
  }
}

registerLayerStep('gptq', (ctx, step) => gptqLayer(ctx, step as GptqStep));
