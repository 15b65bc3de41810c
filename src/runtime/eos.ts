/** End-of-sequence ids of a model directory (Node only). */
import fs from 'node:fs';
import path from 'node:path';
import { readJsonObject } from '../io/json.ts';
import type { LlamaModel } from '../model/llama.ts';
import { asIds, configEosIds } from './generate.ts';

/** eos_token_id of the model config, plus generation_config.json's (instruct models often add one). */
export function eosIdsOf(model: LlamaModel): number[] {
  const ids = new Set<number>(configEosIds(model.config));
  const file = path.join(model.dir, 'generation_config.json');
  if (fs.existsSync(file)) for (const id of asIds(readJsonObject(file).eos_token_id)) ids.add(id);
  return [...ids];
}
