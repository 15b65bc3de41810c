import assert from 'node:assert/strict';
import type http from 'node:http';
import { test } from 'node:test';
import { fail } from '../src/errors.ts';
import type { ChatMessage, Engine, GenerateOptions, GenerateResult } from '../src/runtime/engine.ts';
import { createServer, listen, type ServerOptions } from '../src/runtime/server.ts';

const BOS = 1;

interface Call {
  prompt: string;
  options: GenerateOptions;
  result?: GenerateResult;
}

/**
 * Answers with the prompt's characters reversed, one character per token, ending ('stop') when they
 * run out. Text ids are the characters' code points after a BOS. hold() makes it wait before every
 * token until release(); a prompt containing "boom" throws.
 */
class FakeEngine implements Engine {
  readonly modelName = 'fake-model';
  readonly contextLength = 64;
  readonly calls: Call[] = [];
  encoded = 0;
  active = 0;
  maxActive = 0;
  private gate: Promise<void> = Promise.resolve();
  private open: () => void = () => {};

  encode(text: string): Int32Array {
    this.encoded++;
    return Int32Array.from([BOS, ...Array.from(text, (c) => c.codePointAt(0)!)]);
  }

  encodeChat(messages: readonly ChatMessage[]): Int32Array {
    if (messages[0].role === 'assistant') fail('the conversation must not start with the assistant');
    return this.encode(messages.map((m) => `${m.role}:${m.content}`).join('|'));
  }

  hold(): void {
    this.gate = new Promise((resolve) => (this.open = resolve));
  }

  release(): void {
    this.open();
  }

  async generate(prompt: Int32Array, options: GenerateOptions, onText?: (delta: string) => void) {
    const text = String.fromCodePoint(...prompt.subarray(1));
    if (text.includes('boom')) throw new Error('engine exploded on boom');
    const call: Call = { prompt: text, options };
    this.calls.push(call);
    this.maxActive = Math.max(this.maxActive, ++this.active);
    try {
      call.result = await this.emit(text, options, onText);
      return call.result;
    } finally {
      this.active--;
    }
  }

  private async emit(text: string, options: GenerateOptions, onText?: (delta: string) => void) {
    const { reply, tokens, finishReason } = plannedReply(text, options);
    const result = (out: string, n: number, reason: GenerateResult['finishReason']): GenerateResult => ({
      text: out,
      tokens: Array.from({ length: n }, (_, i) => i),
      promptTokens: text.length + 1,
      finishReason: reason,
      prefillSeconds: 0,
      decodeSeconds: 0,
    });
    for (let i = 0; i < reply.length; i++) {
      await this.gate;
      await new Promise(setImmediate);
      if (options.signal?.aborted) return result(reply.slice(0, i), i, 'abort');
      onText?.(reply[i]);
    }
    return result(reply, tokens, finishReason);
  }
}

/** The reversed prompt cut at maxTokens, then before the earliest stop string (whose tokens count). */
function plannedReply(text: string, options: GenerateOptions) {
  const reversed = Array.from(text).reverse().join('');
  const full = reversed.slice(0, options.maxTokens);
  let cut: { at: number; length: number } | undefined;
  for (const s of options.stop ?? []) {
    const at = full.indexOf(s);
    if (at >= 0 && (cut === undefined || at < cut.at)) cut = { at, length: s.length };
  }
  if (cut) {
    return { reply: full.slice(0, cut.at), tokens: cut.at + cut.length, finishReason: 'stop' as const };
  }
  const finishReason = reversed.length > options.maxTokens ? ('length' as const) : ('stop' as const);
  return { reply: full, tokens: full.length, finishReason };
}

async function serve(engine: Engine, opts: ServerOptions = {}) {
  const server: http.Server = createServer(engine, opts);
  const { url } = await listen(server, '127.0.0.1', 0);
  const close = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  };
  return { url, close };
}

