/** Reading an evaluation text file (Node only). */

import fs from 'node:fs';
import { fail } from '../errors.ts';
import { datasetRows } from './perplexity.ts';

/** The file's rows joined as lm-eval/GPTQ do for WikiText-2: blank-line separated. */
export function readEvalText(file: string): string {
  if (!fs.existsSync(file)) fail(`${file}: evaluation text file not found`);
  const raw = fs.readFileSync(file, 'utf8');
  if (raw.trim() === '') fail(`${file}: evaluation text file is empty`);
  return datasetRows(raw).join('\n\n');
}
