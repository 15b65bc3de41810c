import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { UserError } from '../src/errors.ts';
import { startsWithBos } from '../src/runtime/chat-template.ts';
import { loadChatTemplate } from '../src/runtime/chat-template-file.ts';
import type { ChatMessage } from '../src/runtime/engine.ts';
import { MODELS } from './helpers.ts';

// Meta-Llama-3-8B-Instruct's template; String.raw keeps `\n` as the Jinja escape the JSON file holds.
const LLAMA3 = String.raw`{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}`;

// Qwen2-7B-Instruct's ChatML template (adds a default system message).
const CHATML = String.raw`{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}`;

const CONVERSATION: ChatMessage[] = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: '  Hi there  ' },
  { role: 'assistant', content: 'Hello.' },
  { role: 'user', content: 'Bye' },
];

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

function modelDir(files: Record<string, unknown>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-chat-'));
  tempDirs.push(dir);
  for (const [name, content] of Object.entries(files)) {
    const text = typeof content === 'string' ? content : JSON.stringify(content, null, 2);
    fs.writeFileSync(path.join(dir, name), text);
  }
  return dir;
}

test('Llama-3 template from tokenizer_config.json, BOS given as an AddedToken object', () => {
  const dir = modelDir({
    'tokenizer_config.json': {
      bos_token: { __type: 'AddedToken', content: '<|begin_of_text|>', lstrip: false, special: true },
      eos_token: '<|eot_id|>',
      chat_template: LLAMA3,
    },
  });
  const template = loadChatTemplate(dir);
  assert.equal(template.source, 'tokenizer_config');
  assert.equal(template.bosToken, '<|begin_of_text|>');
  const rendered = template.render(CONVERSATION);
  assert.equal(
    rendered,
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>' +
      '<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>' +
      '<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\n',
  );
  assert.equal(startsWithBos(rendered, template.bosToken), true);
});

test('ChatML (Qwen2) template: default system message, no BOS', () => {
  const dir = modelDir({
    'tokenizer_config.json': { bos_token: null, eos_token: '<|im_end|>', chat_template: CHATML },
  });
  const template = loadChatTemplate(dir);
  assert.equal(template.source, 'tokenizer_config');
  assert.equal(template.bosToken, undefined);
  const rendered = template.render([{ role: 'user', content: 'What is 2+2?' }]);
  assert.equal(
    rendered,
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
      '<|im_start|>user\nWhat is 2+2?<|im_end|>\n' +
      '<|im_start|>assistant\n',
  );
  assert.equal(startsWithBos(rendered, template.bosToken), false);
  assert.equal(
    template.render(CONVERSATION.slice(0, 2)),
    '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n  Hi there  <|im_end|>\n<|im_start|>assistant\n',
  );
});

test('a list of named templates: "default" is used', () => {
  const dir = modelDir({
    'tokenizer_config.json': {
      chat_template: [
        { name: 'tool_use', template: 'TOOLS' },
        { name: 'default', template: CHATML },
      ],
    },
  });
  assert.equal(
    loadChatTemplate(dir).render([{ role: 'system', content: 'S' }]),
    '<|im_start|>system\nS<|im_end|>\n<|im_start|>assistant\n',
  );
  const noDefault = modelDir({
    'tokenizer_config.json': { chat_template: [{ name: 'tool_use', template: 'x' }] },
  });
  assert.throws(() => loadChatTemplate(noDefault), {
    name: 'UserError',
    message: `${path.join(noDefault, 'tokenizer_config.json')}: chat_template lists templates (tool_use) but none named "default"`,
  });
});

test('chat_template.jinja takes priority over tokenizer_config.json, with trim_blocks and lstrip_blocks', () => {
  const jinja = [
    '{% for message in messages %}',
    '<{{ message.role }}>{{ message.content }}',
    '    {% endfor %}',
    '{% if add_generation_prompt %}',
    '<assistant>{{ eos_token }}',
    '{% endif %}',
    '',
  ].join('\n');
  const dir = modelDir({
    'tokenizer_config.json': { eos_token: '</s>', chat_template: CHATML },
    'chat_template.jinja': jinja,
  });
  const template = loadChatTemplate(dir);
  assert.equal(template.source, 'chat_template.jinja');
  assert.equal(template.render(CONVERSATION.slice(2)), '<assistant>Hello.\n<user>Bye\n<assistant></s>\n');
});

test('fallback plain format without a template', () => {
  const expected =
    'System: You are terse.\n\nUser:   Hi there  \n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:';
  const empty = loadChatTemplate(modelDir({}));
  assert.equal(empty.source, 'fallback');
  assert.equal(empty.bosToken, undefined);
  assert.equal(empty.render(CONVERSATION), expected);
  const llamaSmall = loadChatTemplate(`${MODELS}llama-small`);
  assert.equal(llamaSmall.source, 'fallback');
  assert.equal(llamaSmall.bosToken, '<|begin_of_text|>');
  assert.equal(llamaSmall.render([{ role: 'user', content: 'Hi' }]), 'User: Hi\n\nAssistant:');
  assert.equal(startsWithBos(llamaSmall.render(CONVERSATION), llamaSmall.bosToken), false);
});

test('startsWithBos', () => {
  assert.equal(startsWithBos('<s>[INST] hi', '<s>'), true);
  assert.equal(startsWithBos(' <s>[INST] hi', '<s>'), false);
  assert.equal(startsWithBos('<s>hi', ''), false);
  assert.equal(startsWithBos('<s>hi', undefined), false);
});

test('a template that does not parse gives one line naming the file', () => {
  const dir = modelDir({ 'chat_template.jinja': '{% for message in messages %}{{ message.content }}' });
  const file = path.join(dir, 'chat_template.jinja');
  assert.throws(
    () => loadChatTemplate(dir),
    (e: unknown) =>
      e instanceof UserError &&
      e.message.startsWith(`${file}: the chat template does not parse (`) &&
      !e.message.includes('\n'),
  );
});

test('a template that fails while rendering names the file and keeps its message', () => {
  const strict =
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ message['content'] }}{% endfor %}";
  const dir = modelDir({ 'tokenizer_config.json': { chat_template: strict } });
  const template = loadChatTemplate(dir);
  assert.equal(template.render([{ role: 'user', content: 'ok' }]), 'ok');
  assert.throws(() => template.render(CONVERSATION), {
    name: 'UserError',
    message: `${path.join(dir, 'tokenizer_config.json')}: the chat template failed on this conversation (System role not supported)`,
  });
  const unknownFilter = modelDir({
    'tokenizer_config.json': { chat_template: '{{ messages | frobnicate }}' },
  });
  assert.throws(() => loadChatTemplate(unknownFilter), {
    name: 'UserError',
    message: /tokenizer_config\.json: the chat template does not render a one-message conversation \(/,
  });
});

test('tokenizer_config.json that is not JSON', () => {
  const dir = modelDir({ 'tokenizer_config.json': '{"chat_template": ' });
  assert.throws(() => loadChatTemplate(dir), {
    name: 'UserError',
    message: /tokenizer_config\.json: not valid JSON/,
  });
});
