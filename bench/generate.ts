/**
 * Generation speed: prompt (prefill) and token-by-token (decode) throughput of the runtime.
 *  - --model (an HF dir, an llmq checkpoint or a GGUF file; stored integer weights run from codes, as in
 *    llmq generate): greedy continuation of a prompt through ModelEngine (the ids are printed, so
 *    bench/generate_torch.py can check that PyTorch picks the same tokens);
 *  - synthetic Llama-3-8B (random weights, one layer's tensors shared by all 32 layers: the same work
 *    and weight traffic per token) with bf16 weights, W4 g128 codes decoded in the GEMM, IQ4 codes
 *    (levels and a scale per 32) decoded in the GEMM, and W8A8 on
 *    the int8 GEMM: decode tokens/s after a prompt (its prompt run twice: coldPrefillSeconds includes
 *    compiling the prefill kernels; the first decode step, which compiles the decode kernels, is
 *    firstStepMs and left out of the decode rate).
 * Prints JSON lines; --out writes them as one JSON array. On the GPU machine, bench/generate_torch.py
 * then measures PyTorch in the same call; back here, --report renders both as a table in BENCHMARKS.md.
 *   node --import ./src/loader.mjs bench/generate.ts --model DIR --device webgpu [--prompt 128] [--new 256] [--skip 8b] [--out F]
 *     [--fusions both|all] [--gemv-baseline] [--profile N]   (WebGPU variants; GPU time per kernel)
 *     [--first-submit N]   (dispatches in a decode step's first submit) [--attention-keys N] [--attention-workgroups N]
 *   node --import ./src/loader.mjs bench/generate.ts --report llmq.json,torch.json [--no-write]
 *   node --import ./src/loader.mjs bench/generate.ts --report llmq.json --gpu NAME   (no PyTorch run: ratios to llmq's bf16)
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { openModel } from '../src/cli/open-model.ts';
import { IQ4_LEVELS } from '../src/formats/iq4.ts';
import { loadGgufTokenizer } from '../src/io/gguf-load.ts';
import { isGgufPath } from '../src/io/gguf-model.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { LINEARS, type Linear, type LlamaModel } from '../src/model/llama.ts';
import { kroneckerSizes } from '../src/quant/flatquant-train.ts';
import { loadChatTemplate } from '../src/runtime/chat-template-file.ts';
import { eosIdsOf } from '../src/runtime/eos.ts';
import { ModelEngine } from '../src/runtime/generate.ts';
import { KvCache } from '../src/runtime/kv-cache.ts';
import { Sampler } from '../src/runtime/sampling.ts';
import { createBackend, type DeviceName } from '../src/tensor/index.ts';
import { type Backend, FUSED_OPS, type Tensor } from '../src/tensor/tensor.ts';
import { envFlags, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import { DEFAULT_GEMV } from '../src/tensor/webgpu/context.ts';
import { type KernelShare, largestKernels, publish, type Row, table } from './report.ts';
import { dropCodes, randomWords, synthLlama3, useInt8 } from './synth-model.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    text: { type: 'string' },
    device: { type: 'string', default: 'webgpu' },
    prompt: { type: 'string', default: '128' },
    new: { type: 'string', default: '256' },
    skip: { type: 'string', default: '' },
    /** decoder layers of the synthetic 8B (default all 32; fewer for a quick check on a slow device) */
    'synth-layers': { type: 'string' },
    /** 'both': every row also without the fused decode ops; 'all': also with the RMSNorm in the GEMVs */
    fusions: { type: 'string', default: 'on' },
    out: { type: 'string' },
    report: { type: 'string' },
    'no-write': { type: 'boolean', default: false },
    /** --report without PyTorch's results: the GPU's name */
    gpu: { type: 'string', default: 'the GPU' },
    /** --report: the command that produced the results, for the report's Command line */
    ran: { type: 'string' },
    /** WebGPU: after each 8B row, N more tokens with every dispatch timed (GPU time per kernel) */
    profile: { type: 'string', default: '0' },
    /** dispatches in a decode step's first submit (later ones double up to 64); default 64: no ramp */
    'first-submit': { type: 'string' },
    /** keys a decode attention workgroup scores at once (WebGPU; default the context's, 64) */
    'attention-keys': { type: 'string' },
    'attention-workgroups': { type: 'string' },
    /** every row also with the GEMV's scalar loops (before vec4 chunks; WebGPU) */
    'gemv-baseline': { type: 'boolean', default: false },
    /** runs every row twice, first without reusing bind groups and uniforms (the baseline) */
    'compare-reuse': { type: 'boolean', default: false },
  },
});
const NO_REUSE = ' (no bind-group reuse)';
const UNFUSED = ' (unfused)';
const NORM_IN_GEMV = ' (RMSNorm in the GEMVs)';
const SCALAR_GEMV = ' (scalar GEMV loads)';
if (values.report) {
  publishReport(values.report);
  process.exit(0);
}
const skip = new Set(values.skip.split(','));
const promptLen = Number(values.prompt);
const newTokens = Number(values.new);
const results: Record<string, unknown>[] = [];
function report(r: Record<string, unknown>): void {
  results.push(r);
  console.log(JSON.stringify(r));
  if (values.out) fs.writeFileSync(values.out, JSON.stringify(results, null, 1));
}

