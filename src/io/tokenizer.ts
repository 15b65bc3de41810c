/** Loading a model directory's tokenizer files from disk (Node only). */
import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../errors.ts';
import { readJsonObject } from './json.ts';
import { type TextTokenizer, tokenizerFromJson } from './tokenizer-json.ts';

export type { TextTokenizer } from './tokenizer-json.ts';

export function loadTokenizer(dir: string): TextTokenizer {
  const file = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) fail(`${dir}: tokenizer.json is missing (llmq needs the HF fast tokenizer file)`);
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfg = fs.existsSync(cfgFile) ? readJsonObject(cfgFile) : {};
  return tokenizerFromJson(readJsonObject(file), cfg, file);
}
