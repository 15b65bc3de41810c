/**
 * `llmq imatrix`: llama.cpp's importance matrix of a full-precision model, as llama-imatrix collects it
 * (mean x^2 per input channel of every linear over calibration text, inputs from the full-precision
 * layers), written as the GGUF file `llama-quantize --imatrix` reads. The pipeline's imatrix step does
 * the collecting (quant/imatrix.ts) with no weight format, so nothing is quantized.
 */
import fs from 'node:fs';
import { fail } from '../errors.ts';
import { LINEARS } from '../model/llama.ts';
import { writeCollectedImatrix } from '../quant/imatrix.ts';
import { loadModel } from '../quant/load.ts';
import type { Recipe } from '../quant/recipe.ts';
import { createBackend, type DeviceName } from '../tensor/index.ts';
import { onePositional, parse, printJson } from './args.ts';
import { CALIB_FLAGS, CALIB_HELP, calibFlags } from './calib-flags.ts';
import { Progress, phaseProgress } from './progress.ts';

export const IMATRIX_HELP = `llmq imatrix <model-dir> --out <file.gguf> [--force] ${CALIB_HELP} [--device cpu|webgpu|auto] [--json]
  llama.cpp's importance matrix of a full-precision model (llama-imatrix's statistic: mean x^2 per input
  channel of every linear over the calibration text; 128 x 512 tokens by default), as the GGUF file
  \`llama-quantize --imatrix\` reads. Recipes take such a file as steps: [{imatrix: {file: <file>}}].`;

const COLLECT: Recipe = {
  name: 'imatrix',
  description: "llama.cpp's importance matrix, collected without quantizing",
  steps: [{ method: 'imatrix' }],
  targets: [...LINEARS],
  calib: { samples: 128, seqLen: 512 },
  propagate: 'fp',
};

export async function imatrixCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('imatrix', argv, {
    out: { type: 'string' },
    force: { type: 'boolean', default: false },
    device: { type: 'string', default: 'cpu' },
    json: { type: 'boolean', default: false },
    ...CALIB_FLAGS,
  });
  const dir = onePositional('imatrix', positionals, 'model directory');
  if (!values.out) fail('imatrix: --out <file.gguf> is required');
  if (fs.existsSync(values.out) && !values.force)
    fail(`${values.out} already exists (pass --force to replace it)`);
  const backend = await createBackend(values.device as DeviceName);
  const layers = new Progress('imatrix', 'layers', values.json);
  const tokenizing = new Progress('calibration', 'tokens', values.json);
  const start = performance.now();
  const { model, calibration } = await loadModel(dir, backend, {
    recipe: COLLECT,
    calib: calibFlags(values),
    onLayer: (d, t) => layers.update(d, t),
    onProgress: phaseProgress(values.json),
    onCalibration: (d, t) => tokenizing.update(d, t),
  });
  const collected = writeCollectedImatrix(model, values.out, calibration?.source, { force: values.force });
  if (!collected) return fail(`imatrix: ${dir} gave no importance matrix (a quantized checkpoint?)`);
  const [dataset] = collected.datasets;
  const out = {
    out: values.out,
    entries: collected.entries.length,
    chunks: collected.chunks,
    chunk_size: collected.chunkSize,
    dataset,
    seconds: (performance.now() - start) / 1000,
  };
  if (values.json) return printJson(out);
  console.log(
    `${out.out}: ${out.entries} entries from ${out.chunks} x ${out.chunk_size} tokens of ${dataset} in ${out.seconds.toFixed(1)} s`,
  );
}
