/** Reading a model's chat template from disk: its directory or a GGUF file (Node only). */
import fs from 'node:fs';
import path from 'node:path';
import { ggufMeta, readGguf } from '../io/gguf.ts';
import { readJsonObject } from '../io/json.ts';
import { type ChatTemplate, chatTemplateFrom, jinjaTemplate, renderFallback } from './chat-template.ts';

export function loadChatTemplate(modelDir: string): ChatTemplate {
  const configFile = path.join(modelDir, 'tokenizer_config.json');
  const config = fs.existsSync(configFile) ? readJsonObject(configFile) : {};
  const jinjaFile = path.join(modelDir, 'chat_template.jinja');
  const jinja = fs.existsSync(jinjaFile)
    ? { file: jinjaFile, text: fs.readFileSync(jinjaFile, 'utf8') }
    : undefined;
  return chatTemplateFrom(config, configFile, jinja);
}

/** The template a GGUF file embeds (`tokenizer.chat_template`), with its BOS/EOS token texts. */
export function ggufChatTemplate(file: string): ChatTemplate {
  const gguf = readGguf(file);
  const tokens = ggufMeta(gguf, 'tokenizer.ggml.tokens');
  const tokenText = (key: string): string | undefined => {
    const id = ggufMeta(gguf, key);
    return typeof id === 'number' && Array.isArray(tokens) && typeof tokens[id] === 'string'
      ? tokens[id]
      : undefined;
  };
  const bosToken = tokenText('tokenizer.ggml.bos_token_id');
  const text = ggufMeta(gguf, 'tokenizer.chat_template');
  if (typeof text !== 'string') return { source: 'fallback', bosToken, render: renderFallback };
  return jinjaTemplate('gguf', file, text, bosToken, tokenText('tokenizer.ggml.eos_token_id'));
}
