/**
 * One BENCHMARKS.md section from a device call that ran two or more builds side by side: the row-op
 * profile of bench/gpu.ts (files rows-<tag>-*.json) and the 8B-shaped decode of bench/generate.ts
 * (files gen-<tag>-*.json), each build's best run a row, ratios against the first tag.
 *
 *   node --import ./src/loader.mjs bench/compare-gpu.ts --dir <fetched files> --tags base,new --gpu NAME \
 *     --builds "base = 586474b, new = 69b55fc" --ran "<the device command>" [--notes FILE] [--no-write]
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { type KernelShare, largestKernels, publish, type Row, table } from './report.ts';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    tags: { type: 'string', default: 'base,new' },
    gpu: { type: 'string', default: 'the GPU' },
    builds: { type: 'string', default: '' },
    ran: { type: 'string', default: '' },
    notes: { type: 'string' },
    'no-write': { type: 'boolean', default: false },
  },
});
if (!values.dir) {
  console.error('compare-gpu: --dir (the folder of fetched result files) is required');
  process.exit(1);
}
const dir = values.dir;
const tags = values.tags.split(',');

type Result = Record<string, unknown> & { what: string };
type Generate = Result & {
  model: string;
  decodeTokensPerSecond: number;
  encodeMsPerToken: number;
  ids: number[];
  kernels?: KernelShare[];
};

/** Every result of the files `<prefix>-<tag>-*.json` (or `<prefix>-<tag>.json`). */
function results(prefix: string, tag: string): Result[] {
  const files = fs
    .readdirSync(dir)
    .filter(
      (f) => f === `${prefix}-${tag}.json` || (f.startsWith(`${prefix}-${tag}-`) && f.endsWith('.json')),
    );
  return files.flatMap((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as Result[]);
}

function rowOps(): Row[] {
  const byOp = new Map<string, Row>();
  const rowTags = tags.filter((tag) => results('rows', tag).length > 0);
  for (const tag of rowTags)
    for (const r of results('rows', tag).filter((r) => r.what === 'rowop')) {
      const op = r.op as string;
      const row = byOp.get(op) ?? { 'row op (one row unless said)': op };
      const us = r.us as number;
      const key = `${tag} us`;
      if (row[key] === undefined || us < (row[key] as number)) row[key] = us;
      byOp.set(op, row);
    }
  for (const row of byOp.values())
    for (const tag of rowTags.slice(1))
      row[`${tag} / ${rowTags[0]}`] = (row[`${tag} us`] as number) / (row[`${rowTags[0]} us`] as number);
  return [...byOp.values()];
}

function exactness(): string {
  return tags
    .flatMap((tag) =>
      results('rows', tag)
        .filter((r) => r.what === 'rowop exactness')
        .slice(0, 1)
        .map(
          (r) =>
            `${tag}: ${r.codesDiffer} of ${r.values} int8 codes and ${r.fakeQuantDiffer} fakeQuant values differ from the CPU`,
        ),
    )
    .join('; ');
}

/** What the decode rows ran: prompt and new tokens as the results record them. */
function decodeCommand(): string {
  const runs = tags.flatMap((t) => results('gen', t)).filter((r) => r.what === 'generate') as Generate[];
  const [prompt, made] = (['promptTokens', 'newTokens'] as const).map((k) =>
    [...new Set(runs.map((r) => r[k]))].join(' / '),
  );
  return `Decode (\`bench/generate.ts --skip small --prompt ${prompt} --new ${made} --profile N\`): greedy, ${prompt}-token prompt, ${made} new tokens; each build's better run.`;
}

function decodeRows(): Row[] {
  const best = new Map<string, Generate>();
  const firstIds = new Map<string, number[]>();
  for (const tag of tags)
    for (const r of results('gen', tag).filter((r) => r.what === 'generate') as Generate[]) {
      const key = `${tag}\u0000${r.model}`;
      if (!firstIds.has(key)) firstIds.set(key, r.ids);
      if (!best.has(key) || r.decodeTokensPerSecond > best.get(key)!.decodeTokensPerSecond) best.set(key, r);
    }
  const models = [...new Set([...best.values()].map((r) => r.model))];
  return models.flatMap((model) => {
    const rs = tags.map((t) => best.get(`${t}\u0000${model}`));
    if (rs.some((r) => !r)) return [];
    const row: Row = { 'model (8B shapes, synthetic)': model.replace('llama-3-8b synthetic ', '') };
    tags.forEach((t, i) => {
      row[`${t} tokens/s`] = rs[i]!.decodeTokensPerSecond;
    });
    tags.slice(1).forEach((t, i) => {
      row[`${t} / ${tags[0]}`] = rs[i + 1]!.decodeTokensPerSecond / rs[0]!.decodeTokensPerSecond;
    });
    tags.forEach((t, i) => {
      row[`${t} host encode ms a token`] = rs[i]!.encodeMsPerToken;
    });
    tags.forEach((t, i) => {
      row[`${t} profiled GPU ms a token`] =
        (rs[i]!.kernels ?? []).reduce((a, k) => a + k.usPerToken, 0) / 1000;
    });
    const ids = tags.map((t) => JSON.stringify(firstIds.get(`${t}\u0000${model}`)));
    row['same greedy ids'] = ids.every((x) => x === ids[0]) ? 'yes' : 'no';
    row[`largest kernels, ${tags.at(-1)} (profiled ms a token)`] = largestKernels(rs.at(-1)!.kernels ?? []);
    return [row];
  });
}

const ops = rowOps();
const decode = decodeRows();
const body = [
  values.builds ? `Builds: ${values.builds}.` : '',
  ops.length
    ? `Row ops (\`bench/gpu.ts --skip gemm,gemv,int8,ppl,8b\`): GPU microseconds a dispatch from timestamp queries, one compute pass a dispatch, the best of each build's runs; the first row is the floor a dispatch costs under this profile.\n\n${table(ops)}`
    : '',
  exactness()
    ? `Exactness on this GPU (values at and 0-4 ulp from .5 ties of x / scale): ${exactness()}.`
    : '',
  decode.length ? `${decodeCommand()}\n\n${table(decode)}` : '',
]
  .filter((s) => s)
  .join('\n\n');
const notes = values.notes ? fs.readFileSync(values.notes, 'utf8').trim() : '';
publish(
  `Decode kernels on ${values.gpu} through WebGPU, builds side by side`,
  values.ran,
  body,
  notes,
  values.gpu,
);
