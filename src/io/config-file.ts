/** Reading config.json from disk (Node only; config.ts parses it anywhere). */

import * as fs from 'node:fs';
import * as nodePath from 'node:path';
import { fail } from '../errors.ts';
import { type ModelConfig, parseModelConfig } from './config.ts';

/** Reads and normalizes `<dir>/config.json` (a path to the json file itself is accepted too). */
export function loadModelConfig(dir: string): ModelConfig {
  const file = dir.endsWith('.json') ? dir : nodePath.join(dir, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    fail(
      `${file}: cannot read model config (${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)})`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    fail(`${file}: not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  return parseModelConfig(raw, file);
}
