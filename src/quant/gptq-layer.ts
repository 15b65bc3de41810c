/**
 * GPTQ as a pipeline step, "true sequential" as the reference code's option: inside a layer the
 * linears are quantized in the order [q, k, v], [o], [gate, up], [down], and each group's Hessian
 * is measured on inputs that already pass through the quantized earlier groups.
 *
 * H = 2/N sum x x^T: each calibration chunk's X^T X is one backend matmul (f32, at most 4096
 * tokens per chunk: CPU WASM / WebGPU), the chunks are summed on the host in float64.
 * Each linear also reports its calibration reconstruction loss tr((W - Q) H (W - Q)^T) / 2 next to
 * RTN's at the same format, so "GPTQ beats RTN on what it minimises" is visible per linear.
 */
import type { FormatSpec } from '../formats/spec.ts';
import type { LinearName } from '../model/llama.ts';
import { factorHessian, gptq } from './gptq.ts';
import { addMatmulNT, HessianAccumulator } from './hessian.ts';
import { addMs, type LayerContext, registerLayerStep, runLayer, timed } from './pipeline.ts';
import type { GptqStep } from './recipe.ts';
import { readOnce, setQuantizedWeight } from './weights.ts';

const SEQUENTIAL: LinearName[][] = [
  ['q_proj', 'k_proj', 'v_proj'],
  ['o_proj'],
  ['gate_proj', 'up_proj'],
  ['down_proj'],
];

/** H = 2/N sum over calibration tokens of x x^T for the input of `name`, float64 [cols, cols]. */
async function hessian(ctx: LayerContext, name: LinearName): Promise<Float64Array> {
  const b = ctx.model.backend;
  const cols = ctx.model.layers[ctx.layer].linears[name].weight.shape[1];
  const acc = new HessianAccumulator(cols);
  const pending: Promise<void>[] = [];
  await runLayer(
    ctx,
    {
      linearInput: (_l, n, x) => {
        if (n !== name) return undefined;
        const xT = b.transpose(x);
        const xtx = b.linear(xT, xT);
        xT.dispose();
        const tokens = x.shape[0];
        pending.push(
          b.read(xtx).then((gram) => {
            xtx.dispose();
            acc.addGram(gram, tokens);
          }),
        );
        return undefined;
      },
    },
    false,
  );
  await Promise.all(pending);
  return acc.finish();
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
  const { model, layer, recipe } = ctx;
  const spec = recipe.weights as FormatSpec;
  const b = model.backend;
  const losses: Record<string, { gptq: number; rtn: number }> = {};
  for (const group of SEQUENTIAL) {
    const names = group.filter((n) => recipe.targets.includes(n));
    if (!names.length) continue;
    const H = await timed(ctx.timings, 'gptq hessian', () => hessian(ctx, names[0]));
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
  ctx.notes.gptqLoss = losses;
}

registerLayerStep('gptq', (ctx, step) => gptqLayer(ctx, step as GptqStep));
