/**
 * CPU wall time of `llmq quantize` on llama-small and how it splits by phase:
 * RTN W4 g128 (quantize + save) and AWQ W4 g128 (capture, search, clip, propagate).
 *   node --import ./src/loader.mjs bench/quantize.ts [--samples N] [--no-write]
 * AWQ's default calibration is 128 x 512; on a 2-core CPU that takes hours, so the bench uses
 * --samples (default 16) x 512 and reports seconds per 1k calibration tokens to extrapolate.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadCalibration } from '../src/calib/data.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { saveQuantized } from '../src/quant/checkpoint.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { publish, type Row, table } from './report.ts';

const { values } = parseArgs({
  options: { samples: { type: 'string', default: '16' }, 'no-write': { type: 'boolean' } },
});
const samples = Number(values.samples);
const dir = new URL('../../shared/models/llama-small', import.meta.url).pathname;
const cpu = new CpuBackend();
const rows: Row[] = [];
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-bench-'));

const rtnModel = loadLlama(dir, cpu);
const rtn = await quantizeModel(rtnModel, resolveRecipe('rtn-w4g128'), undefined);
const saveStart = performance.now();
const manifest = {
  tool: 'llmq',
  tool_version: 'bench',
  created: '',
  source_model: dir,
  source_sha256: '',
  timings: {},
};
await saveQuantized(rtnModel, resolveRecipe('rtn-w4g128'), manifest, path.join(out, 'rtn'), false);
const save = (performance.now() - saveStart) / 1000;
rows.push({
  recipe: 'rtn-w4g128',
  calibration: 'none',
  'total s': rtn.seconds + save,
  split: `quantize ${rtn.seconds.toFixed(2)} s, save ${save.toFixed(2)} s`,
});

const recipe = resolveRecipe('awq-w4g128');
const calib = await loadCalibration(loadTokenizer(dir), {
  file: new URL('../../shared/data/text/brown.txt', import.meta.url).pathname,
  samples,
  seqLen: 512,
  seed: 0,
});
const awq = await quantizeModel(loadLlama(dir, cpu), recipe, calib);
const split = Object.entries(awq.timings)
  .map(([k, v]) => `${k} ${v.toFixed(1)} s`)
  .join(', ');
rows.push({
  recipe: 'awq-w4g128',
  calibration: `${samples} x 512`,
  'total s': awq.seconds,
  split: `${split}; ${((awq.seconds / (samples * 512)) * 1000).toFixed(2)} s per 1k tokens`,
});
fs.rmSync(out, { recursive: true });

publish(
  'Quantization wall time on CPU (llama-small)',
  `node --import ./src/loader.mjs bench/quantize.ts --samples ${samples}`,
  `${table(rows)}\n\nLoad average at the end: ${os.loadavg()[0].toFixed(1)}.`,
  'AWQ time is the scale search (20 ratios x 4 groups, each a forward of the inspected block over all calibration ' +
    `tokens): it scales linearly with calibration tokens, so 128 x 512 costs ${128 / samples}x the row above. On the H100 through WebGPU ` +
    'the full 128 x 512 AWQ run of RESULTS.md takes about 70-95 s.',
);
