/**
 * Generation end to end: greedy continuations equal transformers' (hf-train-reference.json), the KV
 * cache's prefix reuse changes nothing, WebGPU picks the same tokens as the CPU, and the CLI commands.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { ggufChatTemplate, loadChatTemplate } from '../src/runtime/chat-template-file.ts';
import { eosIdsOf } from '../src/runtime/eos.ts';
import { ModelEngine } from '../src/runtime/generate.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { Backend } from '../src/tensor/tensor.ts';
import { openDevice, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import { MODELS } from './helpers.ts';

const run = promisify(execFile);
const cpu = new CpuBackend();
const SMALL = `${MODELS}llama-small`;
const TINY = `${MODELS}llama-tiny`;
const reference = JSON.parse(fs.readFileSync(`${SMALL}/hf-train-reference.json`, 'utf8')) as {
  prompts: { text: string; ids: number[]; greedy_40: string }[];
};

function engineFor(dir: string, backend: Backend = cpu, contextLength?: number): ModelEngine {
  const model = loadLlama(dir, backend);
  return new ModelEngine(model, loadTokenizer(dir), {
    modelName: 'test',
    contextLength,
    template: loadChatTemplate(dir),
    eosIds: eosIdsOf(model),
  });
}

test('greedy 40-token continuations equal transformers (llama-small, hf-train-reference.json)', async () => {
  const engine = engineFor(SMALL);
  for (const p of reference.prompts) {
    const ids = engine.encode(p.text);
    assert.deepEqual([...ids], p.ids);
    let streamed = '';
    const r = await engine.generate(ids, { maxTokens: 40 }, (d) => {
      streamed += d;
    });
    assert.equal(r.text, p.greedy_40);
    assert.equal(streamed, r.text);
    assert.equal(r.tokens.length, 40);
    assert.equal(r.finishReason, 'length');
  }
});

test('a prompt extending the cached one gives what a fresh engine gives', async () => {
  const warm = engineFor(TINY);
  const fresh = engineFor(TINY);
  const first = warm.encode('The history of the city begins');
  const a = await warm.generate(first, { maxTokens: 12 });
  const second = Int32Array.from([...first, ...a.tokens, ...warm.encode(' and then').subarray(1)]);
  const b = await warm.generate(second, { maxTokens: 12 });
  const c = await fresh.generate(second, { maxTokens: 12 });
  assert.deepEqual(b.tokens, c.tokens);
  // a different prompt after that: the cache keeps only the shared BOS
  const d = await warm.generate(warm.encode('She opened'), { maxTokens: 8 });
  const e = await fresh.generate(fresh.encode('She opened'), { maxTokens: 8 });
  assert.deepEqual(d.tokens, e.tokens);
});

test('stop strings, EOS, aborts and the context bound end generation', async () => {
  const engine = engineFor(SMALL, cpu, 20);
  const prompt = engine.encode(reference.prompts[0].text);
  const full = reference.prompts[0].greedy_40;
  const stopped = await engine.generate(prompt, { maxTokens: 40, stop: ['houses'] });
  assert.equal(stopped.text, full.slice(0, full.indexOf('houses')));
  assert.equal(stopped.finishReason, 'stop');
  const bounded = await engine.generate(prompt, { maxTokens: 40 });
  assert.equal(bounded.tokens.length, 20 - prompt.length);
  assert.equal(bounded.finishReason, 'length');
  const controller = new AbortController();
  const aborted = await engine.generate(prompt, { maxTokens: 10, signal: controller.signal }, () =>
    controller.abort(),
  );
  assert.equal(aborted.finishReason, 'abort');
  assert.ok(aborted.tokens.length < 10);
  await assert.rejects(
    engine.generate(new Int32Array(20), { maxTokens: 1 }),
    /prompt has 20 tokens, the context holds 20/,
  );
  // EOS: a model whose first sampled token is the EOS id ends at once
  const eosModel = new ModelEngine(engine.model, loadTokenizer(SMALL), {
    modelName: 'eos',
    template: loadChatTemplate(SMALL),
    eosIds: [stopped.tokens[0]],
  });
  const eos = await eosModel.generate(prompt, { maxTokens: 5 });
  assert.deepEqual([eos.text, eos.finishReason, eos.tokens.length], ['', 'stop', 1]);
  assert.deepEqual(eosIdsOf(engine.model), [1]);
});

test('seeded sampling repeats, and differs from greedy', async () => {
  const engine = engineFor(TINY);
  const prompt = engine.encode('In mathematics, a prime number is');
  const opts = { maxTokens: 16, temperature: 1, topP: 0.95, seed: 42 };
  const a = await engine.generate(prompt, opts);
  const b = await engine.generate(prompt, opts);
  const greedy = await engine.generate(prompt, { maxTokens: 16 });
  assert.deepEqual(a.tokens, b.tokens);
  assert.notDeepEqual(a.tokens, greedy.tokens);
});

const probe = await openDevice();
probe?.device.destroy();
test('WebGPU picks the same greedy tokens as the CPU (llama-tiny)', {
  skip: !probe && 'no WebGPU adapter',
}, async () => {
  const gpu = await WebGpuBackend.create();
  const onGpu = engineFor(TINY, gpu);
  const onCpu = engineFor(TINY);
  for (const text of ['The history of the city begins', 'She opened the door and saw']) {
    const a = await onGpu.generate(onGpu.encode(text), { maxTokens: 24 });
    const b = await onCpu.generate(onCpu.encode(text), { maxTokens: 24 });
    assert.deepEqual(a.tokens, b.tokens);
  }
});

/** Pipelines the device creates while `run` runs. */
async function pipelinesMade(gpu: WebGpuBackend, run: () => Promise<unknown>): Promise<number> {
  let made = 0;
  const device = gpu.device as unknown as { createComputePipeline: (d: unknown) => unknown };
  const create = device.createComputePipeline;
  device.createComputePipeline = (d) => {
    made++;
    return create.call(gpu.device, d);
  };
  try {
    await run();
  } finally {
    device.createComputePipeline = create;
  }
  return made;
}

