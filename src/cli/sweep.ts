import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../errors.ts';
import { readEvalText } from '../eval/eval-text.ts';
import { loadTokenizer } from '../io/tokenizer.ts';
import { sweepHtml } from '../report/html.ts';
import {
  buildStudy,
  filterStudy,
  gridStudy,
  runSweep,
  type Study,
  type SweepEvent,
  type SweepResult,
  studyNames,
  sweepMarkdown,
  writeAtomic,
} from '../report/sweep.ts';
import { createBackend, type DeviceName } from '../tensor/index.ts';
import { intFlag, onePositional, optionalIntFlag, parse, printJson } from './args.ts';
import { CALIB_FLAGS, CALIB_HELP, calibFlags } from './calib-flags.ts';
import { formatSeconds } from './progress.ts';

export const SWEEP_HELP = `llmq sweep <model-dir> (--study <name> | --methods rtn,awq,gptq --w-bits 3,4 --group 32,128,row) --ppl <text-file>
           [--seqlen N] [--max-windows K] [--rows a,b] [--cols a,b] [--only text] ${CALIB_HELP}
           [--kl] [--device cpu|webgpu|auto] [--out results.json] [--md results.md] [--html report.html] [--force | --resume] [--json]
  Quantizes a fresh copy of a full-precision model with each recipe of a study and prints a table of
  perplexities (rows = methods, columns = formats; full precision first). Studies: ${studyNames().join(', ')}.
  --rows/--cols keep the named rows/columns (keys or labels), --only the variants whose "row/col"
  contains the text. --out (JSON: every recipe as built, ppl, seconds), --md and --html (one
  self-contained page: an SVG chart of perplexity per column, log scale, and the tables) are rewritten
  after each variant; --resume reuses the finished cells of an existing --out. --kl adds a second table: each
  cell's mean KL(P_fp || P_quantized) per token and how often the top token stays the same.`;

export async function sweepCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('sweep', argv, {
    study: { type: 'string' },
    methods: { type: 'string' },
    'w-bits': { type: 'string' },
    group: { type: 'string' },
    ppl: { type: 'string' },
    seqlen: { type: 'string' },
    'max-windows': { type: 'string' },
    rows: { type: 'string' },
    cols: { type: 'string' },
    only: { type: 'string' },
    ...CALIB_FLAGS,
    device: { type: 'string', default: 'cpu' },
    out: { type: 'string' },
    md: { type: 'string' },
    html: { type: 'string' },
    force: { type: 'boolean', default: false },
    resume: { type: 'boolean', default: false },
    kl: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  });
  const dir = onePositional('sweep', positionals, 'model directory');
  if (!values.ppl) fail('sweep: --ppl <text-file> is required');
  const seqLen = intFlag('seqlen', values.seqlen, 2048, 2);
  const maxWindows = optionalIntFlag('max-windows', values['max-windows']);
  const calib = calibFlags(values);
  const study = filterStudy(chooseStudy(values), {
    rows: list(values.rows),
    cols: list(values.cols),
    only: values.only,
  });
  if (values.force && values.resume) fail('sweep: --force and --resume exclude each other');
  for (const file of [values.out, values.md, values.html]) checkOutput(file, values.force || values.resume);
  const previous = values.resume && values.out ? readPrevious(values.out) : undefined;

  const tokens = loadTokenizer(dir).encode(readEvalText(values.ppl));
  if (tokens.length < seqLen)
    fail(`--seqlen ${seqLen} is larger than ${values.ppl} (${tokens.length} tokens)`);
  const backend = await createBackend(values.device as DeviceName);
  const save = (r: SweepResult) => {
    if (values.out) writeAtomic(values.out, `${JSON.stringify(r, null, 1)}\n`);
    if (values.md) writeAtomic(values.md, sweepMarkdown(r));
    if (values.html) writeAtomic(values.html, sweepHtml(r));
  };
  const result = await runSweep(dir, backend, study, {
    tokens,
    evalSource: values.ppl,
    seqLen,
    maxWindows,
    calib,
    previous,
    kl: values.kl,
    onEvent: values.json ? undefined : progressPrinter(study),
    onUpdate: save,
  });
  save(result);
  if (values.json) return printJson(result);
  process.stdout.write(sweepMarkdown(result));
}

function chooseStudy(values: Record<string, string | boolean | undefined>): Study {
  const grid = values.methods ?? values['w-bits'] ?? values.group;
  if (values.study && grid) fail('sweep: give either --study or --methods/--w-bits/--group, not both');
  if (values.study) return buildStudy(String(values.study));
  if (!grid) fail(`sweep: --study <name> (${studyNames().join(', ')}) or --methods ... is required`);
  const methods = list(values.methods as string | undefined) ?? ['rtn', 'awq', 'gptq'];
  const bits = (list(values['w-bits'] as string | undefined) ?? ['4']).map((b) => numberItem('w-bits', b));
  const groups = (list(values.group as string | undefined) ?? ['128']).map((g) =>
    g === 'row' ? ('row' as const) : numberItem('group', g),
  );
  return gridStudy(methods, bits, groups);
}

function list(value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const items = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return items.length ? items : fail(`sweep: empty list "${value}"`);
}

function numberItem(flag: string, item: string): number {
  const n = Number(item);
  if (!Number.isInteger(n) || n < 1) fail(`--${flag}: "${item}" is not a positive integer`);
  return n;
}

function checkOutput(file: string | undefined, mayReplace: boolean): void {
  if (!file) return;
  const parent = path.dirname(path.resolve(file));
  if (!fs.existsSync(parent)) fail(`${file}: folder ${parent} does not exist`);
  if (fs.existsSync(file) && !mayReplace)
    fail(`${file} already exists (pass --force to replace it or --resume)`);
}

function readPrevious(file: string): SweepResult | undefined {
  if (!fs.existsSync(file)) return undefined;
  try {
    const r = JSON.parse(fs.readFileSync(file, 'utf8')) as SweepResult;
    if (r.tool !== 'llmq sweep' || !Array.isArray(r.cells)) throw new Error('not an llmq sweep result');
    return r;
  } catch (e) {
    return fail(`${file}: cannot resume from it (${(e as Error).message})`);
  }
}

/** One line per variant on stderr (redrawn with the layer count while quantizing, on a TTY). */
function progressPrinter(study: Study): (e: SweepEvent) => void {
  const tty = Boolean(process.stderr.isTTY);
  const label = (row: string, col: string) =>
    `${study.rows.find((r) => r.key === row)?.label} | ${study.cols.find((c) => c.key === col)?.label}`;
  return (e) => {
    const head = `[${e.index + 1}/${e.total}]`;
    if (e.kind === 'layer') {
      if (tty)
        process.stderr.write(
          `\r${head} ${label(e.variant.row, e.variant.col)}: layer ${e.done}/${e.layers}\x1b[K`,
        );
      return;
    }
    const c = e.cell;
    const what = c.error ? `error: ${c.error.split('\n')[0]}` : `ppl ${c.ppl?.toFixed(2)}`;
    const eta = (e.elapsed / (e.index + 1)) * (e.total - e.index - 1);
    process.stderr.write(
      `${tty ? '\r' : ''}${head} ${label(c.row, c.col)}: ${what} (${c.seconds.toFixed(1)} s), ETA ${formatSeconds(eta)}${tty ? '\x1b[K' : ''}\n`,
    );
  };
}