const reuseModes = values['compare-reuse'] ? [false, true] : [true];
for (const reuse of reuseModes) {
  const backend =
    values.device === 'webgpu'
      ? await WebGpuBackend.create({
          reuseBindGroups: reuse,
          ...(values['first-submit'] ? { firstSubmit: Number(values['first-submit']) } : {}),
          ...(values['attention-keys'] ? { attentionKeys: Number(values['attention-keys']) } : {}),
          ...(values['attention-workgroups']
            ? { attentionWorkgroups: Number(values['attention-workgroups']) }
            : {}),
          // Dawn rounds timestamps unless told not to
          ...(values.profile !== '0'
            ? { flags: [...envFlags(), 'disable-dawn-features=timestamp_quantization'] }
            : {}),
        })
      : await createBackend(values.device as DeviceName);
  const variant = reuse ? '' : NO_REUSE;
  if (backend instanceof WebGpuBackend) report({ what: 'gemv tuning', ...backend.ctx.gemv });
  if (values.model && !skip.has('small')) await smallRate(backend, variant);
  if (!skip.has('8b')) await synthRates(backend, variant);
  if (backend instanceof WebGpuBackend) {
    const cache = backend.ctx.bindGroups;
    if (cache) report({ what: 'bind-groups', hits: cache.hits, misses: cache.misses, cached: cache.size });
    backend.destroy();
  }
}

async function smallRate(backend: Backend, variant: string): Promise<void> {
  const dir = values.model as string;
  // an HF dir, an llmq checkpoint or a GGUF file, its stored integer weights run from codes (as llmq generate)
  const tokenizer = isGgufPath(dir) ? loadGgufTokenizer(dir) : loadTokenizer(dir);
  const { model } = await openModel(
    dir,
    { int8: 'auto', packed: 'auto' },
    { backend, tokenizer, recipe: undefined },
    true,
  );
  const engine = new ModelEngine(model, tokenizer, {
    modelName: 'small',
    template: loadChatTemplate(dir),
    eosIds: eosIdsOf(model),
  });
  const text = values.text
    ? fs.readFileSync(values.text, 'utf8')
    : 'The history of the city begins '.repeat(40);
  const prompt = tokenizer.encode(text).subarray(0, promptLen);
  await withAndWithoutFusions(backend, variant, (v) => smallRuns(engine, prompt, v));
}

async function smallRuns(engine: ModelEngine, prompt: Int32Array, variant: string): Promise<void> {
  const backend = engine.model.backend;
  await engine.generate(prompt, { maxTokens: 8 }); // warm-up: pipelines compiled, buffers pooled
  for (let rep = 0; rep < 2; rep++) {
    engine.dispose(); // no prefix reuse between repetitions
    const r = await engine.generate(prompt, { maxTokens: newTokens });
    report({
      what: 'generate',
      model: `${values.model}${variant}`,
      device: backend.name,
      promptTokens: prompt.length,
      newTokens: r.tokens.length,
      prefillSeconds: r.prefillSeconds,
      decodeTokensPerSecond: (r.tokens.length - 1) / r.decodeSeconds,
      promptIds: rep === 0 ? [...prompt] : undefined,
      ids: rep === 0 ? r.tokens : undefined,
    });
  }
}

