/**
 * Writes the token ids llmq calibrates and evaluates on, for the PyTorch ports in this folder:
 *   node --import ./src/loader.mjs bench/reference/dump-ids.ts --model <dir> --calib brown.txt --eval wiki.test.raw \
 *     --out <dir> [--samples 128] [--calib-seqlen 2048] [--seed 0] [--sampler pool|gptq] [--windows 16] [--seqlen 512]
 * Out: calib.bin (samples x calib-seqlen int32), eval.bin (windows x seqlen int32), meta.json.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { type CalibSampler, loadCalibration } from '../../src/calib/data.ts';
import { readEvalText } from '../../src/eval/eval-text.ts';
import { loadTokenizer } from '../../src/io/tokenizer.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    calib: { type: 'string' },
    eval: { type: 'string' },
    out: { type: 'string' },
    samples: { type: 'string', default: '128' },
    'calib-seqlen': { type: 'string', default: '2048' },
    seed: { type: 'string', default: '0' },
    sampler: { type: 'string', default: 'pool' },
    windows: { type: 'string', default: '16' },
    seqlen: { type: 'string', default: '512' },
  },
});
for (const flag of ['model', 'calib', 'eval', 'out'] as const)
  if (!values[flag]) {
    console.error(`dump-ids: --${flag} is required`);
    process.exit(2);
  }
const tokenizer = loadTokenizer(values.model as string);
const calib = await loadCalibration(tokenizer, {
  file: values.calib,
  samples: Number(values.samples),
  seqLen: Number(values['calib-seqlen']),
  seed: Number(values.seed),
  sampler: values.sampler as CalibSampler,
});
const windows = Number(values.windows);
const seqLen = Number(values.seqlen);
const evalIds = tokenizer.encode(readEvalText(values.eval as string)).subarray(0, windows * seqLen);
const out = values.out as string;
fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, 'calib.bin'), calib.ids);
fs.writeFileSync(path.join(out, 'eval.bin'), evalIds);
const meta = {
  calib_samples: calib.samples,
  calib_seqlen: calib.seqLen,
  calib_seed: Number(values.seed),
  calib_sampler: calib.sampler,
  calib_sha256: calib.sha256,
  eval_windows: windows,
  eval_seqlen: seqLen,
};
fs.writeFileSync(path.join(out, 'meta.json'), JSON.stringify(meta));
console.log(
  `${out}: calibration ${calib.samples} x ${calib.seqLen} (${calib.sha256.slice(0, 8)}), eval ${windows} x ${seqLen}`,
);