/** What the tests read of OpenAI's responses, chunks and errors. */
interface Reply {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: {
    index: number;
    text?: string;
    message?: { role: string; content: string };
    delta?: { role?: string; content?: string };
    finish_reason: string | null;
    logprobs: null;
  }[];
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  error: { message: string; type: string; param: string | null; code: null };
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, headers: response.headers, json: (await response.json()) as Reply };
}

/** `data: ...` payloads of a Server-Sent Events body. */
function events(text: string): string[] {
  const blocks = text.split('\n\n');
  assert.equal(blocks.pop(), '', 'the stream ends with a blank line');
  return blocks.map((b) => {
    assert.ok(b.startsWith('data: '), b);
    return b.slice('data: '.length);
  });
}

async function streamed(url: string, body: unknown) {
  const response = await fetch(url, {
    method: 'POST',
    body: JSON.stringify({ ...(body as object), stream: true }),
  });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-type'), 'text/event-stream');
  const payloads = events(await response.text());
  assert.equal(payloads.at(-1), '[DONE]');
  return payloads.slice(0, -1).map((p) => JSON.parse(p) as Reply);
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

function invalidRequest(message: string, param: string | null) {
  return { error: { message, type: 'invalid_request_error', param, code: null } };
}

function withoutSignal(options: GenerateOptions) {
  const { signal, ...rest } = options;
  assert.ok(signal instanceof AbortSignal);
  return rest;
}

test('GET /health and /v1/models', async () => {
  const { url, close } = await serve(new FakeEngine());
  try {
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    assert.equal(health.headers.get('content-type'), 'application/json');
    assert.deepEqual(await health.json(), { status: 'ok' });
    const models = await fetch(`${url}/v1/models`);
    assert.deepEqual(await models.json(), {
      object: 'list',
      data: [{ id: 'fake-model', object: 'model', owned_by: 'llmq' }],
    });
  } finally {
    await close();
  }
});

test('POST /v1/completions: fields, default max_tokens 16, stop, array prompt', async () => {
  const engine = new FakeEngine();
  const lines: string[] = [];
  const { url, close } = await serve(engine, { log: (line) => lines.push(line) });
  try {
    const before = Math.floor(Date.now() / 1000);
    const { status, json } = await post(`${url}/v1/completions`, {
      model: 'x',
      prompt: 'hello',
      max_tokens: 3,
    });
    assert.equal(status, 200);
    assert.match(json.id, /^cmpl-[0-9a-f]{32}$/);
    assert.ok(json.created >= before && json.created <= Math.floor(Date.now() / 1000) + 1);
    assert.deepEqual(json, {
      id: json.id,
      object: 'text_completion',
      created: json.created,
      model: 'fake-model',
      choices: [{ index: 0, text: 'oll', finish_reason: 'length', logprobs: null }],
      usage: { prompt_tokens: 6, completion_tokens: 3, total_tokens: 9 },
    });

    const long = await post(`${url}/v1/completions`, { prompt: 'abcdefghijklmnopqrstuvwxyz' });
    assert.deepEqual(long.json.choices[0], {
      index: 0,
      text: 'zyxwvutsrqponmlk',
      finish_reason: 'length',
      logprobs: null,
    });
    assert.deepEqual(long.json.usage, { prompt_tokens: 27, completion_tokens: 16, total_tokens: 43 });

    const short = await post(`${url}/v1/completions`, { prompt: ['abc'] });
    assert.equal(short.json.choices[0].text, 'cba');
    assert.equal(short.json.choices[0].finish_reason, 'stop');

    // "dlrow olleh": "w o" at 4 comes before "lle" at 7; its 3 tokens count
    const stopped = await post(`${url}/v1/completions`, { prompt: 'hello world', stop: ['lle', 'w o'] });
    assert.equal(stopped.json.choices[0].text, 'dlro');
    assert.equal(stopped.json.choices[0].finish_reason, 'stop');
    assert.deepEqual(stopped.json.usage, { prompt_tokens: 12, completion_tokens: 7, total_tokens: 19 });

    assert.match(lines.join('\n'), /^POST \/v1\/completions 200 \d+ ms$/m);
    assert.match(lines.join('\n'), /^generated 3 tokens after a 6-token prompt .*finish length$/m);
  } finally {
    await close();
  }
});

test('POST /v1/chat/completions: fields, default max_tokens = the rest of the context', async () => {
  const engine = new FakeEngine();
  const { url, close } = await serve(engine);
  try {
    const messages = [
      { role: 'system', content: 'be' },
      { role: 'user', content: [{ type: 'text', text: 'hi' }] },
    ];
    const { status, json } = await post(`${url}/v1/chat/completions`, { messages });
    assert.equal(status, 200);
    assert.match(json.id, /^chatcmpl-[0-9a-f]{32}$/);
    assert.deepEqual(json, {
      id: json.id,
      object: 'chat.completion',
      created: json.created,
      model: 'fake-model',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: 'ih:resu|eb:metsys' },
          finish_reason: 'stop',
          logprobs: null,
        },
      ],
      usage: { prompt_tokens: 18, completion_tokens: 17, total_tokens: 35 },
    });
    assert.equal(engine.calls[0].prompt, 'system:be|user:hi');
    assert.deepEqual(withoutSignal(engine.calls[0].options), { temperature: 1, maxTokens: 64 - 18 });

    // developer is OpenAI's new name for system
    const dev = await post(`${url}/v1/chat/completions`, { messages: [{ role: 'developer', content: 'd' }] });
    assert.equal(dev.json.choices[0].message?.content, 'd:metsys');
  } finally {
    await close();
  }
});

