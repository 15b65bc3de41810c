import { fail } from '../errors.ts';
import { perplexity, readEvalText, windowCount } from '../eval/perplexity.ts';
import { loadTokenizer } from '../io/tokenizer.ts';
import { useInt8Matmuls } from '../model/int8.ts';
import { usePackedWeights } from '../model/packed.ts';
import { loadModel } from '../quant/load.ts';
import { resolveRecipe } from '../quant/recipe.ts';
import { createBackend, type DeviceName } from '../tensor/index.ts';
import { intFlag, onePositional, optionalIntFlag, parse, printJson } from './args.ts';
import { CALIB_FLAGS, CALIB_HELP, calibFlags } from './calib-flags.ts';
import { Progress } from './progress.ts';

export const EVAL_HELP = `llmq eval <model-dir> --ppl <text-file> [--seqlen N] [--max-windows K] [--recipe R ${CALIB_HELP}] [--device cpu|webgpu|auto] [--int8 auto|off] [--packed auto|off] [--json]
  Perplexity with the standard WikiText-2 protocol (rows joined by "\\n\\n", one BOS, non-overlapping
  windows of --seqlen tokens, default 2048). Quantized llmq checkpoints are evaluated as saved;
  --recipe quantizes a full-precision model on the fly first. On WebGPU, W8A8 linears (INT8 per
  channel weights, INT8 per token activations) run as int8 GEMMs unless --int8 off, and other INT
  weights (RTN/AWQ/GPTQ) stay as packed codes decoded inside the GEMM unless --packed off.`;

export async function evalCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('eval', argv, {
    ppl: { type: 'string' },
    seqlen: { type: 'string' },
    'max-windows': { type: 'string' },
    recipe: { type: 'string' },
    ...CALIB_FLAGS,
    device: { type: 'string', default: 'cpu' },
    int8: { type: 'string', default: 'auto' },
    packed: { type: 'string', default: 'auto' },
    json: { type: 'boolean', default: false },
  });
  if (values.int8 !== 'auto' && values.int8 !== 'off')
    fail(`eval: --int8 must be auto or off, got ${values.int8}`);
  const dir = onePositional('eval', positionals, 'model directory');
  if (!values.ppl) fail('eval: --ppl <text-file> is required');
  const seqLen = intFlag('seqlen', values.seqlen, 2048, 2);
  const maxWindows = optionalIntFlag('max-windows', values['max-windows']);
  const backend = await createBackend(values.device as DeviceName);
  const tokenizer = loadTokenizer(dir);
  const text = readEvalText(values.ppl);
  const tokens = tokenizer.encode(text);
  if (tokens.length < seqLen)
    fail(`--seqlen ${seqLen} is larger than ${values.ppl} (${tokens.length} tokens)`);
  const start = performance.now();
  const recipe = values.recipe === undefined ? undefined : resolveRecipe(values.recipe);
  const layers = new Progress('quantize', 'layers', values.json);
  const tokenizing = new Progress('calibration', 'tokens', values.json);
  const { model, report } = await loadModel(dir, backend, {
    recipe,
    calib: calibFlags(values),
    onLayer: (d, t) => layers.update(d, t),
    onCalibration: (d, t) => tokenizing.update(d, t),
  });
  const gpu = backend.name === 'webgpu';
  const int8Linears = gpu && values.int8 === 'auto' ? useInt8Matmuls(model) : 0;
  const packedLinears = gpu && values.packed === 'auto' ? usePackedWeights(model, true) : 0;
  const progress = new Progress('perplexity', 'windows', values.json);
  progress.update(0, windowCount(tokens.length, seqLen, maxWindows));
  const result = await perplexity(model, tokens, {
    seqLen,
    maxWindows,
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
    quantize_seconds: report?.seconds ?? null,
    int8_linears: int8Linears,
    packed_linears: packedLinears,
    window_mean_nll: result.windowMeanNll,
  };
  if (values.json) return printJson(out);
  console.log(
    `${dir}: perplexity ${result.ppl.toFixed(4)} over ${result.windows} windows of ${seqLen} tokens ` +
      `(${result.tokens} tokens in the text, ${backend.name}, ${seconds.toFixed(1)} s)`,
  );
}
