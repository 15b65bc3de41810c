/** Reading the small JSON files that sit beside a model (tokenizer, configs). */
import fs from 'node:fs';
import { fail } from '../errors.ts';

/** A file holding one JSON object, or one clear line naming the file. */
export function readJsonObject(file: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return fail(`${file}: not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    fail(`${file}: expected a JSON object`);
  return value as Record<string, unknown>;
}