test('WebGPU warmUp compiles what a request runs (no pipeline made during it) and changes no token (llama-tiny)', {
  skip: !probe && 'no WebGPU adapter',
}, async () => {
  const prompt = engineFor(TINY).encode(
    'The history of the city begins with a small settlement by the river',
  );
  assert.ok(prompt.length > 4);
  let cold: number[] = [];
  // the default chunk of decode attention's keys (64) and a larger one: warmUp splits either
  for (const attentionKeys of [undefined, 128]) {
    const gpu = await WebGpuBackend.create({ attentionKeys });
    cold = (await engineFor(TINY, gpu).generate(prompt, { maxTokens: 140 })).tokens;
    const fresh = await WebGpuBackend.create({ attentionKeys });
    const engine = engineFor(TINY, fresh);
    await engine.warmUp();
    let warmed: number[] = [];
    // past the first chunk of keys (prompt + 140 > 128), where decode attention splits
    const made = await pipelinesMade(fresh, async () => {
      warmed = (await engine.generate(prompt, { maxTokens: 140 })).tokens;
    });
    assert.equal(made, 0, `attentionKeys ${attentionKeys}`);
    assert.deepEqual(warmed, cold);
    gpu.destroy();
    fresh.destroy();
  }
  // the CPU backend compiles nothing: warmUp leaves it alone
  const cpuEngine = engineFor(TINY);
  await cpuEngine.warmUp();
  assert.deepEqual((await cpuEngine.generate(prompt, { maxTokens: 8 })).tokens, cold.slice(0, 8));
});

