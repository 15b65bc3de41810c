/**
 * The quantization results of RESULTS.md: perplexity of each recipe on a model, with the
 * calibration and evaluation settings the issues name. Meant for the GPU machine (WebGPU):
 *   node bench/results.ts --set issue4 --model <dir> --calib brown.txt --eval wiki.test.raw \
 *     [--device webgpu] [--out dir] [--dump-awq dir] [--quick] [--seed S] [--sampler pool|gptq] [--kl]
 *     [--flatquant-calib SAMPLESxSEQLEN] [--flatquant-epochs E] [--host-search]
 * Writes <out>/results-<set>-<model>.json and .md; --dump-awq writes the calibration/evaluation
 * ids for bench/reference/awq_reference.py; --quick shrinks every setting (smoke test); --kl adds each
 * row's KL divergence from the full-precision model (mean nats per token, same top token);
 * --host-search runs every K-quant round trip on the host (the baseline of the WebGPU search kernel).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { type CalibSampler, loadCalibration } from '../src/calib/data.ts';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { type Recipe, recipeNeedsCalibration, resolveRecipe } from '../src/quant/recipe.ts';
import { linearBitsPerWeight } from '../src/quant/size.ts';
import { createBackend, type DeviceName } from '../src/tensor/index.ts';

interface Job {
  label: string;
  /** built-in name, or a recipe object (written to a temp file and resolved like a user's file) */
  recipe?: string | Record<string, unknown>;
  calib?: { samples: number; seqLen: number };
}

const AWQ_CALIB = { samples: 128, seqLen: 512 };
const GPTQ_CALIB = { samples: 128, seqLen: 2048 };
const W4A8_MX = { weights: 'mxint4-128', activations: 'mxint8-128' };

const W4A4_ROW = { weights: 'int4-row-sym', activations: 'int4-row-sym' };

/** FlatQuant's calibration: --flatquant-calib and --flatquant-epochs shrink it for small machines. */
function flatQuantJob(base: 'flatquant-w4a4' | 'flatquant-w4a4kv4'): Job {
  const [samples, seqLen] = String(values['flatquant-calib']).split('x').map(Number);
  const epochs = Number(values['flatquant-epochs']);
  return {
    label: `FlatQuant ${base === 'flatquant-w4a4' ? 'W4A4' : 'W4A4KV4'} (${values.quick ? '2 x 256' : `${samples} x ${seqLen}`} calibration, ${epochs} epochs)`,
    recipe: { base, steps: [{ flatquant: { epochs } }] },
    calib: { samples, seqLen },
  };
}