/**
 * Random 4-bit codes decoded in the GEMM: W4 g128 asymmetric ((q - 8) 0.004), or with `levels` IQ4
 * (levels[q] 0.0002, a scale per 32).
 */
function usePacked4(b: Backend, lin: Linear, levels?: Int8Array): void {
  dropCodes(lin);
  const [rows, cols] = lin.weight.shape;
  const group = levels ? 32 : 128;
  const groups = (rows * cols) / group;
  lin.packed = {
    codes: b.upload(randomWords((rows * cols) / 8, rows + cols), [rows, cols / 8], 'i32'),
    scales: b.upload(new Float32Array(groups).fill(levels ? 0.0002 : 0.004), [groups], 'f32'),
    // IQ4's zero point is 0 in every group: one number, as a loaded IQ4 model has it
    zeros: levels ? 0 : b.upload(new Float32Array(groups).fill(8), [groups], 'f32'),
    rows,
    cols,
    codeBits: 4,
    group,
    ...(levels ? { levels } : {}),
  };
}

/**
 * FlatQuant's W4A4: 4-bit per-channel weight codes (held in int8), a random Kronecker transform of each
 * input (FlatQuant's factor sizes; with `shared`, q/k/v and gate/up share theirs as a checkpoint's do,
 * so their input is transformed once), 4-bit clipped per-token activations, the int8 GEMM.
 */
function useFlatW4A4(b: Backend, model: LlamaModel, shared: boolean): void {
  const { numHeads, headDim } = model.config;
  const factor = (n: number) =>
    b.upload(
      new Float32Array(n * n).map((_, i) => (i % (n + 1) === 0 ? 1 : 0.01)),
      [n, n],
      'f32',
    );
  const transforms = new Map<string, { left: Tensor; right: Tensor }>();
  for (const name of LINEARS) {
    const lin = model.layers[0].linears[name];
    dropCodes(lin);
    const [rows, cols] = lin.weight.shape;
    const codes = Int8Array.from(
      new Int8Array(randomWords((rows * cols) / 4, rows * 5 + cols).buffer),
      (v) => v >> 4,
    );
    lin.int8 = {
      codes: b.upload(codes, [rows, cols], 'i8'),
      scales: b.upload(new Float32Array(rows).fill(0.008), [rows], 'f32'),
      input: { kind: 'int', bits: 4, symmetric: true, granularity: 'row', clip: 0.9 },
    };
    const group = !shared
      ? name
      : ['q_proj', 'k_proj', 'v_proj'].includes(name)
        ? 'qkv'
        : name === 'up_proj'
          ? 'gate_proj'
          : name;
    if (!transforms.has(group)) {
      const [n1, n2] = name === 'o_proj' ? [numHeads, headDim] : kroneckerSizes(cols);
      transforms.set(group, { left: factor(n1), right: factor(n2) });
    }
    lin.inputQuant = { spec: lin.int8.input!, transform: transforms.get(group) };
  }
}

