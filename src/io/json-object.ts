/** Parsing the small JSON files that sit beside a model (tokenizer, configs); no file I/O. */
import { fail } from '../errors.ts';

/** `text` as one JSON object, or one clear line naming `file`. */
export function parseJsonObject(text: string, file: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return fail(`${file}: not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    fail(`${file}: expected a JSON object`);
  return value as Record<string, unknown>;
}