const SETS: Record<string, () => Job[]> = {
  // llama.cpp's own block formats, RTN, AWQ and GPTQ (what `export --to gguf-q4_0` then writes unchanged)
  ggml: () => [
    { label: 'fp' },
    { label: 'RTN Q4_0', recipe: 'rtn-q4_0' },
    { label: 'AWQ Q4_0', recipe: 'awq-q4_0', calib: AWQ_CALIB },
    { label: 'GPTQ Q4_0', recipe: 'gptq-q4_0', calib: GPTQ_CALIB },
    { label: 'RTN Q8_0', recipe: 'rtn-q8_0' },
    { label: 'RTN Q4_K_M (= llama-quantize)', recipe: 'rtn-q4_k_m' },
    { label: 'AWQ Q4_K_M', recipe: 'awq-q4_k_m', calib: AWQ_CALIB },
    { label: 'imatrix Q4_K_M', recipe: 'imatrix-q4_k_m', calib: AWQ_CALIB },
    {
      label: 'AWQ + imatrix Q4_K_M',
      recipe: { name: 'awq-imatrix-q4_k_m', weights: 'q4_k_m', steps: ['awq', 'imatrix'] },
      calib: AWQ_CALIB,
    },
    { label: 'GPTQ Q4_K_M', recipe: 'gptq-q4_k_m', calib: GPTQ_CALIB },
    { label: 'RTN Q3_K_M (= llama-quantize)', recipe: 'rtn-q3_k_m' },
    { label: 'AWQ Q3_K_M', recipe: 'awq-q3_k_m', calib: AWQ_CALIB },
    {
      label: 'imatrix Q3_K_M',
      recipe: { name: 'imatrix-q3_k_m', weights: 'q3_k_m', steps: ['imatrix'] },
      calib: AWQ_CALIB,
    },
    {
      label: 'GPTQ Q3_K_M',
      recipe: { name: 'gptq-q3_k_m', weights: 'q3_k_m', steps: ['gptq'] },
      calib: GPTQ_CALIB,
    },
    { label: 'RTN Q2_K (= llama-quantize)', recipe: { name: 'rtn-q2_k', weights: 'q2_k_mix' } },
    { label: 'imatrix Q2_K_S (= llama-quantize --imatrix)', recipe: 'imatrix-q2_k_s', calib: AWQ_CALIB },
    {
      label: 'GPTQ Q2_K',
      recipe: { name: 'gptq-q2_k', weights: 'q2_k_mix', steps: ['gptq'] },
      calib: GPTQ_CALIB,
    },
    ...(['q4_k_m', 'q3_k_m', 'q2_k_mix'] as const).map((weights) => ({
      label: `GPTQ ${weights === 'q2_k_mix' ? 'Q2_K' : weights.toUpperCase()} (importance: diag H)`,
      recipe: { name: `gptq-imp-${weights}`, weights, steps: [{ gptq: { importance: true } }] },
      calib: GPTQ_CALIB,
    })),
    { label: 'RTN Q5_0 (every linear)', recipe: { name: 'rtn-q5_0', weights: 'q5_0' } },
    { label: 'RTN Q5_1 (every linear)', recipe: { name: 'rtn-q5_1', weights: 'q5_1' } },
    { label: 'RTN Q4_K_S (= llama-quantize)', recipe: { name: 'rtn-q4_k_s', weights: 'q4_k_s' } },
    { label: 'RTN Q5_K_M (= llama-quantize)', recipe: 'rtn-q5_k_m' },
    { label: 'AWQ Q5_K_M', recipe: 'awq-q5_k_m', calib: AWQ_CALIB },
    {
      label: 'imatrix Q5_K_M',
      recipe: { name: 'imatrix-q5_k_m', weights: 'q5_k_m', steps: ['imatrix'] },
      calib: AWQ_CALIB,
    },
    { label: 'RTN W4 g128 (for comparison)', recipe: 'rtn-w4g128' },
    { label: 'AWQ W4 g128 (for comparison)', recipe: 'awq-w4g128', calib: AWQ_CALIB },
  ],
  // llama.cpp's 4-bit non-linear IQ4_XS / IQ4_NL and Q4_0 / Q4_1 beside Q4_K_M, each as llama-quantize
  // writes it (with and without an importance matrix) and with AWQ / GPTQ
  iq4: () => [
    { label: 'fp' },
    { label: 'RTN Q4_K_M (= llama-quantize)', recipe: 'rtn-q4_k_m' },
    { label: 'imatrix Q4_K_M (= llama-quantize --imatrix)', recipe: 'imatrix-q4_k_m', calib: AWQ_CALIB },
    { label: 'RTN IQ4_XS (= llama-quantize)', recipe: 'rtn-iq4_xs' },
    { label: 'imatrix IQ4_XS (= llama-quantize --imatrix)', recipe: 'imatrix-iq4_xs', calib: AWQ_CALIB },
    {
      label: 'AWQ IQ4_XS',
      recipe: { name: 'awq-iq4_xs', weights: 'iq4_xs_mix', steps: ['awq'] },
      calib: AWQ_CALIB,
    },
    {
      label: 'GPTQ IQ4_XS',
      recipe: { name: 'gptq-iq4_xs', weights: 'iq4_xs_mix', steps: ['gptq'] },
      calib: GPTQ_CALIB,
    },
    {
      label: 'GPTQ IQ4_XS (importance: diag H)',
      recipe: { name: 'gptq-imp-iq4_xs', weights: 'iq4_xs_mix', steps: [{ gptq: { importance: true } }] },
      calib: GPTQ_CALIB,
    },
    { label: 'RTN IQ4_NL (= llama-quantize)', recipe: { name: 'rtn-iq4_nl', weights: 'iq4_nl_mix' } },
    {
      label: 'imatrix IQ4_NL (= llama-quantize --imatrix)',
      recipe: { name: 'imatrix-iq4_nl', weights: 'iq4_nl_mix', steps: ['imatrix'] },
      calib: AWQ_CALIB,
    },
    { label: 'RTN Q4_0', recipe: 'rtn-q4_0' },
    { label: 'imatrix Q4_0 (= llama-quantize --imatrix)', recipe: 'imatrix-q4_0', calib: AWQ_CALIB },
    { label: 'RTN Q4_1 (every linear)', recipe: { name: 'rtn-q4_1', weights: 'q4_1' } },
    {
      label: 'imatrix Q4_1 (every linear)',
      recipe: { name: 'imatrix-q4_1', weights: 'q4_1', steps: ['imatrix'] },
      calib: AWQ_CALIB,
    },
  ],
  // llama.cpp's 3-bit lattice types (IQ3_S, IQ3_XXS in the IQ3_S / IQ3_M / IQ3_XS file types) beside Q3_K
  iq3: () => [
    { label: 'fp' },
    { label: 'RTN Q3_K_S (= llama-quantize)', recipe: { name: 'rtn-q3_k_s', weights: 'q3_k_s' } },
    {
      label: 'imatrix Q3_K_S (= llama-quantize --imatrix)',
      recipe: { name: 'imatrix-q3_k_s', weights: 'q3_k_s', steps: ['imatrix'] },
      calib: AWQ_CALIB,
    },
    { label: 'RTN Q3_K_M (= llama-quantize)', recipe: 'rtn-q3_k_m' },
    {
      label: 'imatrix Q3_K_M (= llama-quantize --imatrix)',
      recipe: { name: 'imatrix-q3_k_m', weights: 'q3_k_m', steps: ['imatrix'] },
      calib: AWQ_CALIB,
    },
    { label: 'imatrix IQ3_XS (= llama-quantize --imatrix)', recipe: 'imatrix-iq3_xs', calib: AWQ_CALIB },
    { label: 'RTN IQ3_S (= llama-quantize)', recipe: { name: 'rtn-iq3_s', weights: 'iq3_s_mix' } },
    {
      label: 'imatrix IQ3_S (= llama-quantize --imatrix)',
      recipe: { name: 'imatrix-iq3_s', weights: 'iq3_s_mix', steps: ['imatrix'] },
      calib: AWQ_CALIB,
    },
    { label: 'RTN IQ3_M (= llama-quantize)', recipe: 'rtn-iq3_m' },
    { label: 'imatrix IQ3_M (= llama-quantize --imatrix)', recipe: 'imatrix-iq3_m', calib: AWQ_CALIB },
    { label: 'AWQ IQ3_M', recipe: { name: 'awq-iq3_m', weights: 'iq3_m', steps: ['awq'] }, calib: AWQ_CALIB },
    {
      label: 'AWQ + imatrix IQ3_M',
      recipe: { name: 'awq-imatrix-iq3_m', weights: 'iq3_m', steps: ['awq', 'imatrix'] },
      calib: AWQ_CALIB,
    },
    { label: 'imatrix IQ3_XXS (= llama-quantize --imatrix)', recipe: 'imatrix-iq3_xxs', calib: AWQ_CALIB },
    { label: 'imatrix IQ2_M (= llama-quantize --imatrix)', recipe: 'imatrix-iq2_m', calib: AWQ_CALIB },
    { label: 'imatrix IQ2_S (= llama-quantize --imatrix)', recipe: 'imatrix-iq2_s', calib: AWQ_CALIB },
    { label: 'imatrix IQ2_XS (= llama-quantize --imatrix)', recipe: 'imatrix-iq2_xs', calib: AWQ_CALIB },
    { label: 'imatrix IQ2_XXS (= llama-quantize --imatrix)', recipe: 'imatrix-iq2_xxs', calib: AWQ_CALIB },
    { label: 'imatrix IQ1_S (= llama-quantize --imatrix)', recipe: 'imatrix-iq1_s', calib: AWQ_CALIB },
    { label: 'imatrix IQ1_M (= llama-quantize --imatrix)', recipe: 'imatrix-iq1_m', calib: AWQ_CALIB },
    {
      label: 'AWQ + imatrix IQ1_M',
      recipe: { name: 'awq-imatrix-iq1_m', weights: 'iq1_m_mix', steps: ['awq', 'imatrix'] },
      calib: AWQ_CALIB,
    },
    {
      label: 'AWQ + imatrix IQ2_M',
      recipe: { name: 'awq-imatrix-iq2_m', weights: 'iq2_m', steps: ['awq', 'imatrix'] },
      calib: AWQ_CALIB,
    },
    {
      label: 'AWQ + imatrix IQ2_XXS',
      recipe: { name: 'awq-imatrix-iq2_xxs', weights: 'iq2_xxs_mix', steps: ['awq', 'imatrix'] },
      calib: AWQ_CALIB,
    },
    { label: 'RTN W3 g64 (for comparison)', recipe: { name: 'rtn-w3g64', weights: 'int3-g64' } },
    { label: 'RTN W2 g64 (for comparison)', recipe: { name: 'rtn-w2g64', weights: 'int2-g64' } },
  ],
  issue4: () => [
    { label: 'fp' },
    { label: 'RTN W4 g128', recipe: 'rtn-w4g128' },
    { label: 'AWQ W4 g128', recipe: 'awq-w4g128', calib: AWQ_CALIB },
    { label: 'SmoothQuant+ W4 g128', recipe: 'sqplus-w4g128' },
    {
      label: 'SmoothQuant+ W4 g128 (loss: calibration NLL)',
      recipe: { base: 'sqplus-w4g128', steps: [{ sqplus: { loss: 'nll' } }] },
    },
    { label: 'RTN W8A8 (per-tensor static acts)', recipe: 'rtn-w8a8-static', calib: AWQ_CALIB },
    {
      label: 'SmoothQuant W8A8 (per-tensor static acts)',
      recipe: 'smoothquant-w8a8-static',
      calib: AWQ_CALIB,
    },
    { label: 'RTN W8A8 (per-token acts)', recipe: 'rtn-w8a8' },
    { label: 'SmoothQuant W8A8 (per-token acts)', recipe: 'smoothquant-w8a8', calib: AWQ_CALIB },
    { label: 'RTN W4A4', recipe: 'rtn-w4a4' },
    { label: 'AWQ W4A4 (acts in the search)', recipe: 'awq-w4a4', calib: AWQ_CALIB },
    ...[0, 1, 2, 4, 8, 16, 32, 64].map((p) => ({
      label: `mixed W4A4, ${p}% salient`,
      recipe: { base: 'mixed-w4a4', steps: [{ mixed: { salientPercent: p } }] },
      calib: AWQ_CALIB,
    })),
  ],
  gptq: () => [
    { label: 'fp' },
    { label: 'RTN W4 g128', recipe: 'rtn-w4g128' },
    { label: 'GPTQ W4 g128', recipe: 'gptq-w4g128', calib: GPTQ_CALIB },
    { label: 'GPTQ W4 g128 act_order', recipe: 'gptq-w4g128-actorder', calib: GPTQ_CALIB },
    { label: 'RTN W3 g128', recipe: 'rtn-w3g128' },
    { label: 'GPTQ W3 g128', recipe: 'gptq-w3g128', calib: GPTQ_CALIB },
    { label: 'GPTQ W3 g128 act_order', recipe: 'gptq-w3g128-actorder', calib: GPTQ_CALIB },
    {
      label: 'GPTQ W4 g128 act_order static_groups',
      recipe: { base: 'gptq-w4g128-actorder', steps: [{ gptq: { actOrder: true, staticGroups: true } }] },
      calib: GPTQ_CALIB,
    },
    {
      label: 'GPTQ W3 g128 act_order static_groups',
      recipe: { base: 'gptq-w3g128-actorder', steps: [{ gptq: { actOrder: true, staticGroups: true } }] },
      calib: GPTQ_CALIB,
    },
    ...[4, 3].flatMap((bits) =>
      [false, true].map((actOrder) => ({
        label: `GPTQ W${bits} g128${actOrder ? ' act_order' : ''} mse`,
        recipe: { base: `gptq-w${bits}g128`, steps: [{ gptq: { actOrder, mse: true } }] },
        calib: GPTQ_CALIB,
      })),
    ),
  ],
  'awq-gptq': () => [
    { label: 'fp' },
    { label: 'RTN W4A8 MXINT4-128', recipe: { name: 'rtn-mx', ...W4A8_MX } },
    {
      label: 'GPTQ W4A8 MXINT4-128',
      recipe: { name: 'gptq-mx', ...W4A8_MX, steps: ['gptq'] },
      calib: GPTQ_CALIB,
    },
    {
      label: 'AWQ W4A8 MXINT4-128',
      recipe: { name: 'awq-mx', ...W4A8_MX, steps: ['awq'] },
      calib: AWQ_CALIB,
    },
    { label: 'AWQ+GPTQ W4A8 MXINT4-128', recipe: 'mxint4-awq-gptq', calib: GPTQ_CALIB },
    {
      label: 'AWQ (with clip)+GPTQ W4A8 MXINT4-128',
      recipe: { name: 'awq-clip-gptq-mx', ...W4A8_MX, steps: ['awq', 'gptq'] },
      calib: GPTQ_CALIB,
    },
    {
      label: 'SmoothQuant+GPTQ W4A8 MXINT4-128',
      recipe: { name: 'sq-gptq-mx', ...W4A8_MX, steps: ['smoothquant', 'gptq'] },
      calib: GPTQ_CALIB,
    },
  ],
  // W4A4 with per-channel weights: FlatQuant against what needs no training
  flatquant: () => [
    { label: 'fp' },
    flatQuantJob('flatquant-w4a4'),
    { label: 'RTN W4A4 per-channel', recipe: { name: 'rtn-w4a4-row', ...W4A4_ROW } },
    {
      label: 'SmoothQuant W4A4 per-channel',
      recipe: { name: 'sq-w4a4-row', ...W4A4_ROW, steps: ['smoothquant'] },
      calib: AWQ_CALIB,
    },
    { label: 'RTN W4A4 g128 (rtn-w4a4)', recipe: 'rtn-w4a4' },
    { label: 'AWQ W4A4 g128 (acts in the search)', recipe: 'awq-w4a4', calib: AWQ_CALIB },
    { label: 'RTN W4A4KV4 per-channel', recipe: { name: 'rtn-w4a4kv4-row', ...W4A4_ROW, kv: 'int4-row' } },
    flatQuantJob('flatquant-w4a4kv4'),
  ],
};

