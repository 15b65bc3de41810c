import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../errors.ts';
import { readEvalText } from '../eval/eval-text.ts';
import { perplexity, windowCount } from '../eval/perplexity.ts';
import { isGgufPath } from '../io/gguf-model.ts';
import { readForeignQuantConfig } from '../io/import.ts';
import { loadLlama } from '../model/llama-dir.ts';
import { readQuantizationConfig } from '../quant/checkpoint.ts';
import { WebGpuBackend } from '../tensor/webgpu/backend.ts';
import { intFlag, onePositional, optionalIntFlag, parse, printJson } from './args.ts';
import { CALIB_HELP } from './calib-flags.ts';
import { MODEL_FLAGS, openBackendAndTokenizer, openModel } from './open-model.ts';
import { Progress } from './progress.ts';

export const EVAL_HELP = `llmq eval <model-dir | model.gguf> --ppl <text-file> [--tokenizer <hf-model-dir>] [--seqlen N] [--max-windows K] [--recipe R ${CALIB_HELP}] [--kl | --kl-base <fp-model-dir>] [--device cpu|webgpu|auto] [--int8 auto|off] [--packed auto|off] [--json]
  Perplexity with the standard WikiText-2 protocol (rows joined by "\\n\\n", one BOS, non-overlapping
  windows of --seqlen tokens, default 2048). Quantized llmq checkpoints are evaluated as saved;
  --recipe quantizes a full-precision model on the fly first. A llama.cpp .gguf file (architecture
  llama; F32/F16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q2_K/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_NL/IQ4_XS/IQ3_XXS/IQ3_S tensors) is evaluated with its weights
  dequantized and its embedded byte-level BPE tokenizer; --tokenizer takes the tokenizer from an HF
  model directory instead (for any model). On WebGPU, W8A8 linears (INT8 per channel weights, INT8
  per token activations) run as int8 GEMMs unless --int8 off, and other INT weights (RTN/AWQ/GPTQ)
  stay as packed codes decoded inside the GEMM unless --packed off.
  --kl also measures KL(P_fp || P_quantized) per predicted token against the full-precision model
  (with --recipe: <model-dir> itself; for a checkpoint: the source its manifest records, or --kl-base;
  a .gguf file needs --kl-base), and how often both put the same token first.`;

export async function evalCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('eval', argv, {
    ppl: { type: 'string' },
    seqlen: { type: 'string' },
    'max-windows': { type: 'string' },
    kl: { type: 'boolean', default: false },
    'kl-base': { type: 'string' },
    ...MODEL_FLAGS,
    json: { type: 'boolean', default: false },
  });
  const dir = onePositional('eval', positionals, 'model directory or .gguf file');
  if (!values.ppl) fail('eval: --ppl <text-file> is required');
  const seqLen = intFlag('seqlen', values.seqlen, 2048, 2);
  const maxWindows = optionalIntFlag('max-windows', values['max-windows']);
  const opened = await openBackendAndTokenizer('eval', dir, values);
  const { backend, tokenizer, recipe } = opened;
  const text = readEvalText(values.ppl);
  const tokens = tokenizer.encode(text);
  if (tokens.length < seqLen)
    fail(`--seqlen ${seqLen} is larger than ${values.ppl} (${tokens.length} tokens)`);
  const start = performance.now();
  const klBase =
    values.kl || values['kl-base'] ? klBaseDir(dir, values['kl-base'], recipe !== undefined) : undefined;
  const { model, quantizeSeconds, int8Linears, packedLinears } = await openModel(
    dir,
    values,
    opened,
    values.json,
  );
  const reference = klBase === undefined ? undefined : loadLlama(klBase, backend);
  const progress = new Progress('perplexity', 'windows', values.json);
  progress.update(0, windowCount(tokens.length, seqLen, maxWindows));
  const result = await perplexity(model, tokens, {
    seqLen,
    maxWindows,
    reference,
    onWindow: (d, t) => progress.update(d, t),
  });
  const seconds = (performance.now() - start) / 1000;
  const out = {
    model: dir,
    ppl: result.ppl,
    windows: result.windows,
    tokens: result.tokens,
    seqlen: result.seqlen,
    seconds,
    device: backend.name,
    recipe: model.quantization?.recipe ?? null,
    quantize_seconds: quantizeSeconds,
    int8_linears: int8Linears,
    packed_linears: packedLinears,
    /** storage buffers llmq held on the GPU at most (weights, activations, its buffer pool) */
    device_peak_mib: backend instanceof WebGpuBackend ? backend.ctx.peakBytes / 2 ** 20 : null,
    kl: result.kl ? { base: klBase, ...result.kl } : null,
    window_mean_nll: result.windowMeanNll,
  };
  if (values.json) return printJson(out);
  console.log(
    `${dir}: perplexity ${result.ppl.toFixed(4)} over ${result.windows} windows of ${seqLen} tokens ` +
      `(${result.tokens} tokens in the text, ${backend.name}, ${seconds.toFixed(1)} s)`,
  );
  const kl = result.kl;
  if (kl)
    console.log(
      `KL divergence from ${klBase} (perplexity ${kl.referencePpl.toFixed(4)}): mean ${kl.mean.toPrecision(4)} nats ` +
        `per token, median ${kl.median.toPrecision(4)}, 99th percentile ${kl.p99.toPrecision(4)}, ` +
        `max ${kl.max.toPrecision(4)}; same top token ${(kl.sameTop * 100).toFixed(2)}% of ${kl.tokens} tokens`,
    );
}

/**
 * The full-precision model --kl compares against: --kl-base, <dir> itself under --recipe, or the source
 * a checkpoint records (llmq's manifest, or the llmq_export note of an exported one). Resolved before
 * any model is loaded, so a missing base fails at once.
 */
function klBaseDir(dir: string, given: string | undefined, onTheFly: boolean): string {
  if (given !== undefined) return given;
  if (onTheFly) return dir;
  const noRecord = (what: string): never =>
    fail(
      `eval: --kl: ${dir} is ${what} with no record of its full-precision source; pass --kl-base <fp-model-dir>`,
    );
  if (isGgufPath(dir)) return noRecord('a GGUF file');
  const foreign = readForeignQuantConfig(dir);
  const source = foreign
    ? (foreign.sourceModel ?? noRecord(`a ${foreign.method} checkpoint`))
    : readQuantizationConfig(dir)?.manifest.source_model;
  if (source === undefined)
    return fail(
      'eval: --kl compares a quantized model with full precision: add --recipe, or evaluate a quantized checkpoint',
    );
  if (!fs.existsSync(path.join(source, 'config.json')))
    fail(
      `eval: --kl: ${dir} was made from ${source}, which is not there any more; pass --kl-base <fp-model-dir>`,
    );
  return source;
}