test('OpenAI sampling fields map to GenerateOptions', async () => {
  const engine = new FakeEngine();
  const { url, close } = await serve(engine);
  const sent = async (path: string, body: object) => {
    const { status, json } = await post(`${url}${path}`, body);
    assert.equal(status, 200, JSON.stringify(json));
    return withoutSignal(engine.calls.at(-1)!.options);
  };
  try {
    const all = {
      prompt: 'abc',
      max_tokens: 5,
      temperature: 0.5,
      top_p: 0.9,
      top_k: 40,
      min_p: 0.05,
      repetition_penalty: 1.1,
      seed: 7,
      stop: 'x',
    };
    assert.deepEqual(await sent('/v1/completions', all), {
      maxTokens: 5,
      temperature: 0.5,
      topP: 0.9,
      topK: 40,
      minP: 0.05,
      repetitionPenalty: 1.1,
      seed: 7,
      stop: ['x'],
    });
    assert.deepEqual(await sent('/v1/completions', { prompt: 'abc' }), { maxTokens: 16, temperature: 1 });
    assert.deepEqual(
      await sent('/v1/completions', { prompt: 'abc', temperature: 0, top_k: -1, top_p: null }),
      {
        maxTokens: 16,
        temperature: 0,
        topK: 0,
      },
    );
    assert.deepEqual(await sent('/v1/completions', { prompt: 'abc', stop: ['a', 'bc'], stream: false }), {
      maxTokens: 16,
      temperature: 1,
      stop: ['a', 'bc'],
    });
    const chat = { messages: [{ role: 'user', content: 'hi' }] }; // "user:hi": 8 tokens, 56 left
    assert.equal((await sent('/v1/chat/completions', { ...chat, max_tokens: 9 })).maxTokens, 9);
    assert.equal(
      (await sent('/v1/chat/completions', { ...chat, max_tokens: 9, max_completion_tokens: 4 })).maxTokens,
      4,
    );
    assert.equal((await sent('/v1/chat/completions', { ...chat, max_tokens: 1000 })).maxTokens, 56);
  } finally {
    await close();
  }
});