function resolve(job: Job, quick: boolean): Recipe | undefined {
  if (!job.recipe) return undefined;
  let recipe: Recipe;
  if (typeof job.recipe === 'string') recipe = resolveRecipe(job.recipe);
  else {
    const file = path.join(os.tmpdir(), `llmq-results-${process.pid}.json`);
    fs.writeFileSync(file, JSON.stringify(job.recipe));
    recipe = resolveRecipe(file);
    fs.rmSync(file);
  }
  if (job.calib) recipe.calib = { ...job.calib };
  if (quick) recipe.calib = { samples: 2, seqLen: 256 };
  return recipe;
}

const { values } = parseArgs({
  options: {
    set: { type: 'string', default: 'issue4' },
    model: { type: 'string' },
    calib: { type: 'string' },
    eval: { type: 'string' },
    device: { type: 'string', default: 'webgpu' },
    out: { type: 'string', default: '.' },
    'dump-awq': { type: 'string' },
    only: { type: 'string' },
    quick: { type: 'boolean', default: false },
    windows: { type: 'string', default: '16' },
    seqlen: { type: 'string', default: '512' },
    seed: { type: 'string', default: '0' },
    sampler: { type: 'string', default: 'pool' },
    kl: { type: 'boolean', default: false },
    'host-search': { type: 'boolean', default: false },
    'flatquant-calib': { type: 'string', default: '128x2048' },
    'flatquant-epochs': { type: 'string', default: '15' },
  },
});
const dir = values.model as string;
const jobs = (SETS[values.set as string]?.() ?? []).filter(
  (j) =>
    !values.only ||
    values.only
      .split(',')
      .filter(Boolean)
      .some((o) => (o.startsWith('=') ? j.label === o.slice(1) : j.label.includes(o))),
);
const backend = await createBackend(values.device as DeviceName);
// the baseline of the K-quant search kernel: every K-quant round trip on the host, as before it
if (values['host-search']) backend.searchFakeQuant = undefined;
const tokenizer = loadTokenizer(dir);
const evalIds = tokenizer.encode(readEvalText(values.eval as string));
const windows = values.quick ? 1 : Number(values.windows);
const seqLen = Number(values.seqlen);
const rows: Record<string, unknown>[] = [];
const name = path.basename(path.resolve(dir));
const seed = Number(values.seed);
const sampler = values.sampler as CalibSampler;
fs.mkdirSync(values.out as string, { recursive: true });
const outBase = path.join(
  values.out as string,
  `results-${values.set}-${name}${seed ? `-seed${seed}` : ''}${sampler === 'pool' ? '' : `-${sampler}`}`,
);
for (const job of jobs) {
  const start = performance.now();
  const recipe = resolve(job, values.quick);
  const model = loadLlama(dir, backend);
  let report: Awaited<ReturnType<typeof quantizeModel>> | undefined;
  let calibInfo: Record<string, unknown> | undefined;
  if (recipe) {
    const calib = recipeNeedsCalibration(recipe)
      ? await loadCalibration(tokenizer, { file: values.calib, ...recipe.calib, seed, sampler })
      : undefined;
    if (calib)
      calibInfo = { samples: calib.samples, seqLen: calib.seqLen, seed, sampler, sha256: calib.sha256 };
    if (calib && values['dump-awq'] && recipe.name === 'awq-w4g128')
      dumpAwq(values['dump-awq'], calib.ids, recipe);
    const layerStart = performance.now();
    report = await quantizeModel(model, recipe, calib, {
      onLayer: (done, total) =>
        console.error(
          `  ${job.label}: layer ${done}/${total}, ${((performance.now() - layerStart) / 1000).toFixed(0)} s`,
        ),
    });
  }
  const reference = values.kl && recipe ? loadLlama(dir, backend) : undefined;
  const r = await perplexity(model, evalIds, { seqLen, maxWindows: windows, reference });
  const row = {
    model: name,
    label: job.label,
    recipe: recipe?.name ?? 'fp',
    ppl: r.ppl,
    windows: r.windows,
    seqlen: seqLen,
    calibration: calibInfo ?? null,
    kl: r.kl ?? null,
    bitsPerWeight: recipe ? linearBitsPerWeight(model) : 16,
    seconds: (performance.now() - start) / 1000,
    timings: report?.timings ?? {},
    notes: report ? { model: report.model, layers: report.layers.map(trimNotes) } : null,
  };
  rows.push(row);
  const klText = r.kl ? `   KL ${r.kl.mean.toFixed(4)} top ${(r.kl.sameTop * 100).toFixed(1)}%` : '';
  console.log(
    `${job.label.padEnd(44)} ppl ${r.ppl.toFixed(2).padStart(10)}${klText}   ${row.seconds.toFixed(1)} s`,
  );
  fs.writeFileSync(`${outBase}.json`, JSON.stringify(rows, null, 1));
}
const fp = rows.find((r) => r.recipe === 'fp')?.ppl as number | undefined;
const md = [
  `| ${name} | bits per weight | ppl | vs fp | KL from fp (nats/token) | same top token | seconds |`,
  '|---|---|---|---|---|---|---|',
  ...rows.map((r) => {
    const kl = r.kl as { mean: number; sameTop: number } | null;
    const vsFp = fp ? `${(((r.ppl as number) / fp - 1) * 100).toFixed(2)}%` : '';
    const klCells = kl ? `${kl.mean.toFixed(4)} | ${(kl.sameTop * 100).toFixed(1)}%` : ' | ';
    return `| ${r.label} | ${(r.bitsPerWeight as number).toFixed(2)} | ${(r.ppl as number).toFixed(2)} | ${vsFp} | ${klCells} | ${(r.seconds as number).toFixed(1)} |`;
  }),
].join('\n');
fs.writeFileSync(`${outBase}.md`, `${md}\n`);
console.log(md);

function dumpAwq(out: string, calibIds: Int32Array, recipe: Recipe): void {
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'calib.bin'), calibIds);
  fs.writeFileSync(path.join(out, 'eval.bin'), evalIds.subarray(0, windows * seqLen));
  const meta = {
    w_bit: recipe.weights?.kind === 'int' ? recipe.weights.bits : 4,
    group: 128,
    calib_samples: recipe.calib.samples,
    calib_seqlen: recipe.calib.seqLen,
    eval_windows: windows,
    eval_seqlen: seqLen,
  };
  fs.writeFileSync(path.join(out, 'meta.json'), JSON.stringify(meta));
}

/** Keeps per-layer notes small: AWQ scale vectors are summarised, not listed. */
function trimNotes(layer: Record<string, unknown>): Record<string, unknown> {
  const awq = layer.awq as Record<string, { ratio: number; scales: number[] }> | undefined;
  if (!awq) return layer;
  const summary = Object.fromEntries(
    Object.entries(awq).map(([k, v]) => [
      k,
      { ratio: v.ratio, minScale: Math.min(...v.scales), maxScale: Math.max(...v.scales) },
    ]),
  );
  return { ...layer, awq: summary };
}
