/**
 * GPTQ as the pipeline runs it on the CPU backend, per decoder layer of a real model: wall time and its
 * split into the calibration passes (the four true-sequential Hessian passes with their X^T X, each
 * through only the part of the layer that feeds its group; propagation through the quantized layer),
 * the factorization (Cholesky + triangular inverse, once per group of linears sharing an input), the
 * column loop and the lazy block updates.
 *   node --import ./src/loader.mjs bench/gptq-pipeline.ts [--model ../shared/models/llama-small] [--samples 32]
 *     [--seqlen 512] [--recipe gptq-w4g128] [--layers N] [--no-write]
 * --layers N quantizes only the first N decoder layers (each layer's work is the same).
 */
import { parseArgs } from 'node:util';
import { loadCalibration } from '../src/calib/data.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { publish, type Row, table } from './report.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: '../shared/models/llama-small' },
    calib: { type: 'string', default: '../shared/data/text/brown.txt' },
    samples: { type: 'string', default: '32' },
    seqlen: { type: 'string', default: '512' },
    recipe: { type: 'string', default: 'gptq-w4g128' },
    layers: { type: 'string' },
    'no-write': { type: 'boolean', default: false },
  },
});
const samples = Number(values.samples);
const seqLen = Number(values.seqlen);
const recipe = resolveRecipe(values.recipe);
const calib = await loadCalibration(loadTokenizer(values.model), {
  file: values.calib,
  samples,
  seqLen,
  seed: 0,
  sampler: recipe.calib.sampler,
});
const model = loadLlama(values.model, new CpuBackend());
if (values.layers) model.layers.length = Math.min(model.layers.length, Number(values.layers));
const report = await quantizeModel(model, recipe, calib, {
  onLayer: (done, total) => console.error(`layer ${done}/${total}`),
});
model.dispose();

const PHASES = {
  capture: ['capture'],
  'hessian passes': ['gptq hessian'],
  factor: ['gptq factor'],
  'column loop': ['gptq columns'],
  'block updates': ['gptq updates'],
  'write + propagate': ['quantize', 'propagate'],
  'loss report': ['gptq loss report'],
} as const;

const rows: Row[] = report.layers.map((notes) => {
  const s = notes.seconds as Record<string, number>;
  const total = s.layer;
  const row: Row = { layer: notes.layer as number, 'total s': total };
  let named = 0;
  for (const [name, keys] of Object.entries(PHASES)) {
    row[`${name} s`] = keys.reduce((a, k) => a + (s[k] ?? 0), 0);
    named += row[`${name} s`] as number;
  }
  row['other s'] = total - named;
  row['factor + updates %'] = (100 * ((s['gptq factor'] ?? 0) + (s['gptq updates'] ?? 0))) / total;
  return row;
});
const sum = (key: string) => rows.reduce((a, r) => a + (r[key] as number), 0);
const totals: Row = { layer: 'all' };
for (const key of Object.keys(rows[0]).slice(1, -1)) totals[key] = sum(key);
totals['factor + updates %'] = (100 * (sum('factor s') + sum('block updates s'))) / sum('total s');
rows.push(totals);
console.log(table(rows));

if (!values['no-write'])
  publish(
    `GPTQ per layer in the pipeline, CPU backend (${values.recipe}, calibration ${samples} x ${seqLen})`,
    `node --import ./src/loader.mjs bench/gptq-pipeline.ts --model ${values.model} --samples ${samples} --seqlen ${seqLen} --recipe ${values.recipe}${values.layers ? ` --layers ${values.layers}` : ''}`,
    table(rows),
    'Seconds per decoder layer from the pipeline\'s own phase timers. "hessian passes": per true-sequential ' +
      'group (q/k/v, o, gate/up, down), the part of the layer that feeds it (input norm; attention, kept ' +
      "for o; the residual after attention, made once, for the MLP groups) and X^T X of the group's input " +
      '(f32 WASM GEMM per chunk, summed in float64); "capture": the full-precision pass, run only when a ' +
      'step reads its statistics; "factor": dead columns, damping, Cholesky and triangular inverse (float64, ' +
      'once per group) plus per-linear setup; "column loop": quantizing each column and updating the rest ' +
      'of its block of 128; "block updates": the lazy W[:, end:] -= Err Hinv[block, end:] products; ' +
      '"write + propagate": storing the codes and the next layer\'s inputs (the MLP half from the kept ' +
      'residual); "loss report": the per-linear reconstruction losses of GPTQ and RTN (tr(D H D^T), a ' +
      'report, not part of GPTQ); "other": reading weights back, RTN\'s fake quantization for that report.',
  );
