/** Reading a model's chat template from disk: its directory or a GGUF file (Node only). */
import fs from 'node:fs';
import path from 'node:path';
import { readGguf } from '../io/gguf.ts';
import { readJsonObject } from '../io/json.ts';
import { type ChatTemplate, chatTemplateFrom, ggufChatTemplateOf } from './chat-template.ts';

export function loadChatTemplate(modelDir: string): ChatTemplate {
  const configFile = path.join(modelDir, 'tokenizer_config.json');
  const config = fs.existsSync(configFile) ? readJsonObject(configFile) : {};
  const jinjaFile = path.join(modelDir, 'chat_template.jinja');
  const jinja = fs.existsSync(jinjaFile)
    ? { file: jinjaFile, text: fs.readFileSync(jinjaFile, 'utf8') }
    : undefined;
  return chatTemplateFrom(config, configFile, jinja);
}

/** The template a GGUF file on disk embeds (`tokenizer.chat_template`), with its BOS/EOS token texts. */
export function ggufChatTemplate(file: string): ChatTemplate {
  return ggufChatTemplateOf(readGguf(file));
}