test('max_tokens is bounded by the context; a prompt that fills it is refused', async () => {
  const engine = new FakeEngine();
  const { url, close } = await serve(engine);
  try {
    const oneLeft = await post(`${url}/v1/completions`, { prompt: 'a'.repeat(62), max_tokens: 16 });
    assert.equal(oneLeft.status, 200);
    assert.equal(engine.calls[0].options.maxTokens, 1);
    assert.equal(oneLeft.json.choices[0].finish_reason, 'length');
    const full = await post(`${url}/v1/completions`, { prompt: 'a'.repeat(63) });
    assert.equal(full.status, 400);
    assert.deepEqual(
      full.json,
      invalidRequest("prompt: 64 tokens leave no room in the model's context of 64 tokens", 'prompt'),
    );
    const chat = await post(`${url}/v1/chat/completions`, {
      messages: [{ role: 'user', content: 'a'.repeat(58) }],
    });
    assert.equal(chat.status, 400);
    assert.equal(chat.json.error.param, 'messages');
    assert.equal(engine.calls.length, 1);
  } finally {
    await close();
  }
});

test('streamed chunks add up to the non-streamed answer and end with [DONE]', async () => {
  const { url, close } = await serve(new FakeEngine());
  try {
    const body = { prompt: 'hello world', max_tokens: 8, stop: 'o' };
    const whole = (await post(`${url}/v1/completions`, body)).json.choices[0];
    assert.deepEqual([whole.text, whole.finish_reason], ['dlr', 'stop']);
    const chunks = await streamed(`${url}/v1/completions`, body);
    assert.deepEqual(
      chunks.map((c) => [c.object, c.model, c.choices[0].text, c.choices[0].finish_reason]),
      [
        ['text_completion', 'fake-model', 'd', null],
        ['text_completion', 'fake-model', 'l', null],
        ['text_completion', 'fake-model', 'r', null],
        ['text_completion', 'fake-model', '', 'stop'],
      ],
    );
    assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
    assert.match(chunks[0].id, /^cmpl-/);

    const long = { prompt: 'abcdefghijklmnopqrstuvwxyz', max_tokens: 20 };
    const longWhole = (await post(`${url}/v1/completions`, long)).json.choices[0];
    const longChunks = await streamed(`${url}/v1/completions`, long);
    assert.equal(longChunks.map((c) => c.choices[0].text).join(''), longWhole.text);
    assert.equal(longChunks.at(-1)?.choices[0].finish_reason, 'length');

    const chat = { messages: [{ role: 'user', content: 'hey' }], max_tokens: 5 };
    const chatWhole = (await post(`${url}/v1/chat/completions`, chat)).json.choices[0];
    assert.equal(chatWhole.message?.content, 'yeh:r');
    const chatChunks = await streamed(`${url}/v1/chat/completions`, {
      ...chat,
      stream_options: { include_usage: true },
    });
    assert.ok(chatChunks.every((c) => c.id === chatChunks[0].id && /^chatcmpl-/.test(c.id)));
    assert.ok(chatChunks.every((c) => c.object === 'chat.completion.chunk'));
    assert.deepEqual(
      chatChunks.slice(0, -1).map((c) => [c.choices[0].delta, c.choices[0].finish_reason]),
      [
        [{ role: 'assistant', content: '' }, null],
        [{ content: 'y' }, null],
        [{ content: 'e' }, null],
        [{ content: 'h' }, null],
        [{ content: ':' }, null],
        [{ content: 'r' }, null],
        [{}, 'length'],
      ],
    );
    const content = chatChunks.slice(0, -1).map((c) => c.choices[0].delta?.content ?? '');
    assert.equal(content.join(''), chatWhole.message?.content);
    assert.deepEqual(chatChunks.at(-1)?.choices, []);
    assert.deepEqual(chatChunks.at(-1)?.usage, { prompt_tokens: 9, completion_tokens: 5, total_tokens: 14 });
  } finally {
    await close();
  }
});

