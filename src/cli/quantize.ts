import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../errors.ts';
import { openCheckpoint } from '../io/safetensors.ts';
import { hashCheckpointFiles, saveQuantized, TOOL_VERSION } from '../quant/checkpoint.ts';
import { loadModel } from '../quant/load.ts';
import { resolveRecipe } from '../quant/recipe.ts';
import { linearBitsPerWeight } from '../quant/size.ts';
import { createBackend, type DeviceName } from '../tensor/index.ts';
import { onePositional, parse, printJson } from './args.ts';
import { CALIB_FLAGS, CALIB_HELP, calibFlags } from './calib-flags.ts';
import { Progress, phaseProgress } from './progress.ts';

export const QUANTIZE_HELP = `llmq quantize <model-dir> --recipe <name|file> --out <dir> [--force] [--fresh] ${CALIB_HELP} [--device cpu|webgpu|auto] [--json]
  Quantizes a full-precision checkpoint with a recipe (see \`llmq recipes\`) and writes an llmq
  checkpoint (packed codes + scales, recipe and manifest in config.json). Refuses to overwrite an
  existing --out unless --force. Calibrated recipes keep each finished layer in <out>.partial/; run
  the same command again after an interruption and it goes on from the last finished layer (the
  result is the same as an uninterrupted run); --fresh starts over.`;

function dirBytes(dir: string): number {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

export async function quantizeCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('quantize', argv, {
    recipe: { type: 'string' },
    out: { type: 'string' },
    force: { type: 'boolean', default: false },
    fresh: { type: 'boolean', default: false },
    device: { type: 'string', default: 'cpu' },
    json: { type: 'boolean', default: false },
    ...CALIB_FLAGS,
  });
  const dir = onePositional('quantize', positionals, 'model directory');
  if (!values.recipe) fail('quantize: --recipe <name|file> is required (see `llmq recipes`)');
  if (!values.out) fail('quantize: --out <dir> is required');
  if (fs.existsSync(values.out) && !values.force)
    fail(`${values.out} already exists (pass --force to replace it)`);
  const recipe = resolveRecipe(values.recipe);
  const backend = await createBackend(values.device as DeviceName);
  const ckpt = openCheckpoint(dir);
  const sourceSha = hashCheckpointFiles(ckpt);
  ckpt.close();
  const progress = new Progress('quantize', 'layers', values.json);
  const tokenizing = new Progress('calibration', 'tokens', values.json);
  const partial = `${path.resolve(values.out)}.partial`;
  const { model, report, calibration, resume } = await loadModel(dir, backend, {
    recipe,
    calib: calibFlags(values),
    resume: { dir: partial, source: sourceSha, fresh: values.fresh },
    onLayer: (d, t) => progress.update(d, t),
    onProgress: phaseProgress(values.json),
    onCalibration: (d, t) => tokenizing.update(d, t),
  });
  if (!report) return fail('quantize: nothing was quantized');
  const saveStart = performance.now();
  await saveQuantized(
    model,
    recipe,
    {
      tool: 'llmq',
      tool_version: TOOL_VERSION,
      created: new Date().toISOString(),
      source_model: path.resolve(dir),
      source_sha256: sourceSha,
      calibration,
      timings: { ...report.timings, total: report.seconds },
      notes: report.layers.some((l) => Object.keys(l).length > 1)
        ? { layers: report.layers, model: report.model }
        : undefined,
    },
    values.out,
    values.force,
  );
  resume?.clear();
  const saveSeconds = (performance.now() - saveStart) / 1000;
  const sourceBytes = dirBytes(dir);
  const outBytes = dirBytes(values.out);
  const out = {
    model: dir,
    out: values.out,
    recipe: recipe.name,
    seconds: report.seconds + saveSeconds,
    quantize_seconds: report.seconds,
    save_seconds: saveSeconds,
    timings: report.timings,
    source_bytes: sourceBytes,
    out_bytes: outBytes,
    compression: sourceBytes / outBytes,
    calibration: calibration ?? null,
    resumed_layers: report.resumedLayers,
    calibration_hidden_states_mib: (report.peakActivationValues * 4) / 2 ** 20,
    peak_rss_mib: process.resourceUsage().maxRSS / 1024,
    linear_bits_per_weight: linearBitsPerWeight(model),
  };
  if (values.json) return printJson(out);
  console.log(
    `${values.out}: ${recipe.name}, ${(outBytes / 2 ** 20).toFixed(1)} MiB (source ${(sourceBytes / 2 ** 20).toFixed(1)} MiB, ` +
      `compression ${out.compression.toFixed(2)}x) in ${out.seconds.toFixed(1)} s` +
      (report.resumedLayers ? ` (went on after layer ${report.resumedLayers} of an interrupted run)` : ''),
  );
  console.log(
    `  quantized linears: ${out.linear_bits_per_weight.toFixed(2)} bits per weight with scales (16 in bf16); ` +
      `peak memory ${out.peak_rss_mib.toFixed(0)} MiB` +
      (report.peakActivationValues
        ? `, of which calibration hidden states ${out.calibration_hidden_states_mib.toFixed(0)} MiB`
        : ''),
  );
}
