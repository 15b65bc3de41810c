/** The full-precision forward pass and perplexity against reference.json (PyTorch/transformers, fp32). */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { Tensor } from '../src/tensor/tensor.ts';
import { MODELS, WIKITEXT } from './helpers.ts';

interface HiddenSummary {
  mean: number;
  std: number;
  absmax: number;
  last_token_first8: number[];
}

const cpu = new CpuBackend();
const reference = (name: string) => JSON.parse(fs.readFileSync(`${MODELS}${name}/reference.json`, 'utf8'));

function close(got: number, want: number, tol: number, what: string): void {
  assert.ok(Math.abs(got - want) <= tol * Math.max(1, Math.abs(want)), `${what}: got ${got}, want ${want}`);
}

async function checkSummary(t: Tensor, want: HiddenSummary, what: string): Promise<void> {
  const data = await cpu.read(t);
  const width = t.shape[1];
  let sum = 0;
  let absmax = 0;
  for (const v of data) {
    sum += v;
    absmax = Math.max(absmax, Math.abs(v));
  }
  const mean = sum / data.length;
  let sq = 0;
  for (const v of data) sq += (v - mean) ** 2;
  const std = Math.sqrt(sq / (data.length - 1));
  close(mean, want.mean, 1e-5, `${what} mean`);
  close(std, want.std, 1e-5, `${what} std`);
  close(absmax, want.absmax, 1e-5, `${what} absmax`);
  const last = data.subarray(data.length - width, data.length - width + 8);
  want.last_token_first8.forEach((v, i) => close(last[i], v, 1e-4, `${what} last token [${i}]`));
}

for (const name of ['llama-tiny', 'llama-small', 'llama-small-outliers']) {
  test(`${name}: every layer's hidden state and the last logits match transformers`, async () => {
    const ref = reference(name);
    const model = loadLlama(`${MODELS}${name}`, cpu);
    const ids = Int32Array.from(ref.debug_prompt_ids as number[]);
    const shape = { batch: 1, seqLen: ids.length };
    let h = model.embed(ids);
    await checkSummary(h, ref.hidden_states[0], 'embedding');
    for (let i = 0; i < model.layers.length; i++) {
      h = model.layerForward(i, h, shape);
      // transformers reports the last entry after the final norm
      if (i < model.layers.length - 1) await checkSummary(h, ref.hidden_states[i + 1], `layer ${i}`);
    }
    const { normed, logits } = model.head(h);
    await checkSummary(normed, ref.hidden_states[model.layers.length], 'final norm');
    const out = await cpu.read(logits);
    const lastRow = out.subarray(out.length - model.config.vocabSize);
    ref.last_logits_first8.forEach((v: number, i: number) => close(lastRow[i], v, 1e-4, `logit ${i}`));
  });
}

test('llama-tiny: WikiText-2 tokens and perplexity of 4 windows of 512 match reference.json', async () => {
  const ref = reference('llama-tiny');
  const tokens = loadTokenizer(`${MODELS}llama-tiny`).encode(readEvalText(WIKITEXT));
  assert.equal(tokens.length, 371757);
  assert.deepEqual([...tokens.subarray(0, 16)], ref.first_ids);
  const model = loadLlama(`${MODELS}llama-tiny`, cpu);
  const r = await perplexity(model, tokens, { seqLen: 512, maxWindows: 4 });
  const want = ref.seq512.window_mean_nll.slice(0, 4) as number[];
  r.windowMeanNll.forEach((v, i) => close(v, want[i], 2e-5, `window ${i}`));
  const wantPpl = Math.exp(want.reduce((a, b) => a + b, 0) / want.length);
  assert.ok(Math.abs(r.ppl / wantPpl - 1) < 5e-4, `ppl ${r.ppl} vs ${wantPpl}`);
});
