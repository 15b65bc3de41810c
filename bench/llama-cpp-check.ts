/**
 * GGUF files run in llama.cpp itself (node-llama-cpp, CPU build) against llmq's forward pass on the same
 * file: mean NLL per token over the first windows of an evaluation text, llmq's token ids fed to both.
 * node-llama-cpp is not a dependency of llmq; install it anywhere (`npm install node-llama-cpp@3`) and
 * pass its package folder:
 *   node --import ./src/loader.mjs bench/llama-cpp-check.ts --node-llama-cpp <dir>/node_modules/node-llama-cpp \
 *     --tokenizer <hf-model-dir> --eval wiki.test.raw [--seqlen 256] [--windows 4] a.gguf b.gguf ...
 * Prints one row per file: llama.cpp's mean NLL, llmq's, and the largest gap in one window.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { loadGgufModel } from '../src/io/gguf-load.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';

interface Sequence {
  clearHistory(): Promise<void>;
  controlledEvaluate(input: unknown[]): Promise<({ next?: { logits?: Map<number, number> } } | undefined)[]>;
  dispose(): void;
}
interface NodeLlamaCpp {
  getLlama(opts: { gpu: false }): Promise<{
    loadModel(opts: { modelPath: string }): Promise<{
      createContext(opts: { contextSize: number; batchSize: number; sequences: number }): Promise<{
        getSequence(): Sequence;
        dispose(): Promise<void>;
      }>;
      dispose(): Promise<void>;
    }>;
  }>;
}

const { values, positionals: files } = parseArgs({
  allowPositionals: true,
  options: {
    'node-llama-cpp': { type: 'string' },
    tokenizer: { type: 'string' },
    eval: { type: 'string' },
    seqlen: { type: 'string', default: '256' },
    windows: { type: 'string', default: '4' },
  },
});
if (!values['node-llama-cpp'] || !values.tokenizer || !values.eval || files.length === 0) {
  console.error('usage: --node-llama-cpp <package dir> --tokenizer <hf dir> --eval <text> a.gguf ...');
  process.exit(2);
}
const [seqLen, windows] = [Number(values.seqlen), Number(values.windows)];
const entry = pathToFileURL(path.join(path.resolve(values['node-llama-cpp']), 'dist/index.js')).href;
const { getLlama } = (await import(entry)) as NodeLlamaCpp;
const tokens = loadTokenizer(values.tokenizer).encode(readEvalText(values.eval));
const llama = await getLlama({ gpu: false });
const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;

/** -log softmax(logits)[target] */
function nll(logits: Map<number, number>, target: number): number {
  let max = -Infinity;
  for (const v of logits.values()) max = Math.max(max, v);
  let z = 0;
  for (const v of logits.values()) z += Math.exp(v - max);
  return Math.log(z) + max - (logits.get(target) as number);
}

async function llamaCppNlls(file: string): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: seqLen, batchSize: seqLen, sequences: 1 });
  const seq = ctx.getSequence();
  const nlls: number[] = [];
  for (let w = 0; w < windows; w++) {
    const ids = Array.from(tokens.subarray(w * seqLen, (w + 1) * seqLen));
    await seq.clearHistory();
    const out = await seq.controlledEvaluate(
      ids.map((t, i) => (i < seqLen - 1 ? [t, { generateNext: { logits: true } }] : t)),
    );
    let sum = 0;
    for (let i = 0; i < seqLen - 1; i++) sum += nll(out[i]?.next?.logits as Map<number, number>, ids[i + 1]);
    nlls.push(sum / (seqLen - 1));
  }
  seq.dispose();
  await ctx.dispose();
  await model.dispose();
  return nlls;
}

console.log('| GGUF | llama.cpp | llmq | largest gap in one window |\n|---|---|---|---|');
for (const file of files) {
  const theirs = await llamaCppNlls(file);
  const ours = await perplexity(loadGgufModel(file, new CpuBackend()), tokens, {
    seqLen,
    maxWindows: windows,
  });
  const gap = Math.max(...theirs.map((n, i) => Math.abs(n - ours.windowMeanNll[i])));
  const row = [mean(theirs).toFixed(5), mean(ours.windowMeanNll).toFixed(5), gap.toFixed(5)];
  console.log(`| ${path.basename(file)} | ${row.join(' | ')} |`);
}