test('401 without the right API key; /health stays open', async () => {
  const { url, close } = await serve(new FakeEngine(), { apiKey: 'sekret' });
  try {
    const message = 'missing or wrong API key: send the header Authorization: Bearer <key>';
    const attempts: Record<string, string>[] = [
      {},
      { authorization: 'Bearer wrong' },
      { authorization: 'sekret' },
    ];
    for (const headers of attempts) {
      const response = await fetch(`${url}/v1/models`, { headers });
      assert.equal(response.status, 401);
      assert.equal(response.headers.get('www-authenticate'), 'Bearer');
      assert.deepEqual(await response.json(), invalidRequest(message, null));
    }
    const denied = await post(`${url}/v1/completions`, { prompt: 'a' }, { authorization: 'Bearer sekre' });
    assert.equal(denied.status, 401);
    const ok = await post(`${url}/v1/completions`, { prompt: 'ab' }, { authorization: 'Bearer sekret' });
    assert.equal(ok.status, 200);
    assert.equal(ok.json.choices[0].text, 'ba');
    assert.equal((await fetch(`${url}/health`)).status, 200);
  } finally {
    await close();
  }
});

test('413 for a body over maxBodyBytes, declared or streamed', async () => {
  const engine = new FakeEngine();
  const { url, close } = await serve(engine, { maxBodyBytes: 60 });
  try {
    const fits = JSON.stringify({ prompt: 'x'.repeat(60 - 13) });
    assert.equal(fits.length, 60);
    assert.equal((await post(`${url}/v1/completions`, fits)).status, 200);
    const over = await post(`${url}/v1/completions`, JSON.stringify({ prompt: 'x'.repeat(60 - 12) }));
    assert.equal(over.status, 413);
    assert.deepEqual(over.json, invalidRequest('the request body exceeds 60 bytes', null));
    // 8 MB sent chunked (no content-length): refused after the first chunks
    const body = new ReadableStream({
      start(controller) {
        for (let i = 0; i < 128; i++) controller.enqueue(new Uint8Array(65536).fill(32));
        controller.close();
      },
    });
    const streamedOver = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      body,
      duplex: 'half',
    } as RequestInit);
    assert.equal(streamedOver.status, 413);
    assert.equal(engine.calls.length, 1);
    assert.equal((await post(`${url}/v1/completions`, { prompt: 'ok' })).status, 200);
  } finally {
    await close();
  }
});

test('400 names the field that is wrong', async () => {
  const engine = new FakeEngine();
  const { url, close } = await serve(engine);
  const completions = `${url}/v1/completions`;
  const chat = `${url}/v1/chat/completions`;
  const cases: [string, unknown, string | null, string][] = [
    [completions, '{"prompt": ', null, 'the request body is not valid JSON ('],
    [completions, '[1]', null, 'the request body must be a JSON object'],
    [completions, {}, 'prompt', 'prompt: expected a string (or an array of one string), got undefined'],
    [
      completions,
      { prompt: ['a', 'b'] },
      'prompt',
      'prompt: expected a string (or an array of one string), got ["a","b"]',
    ],
    [
      completions,
      { prompt: 'a', temperature: 'hot' },
      'temperature',
      'temperature: expected a number >= 0, got "hot"',
    ],
    [completions, { prompt: 'a', top_p: 0 }, 'top_p', 'top_p: expected a number in (0, 1], got 0'],
    [
      completions,
      { prompt: 'a', top_k: 2.5 },
      'top_k',
      'top_k: expected an integer >= -1 (-1 or 0: off), got 2.5',
    ],
    [
      completions,
      { prompt: 'a', max_tokens: 0 },
      'max_tokens',
      'max_tokens: expected an integer >= 1, got 0',
    ],
    [completions, { prompt: 'a', seed: '1' }, 'seed', 'seed: expected an integer, got "1"'],
    [
      completions,
      { prompt: 'a', stop: [''] },
      'stop',
      'stop: expected a non-empty string or an array of them, got [""]',
    ],
    [completions, { prompt: 'a', stream: 'yes' }, 'stream', 'stream: expected true or false, got "yes"'],
    [completions, { prompt: 'a', n: 2 }, 'n', 'n: 2 is not supported by this server'],
    [completions, { prompt: 'a', model: 3 }, 'model', 'model: expected a string, got 3'],
    [chat, { messages: [] }, 'messages', 'messages: expected a non-empty array of {role, content}, got []'],
    [
      chat,
      {
        messages: [
          { role: 'user', content: 'a' },
          { role: 'tool', content: 'b' },
        ],
      },
      'messages[1].role',
      'messages[1].role: expected system, developer, user or assistant, got "tool"',
    ],
    [
      chat,
      { messages: [{ role: 'user', content: [{ type: 'image_url' }] }] },
      'messages[0].content',
      'messages[0].content: expected a string or an array of {type: "text", text}, got [{"type":"image_url"}]',
    ],
    [
      chat,
      { messages: [{ role: 'user', content: 'a' }], max_completion_tokens: -1 },
      'max_completion_tokens',
      'max_completion_tokens: expected an integer >= 1, got -1',
    ],
    // the engine's (chat template's) own refusal of the conversation
    [
      chat,
      { messages: [{ role: 'assistant', content: 'a' }] },
      null,
      'the conversation must not start with the assistant',
    ],
  ];
  try {
    for (const [endpoint, body, param, message] of cases) {
      const { status, json } = await post(endpoint, body);
      assert.equal(status, 400, JSON.stringify(body));
      assert.equal(json.error.type, 'invalid_request_error');
      assert.equal(json.error.param, param);
      if (message.endsWith('(')) assert.ok(json.error.message.startsWith(message), json.error.message);
      else assert.equal(json.error.message, message);
    }
    assert.equal(engine.calls.length, 0);
  } finally {
    await close();
  }
});