async function decodeRate(model: LlamaModel, variant: string): Promise<void> {
  const cache = new KvCache(model, promptLen + newTokens + 1 + Number(values.profile));
  const prompt = Int32Array.from({ length: promptLen }, (_, i) => (i * 7919) % 128000);
  const greedy = new Sampler({}, model.config.vocabSize);
  let encodeMs = 0;
  const encode = (ids: Int32Array): Tensor => {
    cache.reserve(ids.length);
    const t = performance.now();
    const logits = model.forwardCached(ids, cache);
    encodeMs += performance.now() - t;
    return logits;
  };
  const read = async (ids: Int32Array): Promise<number> => {
    const logits = encode(ids);
    const host = await model.backend.read(logits);
    logits.dispose();
    return greedy.next(host, []);
  };
  const t0 = performance.now();
  await read(prompt);
  const coldMs = performance.now() - t0;
  // again on an empty cache: the first prompt also compiled the pipelines it used
  cache.truncate(0);
  const tw = performance.now();
  let next = await read(prompt);
  const prefillMs = performance.now() - tw;
  // the first decode step compiles the decode kernels (the prompt ran the GEMMs): timed apart
  const ids = [next];
  const ts = performance.now();
  next = await read(Int32Array.of(next));
  const firstStepMs = performance.now() - ts;
  const steps = newTokens - 1;
  const t1 = performance.now();
  encodeMs = 0;
  const recorded = dispatchesRecorded(model.backend);
  for (let i = 0; i < steps; i++) {
    ids.push(next);
    next = await read(Int32Array.of(next));
  }
  const t2 = performance.now();
  const dispatches = (dispatchesRecorded(model.backend) - recorded) / steps;
  const decodeEncodeMs = encodeMs / steps;
  const kernels = await profileDecode(model.backend, Number(values.profile), () => read(Int32Array.of(next)));
  cache.dispose();
  report({
    what: 'generate',
    model: `llama-3-8b synthetic ${variant}`,
    device: model.backend.name,
    promptTokens: promptLen,
    newTokens,
    prefillSeconds: prefillMs / 1000,
    coldPrefillSeconds: coldMs / 1000,
    firstStepMs,
    decodeTokensPerSecond: steps / ((t2 - t1) / 1000),
    dispatchesPerToken: dispatches,
    encodeMsPerToken: decodeEncodeMs,
    decodeMsPerToken: (t2 - t1) / steps,
    ids,
    kernels,
  });
}

/** GPU time a token per kernel key over `tokens` more decode steps (timestamp queries), or undefined. */
async function profileDecode(b: Backend, tokens: number, step: () => Promise<number>) {
  if (tokens <= 0 || !(b instanceof WebGpuBackend) || !b.ctx.features.has('timestamp-query'))
    return undefined;
  b.ctx.startProfile();
  for (let i = 0; i < tokens; i++) await step();
  const times = await b.ctx.stopProfile();
  return times.map((t) => ({
    key: t.key,
    perToken: t.dispatches / tokens,
    usPerToken: (t.ms * 1000) / tokens,
  }));
}

/** A profiled row's GPU time a token and its largest kernels (by the key's first part: the op). */
function profileColumns(kernels: KernelShare[] | undefined): Record<string, string | number> {
  if (!kernels) return {};
  const total = kernels.reduce((a, k) => a + k.usPerToken, 0);
  return {
    'profiled GPU ms a token': total / 1000,
    'largest kernels (profiled ms a token)': largestKernels(kernels),
  };
}

/** 'yes', or the token where two greedy id sequences part. */
function sameIds(a: number[], b: number[]): string {
  const first = a.findIndex((id, i) => id !== b[i]);
  if (first < 0 && a.length === b.length) return 'yes';
  return `from token ${first < 0 ? Math.min(a.length, b.length) : first}`;
}

function dispatchesRecorded(b: Backend): number {
  return b instanceof WebGpuBackend ? b.ctx.recorded : 0;
}

/**
 * run(variant) with the backend's fused ops; --gemv-baseline: also with the scalar GEMV loads;
 * --fusions both: also without the fused ops; --fusions all: also with the RMSNorm inside the q/k/v
 * and gate/up GEMVs (normInGemv).
 */
async function withAndWithoutFusions(
  backend: Backend,
  variant: string,
  run: (variant: string) => Promise<void>,
): Promise<void> {
  const b = backend as Backend & Record<string, unknown>;
  if (values['gemv-baseline'] && b instanceof WebGpuBackend) {
    b.ctx.gemv = { ...DEFAULT_GEMV, chunks: false };
    await run(`${variant}${SCALAR_GEMV}`);
    b.ctx.gemv = DEFAULT_GEMV;
  }
  if (values.fusions === 'both' || values.fusions === 'all') {
    const own = Object.fromEntries(FUSED_OPS.map((n) => [n, b[n]]));
    Object.assign(b, Object.fromEntries(FUSED_OPS.map((n) => [n, undefined])));
    await run(`${variant}${UNFUSED}`);
    Object.assign(b, own);
  }
  if (values.fusions === 'all' && b instanceof WebGpuBackend) {
    b.normInGemv = true;
    await run(`${variant}${NORM_IN_GEMV}`);
    b.normInGemv = false;
  }
  await run(variant);
}

