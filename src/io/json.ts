/** Reading the small JSON files that sit beside a model (tokenizer, configs) from disk. */
import fs from 'node:fs';
import { fail } from '../errors.ts';
import { parseJsonObject } from './json-object.ts';

/** A file holding one JSON object, or one clear line naming the file. */
export function readJsonObject(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    return fail(`${file}: not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  return parseJsonObject(text, file);
}
