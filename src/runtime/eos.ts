/** End-of-sequence ids of a model directory (Node only). */
import fs from 'node:fs';
import path from 'node:path';
import { readJsonObject } from '../io/json.ts';
import type { LlamaModel } from '../model/llama.ts';
import { eosIdsFrom } from './generate.ts';

/** eos_token_id of the model config, plus generation_config.json's (instruct models often add one). */
export function eosIdsOf(model: LlamaModel): number[] {
  const file = path.join(model.dir, 'generation_config.json');
  return eosIdsFrom(model.config, fs.existsSync(file) ? readJsonObject(file) : undefined);
}