function decodeRates(model: LlamaModel, variant: string): Promise<void> {
  return withAndWithoutFusions(model.backend, variant, (v) => decodeRate(model, v));
}

async function synthRates(backend: Backend, variant: string): Promise<void> {
  const model = synthLlama3(backend, values['synth-layers'] ? Number(values['synth-layers']) : undefined);
  const decodeRate = decodeRates;
  await decodeRate(model, `bf16${variant}`);
  const layer = model.layers[0];
  for (const name of LINEARS) usePacked4(backend, layer.linears[name]);
  await decodeRate(model, `W4 g128 (codes decoded in the GEMM)${variant}`);
  for (const name of LINEARS) usePacked4(backend, layer.linears[name], IQ4_LEVELS);
  await decodeRate(model, `IQ4_XS / IQ4_NL (levels decoded in the GEMM, scale per 32)${variant}`);
  for (const name of LINEARS) useInt8(backend, layer.linears[name]);
  await decodeRate(model, `W8A8 (int8 GEMM)${variant}`);
  useFlatW4A4(backend, model, false);
  await decodeRate(model, `W4A4 FlatQuant, each linear transforming its own input${variant}`);
  useFlatW4A4(backend, model, true);
  await decodeRate(model, `W4A4 FlatQuant (online Kronecker transform + int8 GEMM)${variant}`);
}