test('404 for an unknown path, 405 for a wrong method', async () => {
  const { url, close } = await serve(new FakeEngine());
  try {
    const missing = await fetch(`${url}/v1/embeddings`, { method: 'POST', body: '{}' });
    assert.equal(missing.status, 404);
    assert.deepEqual(await missing.json(), invalidRequest('no such endpoint: /v1/embeddings', null));
    const getCompletions = await fetch(`${url}/v1/completions`);
    assert.equal(getCompletions.status, 405);
    assert.equal(getCompletions.headers.get('allow'), 'POST');
    assert.deepEqual(
      await getCompletions.json(),
      invalidRequest('/v1/completions takes POST, not GET', null),
    );
    const postHealth = await fetch(`${url}/health?x=1`, { method: 'POST', body: '{}' });
    assert.equal(postHealth.status, 405);
    assert.equal(postHealth.headers.get('allow'), 'GET');
  } finally {
    await close();
  }
});

test('one generation at a time, in arrival order; 429 beyond maxQueue waiting', async () => {
  const engine = new FakeEngine();
  const { url, close } = await serve(engine, { maxQueue: 2 });
  try {
    engine.hold();
    const answers: ReturnType<typeof post>[] = [];
    for (const [i, prompt] of ['ab', 'cd', 'ef'].entries()) {
      answers.push(post(`${url}/v1/completions`, { prompt }));
      await waitFor(() => engine.encoded === i + 1, `request ${prompt} to arrive`);
    }
    await waitFor(() => engine.calls.length === 1, 'the first generation');
    const busy = await post(`${url}/v1/completions`, { prompt: 'gh' });
    assert.equal(busy.status, 429);
    assert.equal(busy.headers.get('retry-after'), '1');
    assert.deepEqual(busy.json, {
      error: {
        message: 'the server is busy: 2 requests are already waiting',
        type: 'rate_limit_exceeded',
        param: null,
        code: null,
      },
    });
    assert.equal(engine.calls.length, 1);
    engine.release();
    const done = await Promise.all(answers);
    assert.deepEqual(
      done.map((a) => [a.status, a.json.choices[0].text]),
      [
        [200, 'ba'],
        [200, 'dc'],
        [200, 'fe'],
      ],
    );
    assert.deepEqual(
      engine.calls.map((c) => c.prompt),
      ['ab', 'cd', 'ef'],
    );
    assert.equal(engine.maxActive, 1);
    assert.equal((await post(`${url}/v1/completions`, { prompt: 'ij' })).status, 200);
  } finally {
    await close();
  }
});