test('llmq generate --json and llmq chat on piped input', async () => {
  const { stdout } = await run('./bin/llmq', [
    'generate',
    SMALL,
    '--prompt',
    reference.prompts[2].text,
    '--max-tokens',
    '40',
    '--json',
  ]);
  const out = JSON.parse(stdout);
  assert.equal(out.text, reference.prompts[2].greedy_40);
  assert.equal(out.prompt_tokens, reference.prompts[2].ids.length);
  assert.equal(out.finish_reason, 'length');
  const chat = run('./bin/llmq', ['chat', TINY, '--max-tokens', '6']);
  chat.child.stdin?.end('Hello there\n/reset\nHello there\n');
  const { stdout: said } = await chat;
  const answers = said.split('\n').filter((l) => l !== '');
  assert.equal(answers.length, 2);
  assert.equal(answers[0], answers[1]);
  await assert.rejects(
    run('./bin/llmq', ['generate', SMALL, '--prompt', 'x', '--temperature', 'hot']),
    /--temperature must be a number, got "hot"/,
  );
});

test('llmq serve: the OpenAI API over the real model gives the greedy reference text', async () => {
  const { spawn } = await import('node:child_process');
  const child = spawn('./bin/llmq', ['serve', SMALL, '--port', '0', '--api-key', 'k3y'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let err = '';
      child.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /at (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(err);
        if (m) resolve(m[1]);
      });
      child.on('exit', () => reject(new Error(`serve exited: ${err}`)));
    });
    const post = (body: unknown, key = 'k3y') =>
      fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body: JSON.stringify(body),
      });
    const p = reference.prompts[1];
    const res = await post({ prompt: p.text, max_tokens: 40, temperature: 0 });
    assert.equal(res.status, 200);
    const json = (await res.json()) as { choices: { text: string }[]; usage: unknown };
    assert.equal(json.choices[0].text, p.greedy_40);
    assert.deepEqual(json.usage, {
      prompt_tokens: p.ids.length,
      completion_tokens: 40,
      total_tokens: p.ids.length + 40,
    });
    assert.equal((await post({ prompt: p.text }, 'wrong')).status, 401);
  } finally {
    child.kill();
  }
});

test('a chat template that writes BOS gets one BOS; a GGUF export carries the template to generate --chat', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-chat-'));
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json'])
    fs.symlinkSync(path.resolve(`${TINY}/${f}`), `${dir}/${f}`);
  const tokConfig = JSON.parse(fs.readFileSync(`${TINY}/tokenizer_config.json`, 'utf8'));
  tokConfig.chat_template =
    '{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}';
  fs.writeFileSync(`${dir}/tokenizer_config.json`, JSON.stringify(tokConfig));
  const messages = [{ role: 'user' as const, content: 'Hi there' }];
  const engine = engineFor(dir);
  const rendered = loadChatTemplate(dir).render(messages);
  assert.equal(rendered, '<|begin_of_text|><|user|>Hi there\n<|assistant|>');
  const ids = engine.encodeChat(messages);
  // HF encodes a rendered chat without the post-processor's BOS: the template's own BOS is the only one
  assert.deepEqual([...ids], [...loadTokenizer(dir).encode(rendered).subarray(1)]);
  assert.equal(ids[0], 0);
  assert.notEqual(ids[1], 0);
  await run('./bin/llmq', ['export', dir, '--to', 'gguf-f16', '--out', `${dir}/m.gguf`]);
  const fromGguf = ggufChatTemplate(`${dir}/m.gguf`);
  assert.equal(fromGguf.source, 'gguf');
  assert.equal(fromGguf.bosToken, '<|begin_of_text|>');
  assert.equal(fromGguf.render(messages), rendered);
  const chat = async (model: string) =>
    JSON.parse(
      (
        await run('./bin/llmq', [
          'generate',
          model,
          '--chat',
          '--prompt',
          'Hi there',
          '--max-tokens',
          '8',
          '--json',
        ])
      ).stdout,
    );
  const [hf, gguf] = [await chat(dir), await chat(`${dir}/m.gguf`)];
  assert.equal(hf.prompt_tokens, ids.length);
  assert.equal(gguf.prompt_tokens, ids.length);
  fs.rmSync(dir, { recursive: true });
});