/** The llmq and PyTorch results of one GPU call, side by side (the first llama-small repetition is a warm one too). */
function publishReport(files: string): void {
  type Result = {
    what: string;
    model: string;
    decodeTokensPerSecond: number;
    prefillSeconds: number;
    [k: string]: unknown;
  };
  const [ours, theirs = []] = files.split(',').map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as Result[]);
  const device = theirs.find((r) => r.what === 'device') as unknown as
    | { gpu: string; torch: string; transformers: string }
    | undefined;
  const gpu = device?.gpu ?? String(values.gpu);
  const torch = theirs.filter((r) => r.what === 'generate');
  const baseline = (model: string) => torch.find((r) => r.model === model);
  const rows: Row[] = [];
  const best = new Map<string, Result>();
  for (const r of ours.filter((r) => r.what === 'generate'))
    if (!best.has(r.model) || r.decodeTokensPerSecond > best.get(r.model)!.decodeTokensPerSecond)
      best.set(r.model, r);
  const bf16 = [...best.values()].find((r) => r.model.endsWith('synthetic bf16'));
  // the first run of each row records its greedy ids
  const idsOf = (model: string) =>
    ours.find((r) => r.what === 'generate' && r.model === model && Array.isArray(r.ids))?.ids as
      | number[]
      | undefined;
  const tokensMade = [...new Set([...best.values()].map((r) => r.newTokens))].join(' / ');
  for (const [model, r] of best) {
    const small = !model.includes('8b');
    const name = small
      ? `llama-small (bf16 weights, f32 math)${[NO_REUSE, UNFUSED, NORM_IN_GEMV, SCALAR_GEMV].find((v) => model.endsWith(v)) ?? ''}`
      : model.replace('llama-3-8b synthetic', 'Llama-3-8B shapes,');
    const base = small ? baseline('llama-small torch.float32') : baseline('llama-3-8b random bf16');
    const unfusedName = `${model.endsWith(NORM_IN_GEMV) ? model.slice(0, -NORM_IN_GEMV.length) : model}${UNFUSED}`;
    const unfused = best.get(unfusedName);
    const [ids, unfusedIds] = [idsOf(model), idsOf(unfusedName)];
    const scalar = best.get(`${model}${SCALAR_GEMV}`);
    const scalarIds = idsOf(`${model}${SCALAR_GEMV}`);
    const measured = {
      model: name,
      'llmq decode tokens/s': r.decodeTokensPerSecond,
      'llmq prompt (128 tokens) s': r.prefillSeconds,
      ...(r.dispatchesPerToken === undefined
        ? {}
        : {
            'dispatches a token': r.dispatchesPerToken as number,
            'host encode ms a token': r.encodeMsPerToken as number,
          }),
      ...(unfused ? { 'vs unfused': r.decodeTokensPerSecond / unfused.decodeTokensPerSecond } : {}),
      ...(ids && unfusedIds ? { 'greedy ids = unfused': sameIds(ids, unfusedIds) } : {}),
      ...(scalar ? { 'vs scalar GEMV loads': r.decodeTokensPerSecond / scalar.decodeTokensPerSecond } : {}),
      ...(ids && scalarIds ? { 'greedy ids = scalar GEMV loads': sameIds(ids, scalarIds) } : {}),
      ...profileColumns(r.kernels as KernelShare[] | undefined),
    };
    rows.push(
      device
        ? {
            ...measured,
            'PyTorch baseline': small ? 'fp32' : 'bf16',
            'PyTorch decode tokens/s': base?.decodeTokensPerSecond ?? '',
            ratio: base ? r.decodeTokensPerSecond / base.decodeTokensPerSecond : '',
          }
        : {
            ...measured,
            'vs llmq bf16': !small && bf16 ? r.decodeTokensPerSecond / bf16.decodeTokensPerSecond : '',
          },
    );
  }
  const same = baseline('llama-small torch.float32')?.sameGreedyPrefixAsLlmq;
  const pytorch = device
    ? `PyTorch: transformers ${device.transformers} \`model.generate\` (dynamic KV cache, sdpa), torch ${device.torch}, same GPU, same call.`
    : 'PyTorch was not run in this call; the rows compare with each other (bf16 is the baseline).';
  const greedy =
    same === undefined
      ? ''
      : ` llmq's greedy ids on llama-small equal PyTorch fp32's for the first ${same} of 256 tokens.`;
  const notes = `Greedy decoding, 128-token prompt, ${tokensMade} new tokens, one sequence. ${pytorch}${greedy} The 8B model has random weights, one layer's tensors shared by all 32 layers (same work and weight traffic per token). llmq rows: the better of two runs. Both sides move a lot between calls, PyTorch's more (HF generate is host-bound: its llama-small fp32 gave 89 and 140 tokens/s, its 8B bf16 9.2, 14.0 and 17.5 in different calls), so compare within one section.

What limits llmq. A decode step runs one token through every layer's kernels, each encoded from JavaScript, so the host's cost per dispatch sets the pace for small models. Decode records the same dispatches every token and reuses their bind groups and uniform parameters; the fused ops (rows without "(unfused)") cut the dispatches a layer: q/k/v + RoPE and gate/up + SiLU each one GEMV kernel, the residual adds in the o/down GEMV's store (15 -> 7 a layer for 16-bit and packed weights; 5 with the RMSNorm in the GEMVs, rows "(RMSNorm in the GEMVs)", where every workgroup recomputes its rows' RMS); W8A8 norms and quantizes each shared input once in one kernel and runs its int8 GEMVs with the scales in their store (43 -> 9 a layer). "(unfused)" rows hide the fused backend ops only: W8A8 there still quantizes q/k/v's and gate/up's input once, in one kernel. The 8B bf16's weight traffic (16 GB a token, ~5 ms at an H100's 3.35 TB/s) would allow ~200 tokens/s. W4 moves 4x fewer weight bytes than bf16; its packed GEMV decodes the codes on the ALUs. The GEMVs read x and dense weights four values a load (vec4), consecutive lanes on consecutive chunks, and packed or int8 weights a word (int8: four words) a lane; rows "(scalar GEMV loads)" run the earlier loops, whose lanes each took eight consecutive values one load at a time, so that every load of a subgroup touched eight cache lines.`;
  publish(
    `Generation (decode) on ${gpu} through WebGPU`,
    device
      ? 'bench/generate.ts on the GPU machine (bundled with gpu-bundle.sh), then bench/generate_torch.py, then bench/generate.ts --report'
      : `${values.ran ?? 'bench/generate.ts --skip small on the GPU machine (bundled with gpu-bundle.sh), twice'}, then bench/generate.ts --report llmq.json --gpu NAME`,
    table(rows),
    notes,
    `one ${gpu} (Dawn/Vulkan, webgpu npm package), Node ${process.version}`,
  );
}