test('a client that disconnects aborts its generation or leaves the queue; the next one runs', async () => {
  const engine = new FakeEngine();
  const { url, close } = await serve(engine);
  try {
    engine.hold();
    const streamer = new AbortController();
    const running = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ messages: [{ role: 'user', content: 'first' }], stream: true }),
      signal: streamer.signal,
    });
    const reader = running.body!.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    assert.match(first, /"delta":\{"role":"assistant","content":""\}/);
    await waitFor(() => engine.calls.length === 1, 'the streamed generation to start');

    const waiter = new AbortController();
    const waiting = fetch(`${url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ prompt: 'never' }),
      signal: waiter.signal,
    });
    await waitFor(() => engine.encoded === 2, 'the second request to queue');
    const next = post(`${url}/v1/completions`, { prompt: 'next' });
    await waitFor(() => engine.encoded === 3, 'the third request to queue');

    waiter.abort();
    await assert.rejects(waiting, { name: 'AbortError' });
    streamer.abort();
    await waitFor(() => engine.calls[0].options.signal!.aborted, 'the engine to see the abort');
    engine.release();
    const answer = await next;
    assert.equal(answer.status, 200);
    assert.equal(answer.json.choices[0].text, 'txen');
    assert.equal(engine.calls[0].result?.finishReason, 'abort');
    assert.deepEqual(
      engine.calls.map((c) => c.prompt),
      ['user:first', 'next'],
    );

    // the same for a request that is not streamed
    engine.hold();
    const plain = new AbortController();
    const abandoned = fetch(`${url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ prompt: 'abandoned' }),
      signal: plain.signal,
    });
    await waitFor(() => engine.calls.length === 3, 'the plain generation to start');
    const after = post(`${url}/v1/completions`, { prompt: 'after' });
    await waitFor(() => engine.encoded === 5, 'the request after it to queue');
    plain.abort();
    await assert.rejects(abandoned, { name: 'AbortError' });
    await waitFor(() => engine.calls[2].options.signal!.aborted, 'the engine to see the plain abort');
    engine.release();
    assert.equal((await after).json.choices[0].text, 'retfa');
    assert.equal(engine.calls[2].result?.finishReason, 'abort');
  } finally {
    await close();
  }
});

test('an engine error is a 500 with its message, and the server goes on', async () => {
  const engine = new FakeEngine();
  const lines: string[] = [];
  const { url, close } = await serve(engine, { log: (line) => lines.push(line) });
  try {
    const failed = await post(`${url}/v1/completions`, { prompt: 'boom' });
    assert.equal(failed.status, 500);
    assert.deepEqual(failed.json, {
      error: { message: 'engine exploded on boom', type: 'server_error', param: null, code: null },
    });
    assert.match(lines.join('\n'), /^error: Error: engine exploded on boom/m);
    // streamed: the 200 is already sent, so the error comes as an event before [DONE]
    const response = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ prompt: 'boom', stream: true }),
    });
    assert.equal(response.status, 200);
    const payloads = events(await response.text());
    assert.deepEqual(payloads, [
      JSON.stringify({
        error: { message: 'engine exploded on boom', type: 'server_error', param: null, code: null },
      }),
      '[DONE]',
    ]);
    const ok = await post(`${url}/v1/completions`, { prompt: 'fine' });
    assert.equal(ok.status, 200);
    assert.equal(ok.json.choices[0].text, 'enif');
  } finally {
    await close();
  }
});

test('listen binds 127.0.0.1 by default; bad settings are refused', async () => {
  const server = createServer(new FakeEngine());
  const { url } = await listen(server);
  try {
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((await fetch(`${url}/health`)).status, 200);
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  await assert.rejects(listen(createServer(new FakeEngine()), '127.0.0.1', 70000), {
    name: 'UserError',
    message: 'port: expected an integer from 0 to 65535, got 70000',
  });
  assert.throws(() => createServer(new FakeEngine(), { maxQueue: -1 }), {
    name: 'UserError',
    message: 'maxQueue: expected an integer >= 0, got -1',
  });
});
