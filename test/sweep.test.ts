/**
 * `llmq sweep`: the recipes each study builds, a small sweep on llama-tiny against the same recipe run
 * directly (quantizeModel + perplexity), the AWQ scale histogram on hand-made notes, and the CLI files.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { loadCalibration } from '../src/calib/data.ts';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { sweepHtml } from '../src/report/html.ts';
import '../src/quant/methods.ts';
import { type QuantReport, quantizeModel } from '../src/quant/pipeline.ts';
import {
  awqHistogram,
  awqRatios,
  buildStudy,
  filterStudy,
  gridStudy,
  klTable,
  pplTable,
  runSweep,
  type SweepResult,
  studyNames,
} from '../src/report/sweep.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { MODELS, SHARED, WIKITEXT } from './helpers.ts';

const TINY = `${MODELS}llama-tiny`;
const BROWN = `${SHARED}data/text/brown.txt`;
const BIN = new URL('../bin/llmq', import.meta.url).pathname;
const cpu = new CpuBackend();
const tokens = loadTokenizer(TINY).encode(readEvalText(WIKITEXT));
const EVAL = { seqLen: 128, maxWindows: 1 };
const CALIB = { file: BROWN, samples: 2, seqLen: 64, seed: 0 };
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-sweep-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

function cell(study: ReturnType<typeof buildStudy>, row: string, col: string) {
  const v = study.variants.find((x) => x.row === row && x.col === col);
  assert.ok(v, `${row}/${col}`);
  return v.recipe;
}

test('studies build the recipes they promise', () => {
  assert.deepEqual(studyNames(), ['w4-abits', 'group', 'salient', 'awq-hist', 'seed004']);

  const abits = buildStudy('w4-abits');
  assert.deepEqual(
    abits.rows.map((r) => r.key),
    ['rtn', 'awq', 'mixed'],
  );
  assert.deepEqual(
    abits.cols.map((c) => c.label),
    ['A4', 'A5', 'A6', 'A7', 'A8'],
  );
  assert.equal(abits.variants.length, 15);
  const awqA6 = cell(abits, 'awq', 'a6');
  assert.deepEqual(awqA6.weights, {
    kind: 'int',
    bits: 4,
    symmetric: false,
    granularity: 'group',
    group: 128,
  });
  assert.deepEqual(awqA6.activations, {
    format: { kind: 'int', bits: 6, symmetric: true, granularity: 'row' },
    static: false,
  });
  assert.deepEqual(awqA6.steps, [{ method: 'awq', grid: 20, clip: true, duo: false, withActivations: true }]);
  assert.deepEqual(cell(abits, 'mixed', 'a8').steps, [{ method: 'mixed', salientPercent: 1 }]);
  assert.deepEqual(cell(abits, 'rtn', 'a4').steps, []);

  const group = buildStudy('group');
  assert.deepEqual(
    group.cols.map((c) => c.key),
    ['g16', 'g32', 'g64', 'g128'],
  );
  const g32 = cell(group, 'rtn', 'g32');
  assert.equal(g32.weights?.kind === 'int' && g32.weights.group, 32);
  assert.equal(g32.activations?.format.kind === 'int' && g32.activations.format.bits, 4);

  const salient = buildStudy('salient');
  assert.deepEqual(
    salient.variants.map((v) => v.recipe.steps),
    [0, 1, 2, 4, 8, 16, 32, 64].map((p) => [{ method: 'mixed', salientPercent: p }]),
  );

  const hist = buildStudy('awq-hist');
  assert.equal(hist.variants.length, 1);
  assert.equal(hist.awqHistogram, true);
  assert.equal(
    hist.variants[0].recipe.steps[0].method === 'awq' && hist.variants[0].recipe.steps[0].withActivations,
    true,
  );

  const seed004 = buildStudy('seed004');
  assert.equal(seed004.variants.length, 42);
  assert.deepEqual(
    cell(seed004, 'awq-clip+gptq', 'mx128-w4a8').steps.map((s) => [
      s.method,
      s.method === 'awq' ? s.clip : null,
    ]),
    [
      ['awq', true],
      ['gptq', null],
    ],
  );
  assert.deepEqual(
    cell(seed004, 'awq+gptq', 'mx16-w4a8').steps.map((s) => [s.method, s.method === 'awq' ? s.clip : null]),
    [
      ['awq', false],
      ['gptq', null],
    ],
  );
  assert.deepEqual(cell(seed004, 'awq', 'int-w8a8').steps, [
    { method: 'awq', grid: 20, clip: true, duo: false, withActivations: false },
  ]);
  assert.deepEqual(cell(seed004, 'smoothquant', 'mx128-w8a8').steps, [{ method: 'smoothquant', alpha: 0.5 }]);
  const mx16 = cell(seed004, 'smoothquant+gptq', 'mx16-w4a8');
  assert.deepEqual(mx16.weights, { kind: 'mx', element: 'int4', block: 16, rounding: 'nearest' });
  assert.deepEqual(mx16.activations?.format, { kind: 'mx', element: 'int8', block: 16, rounding: 'nearest' });
  assert.equal(mx16.propagate, 'quantized');
  const intW4 = cell(seed004, 'rtn', 'int-w4a8');
  assert.deepEqual(intW4.weights, { kind: 'int', bits: 4, symmetric: false, granularity: 'row' });
  assert.equal(intW4.activations?.format.kind === 'int' && intW4.activations.format.symmetric, true);
});

test('filters pick rows, columns and substrings; unknown names fail', () => {
  const seed004 = buildStudy('seed004');
  const f = filterStudy(seed004, { rows: ['GPTQ', 'rtn'], cols: ['int-w8a8', 'MXINT-16 W4A8'] });
  assert.deepEqual(
    f.variants.map((v) => `${v.row}/${v.col}`),
    ['rtn/int-w8a8', 'rtn/mx16-w4a8', 'gptq/int-w8a8', 'gptq/mx16-w4a8'],
  );
  assert.deepEqual(
    filterStudy(seed004, { only: 'awq+gptq/mx1' }).variants.map((v) => v.col),
    ['mx128-w8a8', 'mx128-w4a8', 'mx16-w8a8', 'mx16-w4a8'],
  );
  assert.throws(() => filterStudy(seed004, { rows: ['flatquant'] }), /--rows: no "flatquant"/);
  assert.throws(() => filterStudy(seed004, { only: 'nothing-like-this' }), /no variant/);
  assert.throws(() => gridStudy(['rtn', 'quip'], [4], [32]), /unknown method "quip"/);
});

test('AWQ scale histogram: log2 bins and ratios per group type', () => {
  const report = {
    layers: [
      {
        layer: 0,
        awq: {
          'q_proj,k_proj,v_proj': { ratio: 0.5, losses: [], scales: [0.5, 1, 3] },
          down_proj: { ratio: 0.25, losses: [], scales: [0.3, 8] },
        },
      },
      { layer: 1, awq: { 'q_proj,k_proj,v_proj': { ratio: 0.1, losses: [], scales: [1.5] } } },
    ],
  } as unknown as QuantReport;
  const h = awqHistogram([report], 1);
  // log2: qkv -1, 0, 1.58, 0.58; down -1.74, 3
  assert.deepEqual(h.edges, [-2, -1, 0, 1, 2, 3, 4]);
  assert.deepEqual(h.counts, { qkv: [0, 1, 2, 1, 0, 0], down: [1, 0, 0, 0, 0, 1] });
  assert.deepEqual(h.summary.qkv, { count: 4, min: 0.5, median: 1.5, max: 3 });
  assert.deepEqual(h.ratios, { qkv: [0.5, 0.1], down: [0.25, Number.NaN] });
  assert.deepEqual(awqHistogram([report], 2).counts.down, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  // quarter octaves: from floor(4 log2 0.3) = -7 to 4 log2 8 + 1 = 13
  assert.deepEqual(awqHistogram([report], 4).edges.slice(0, 2), [-1.75, -1.5]);
  assert.equal(awqHistogram([report], 4).edges.length, 21);
});

test('a sweep on llama-tiny: fp row and a cell equal the direct runs', async () => {
  const study = filterStudy(gridStudy(['rtn', 'awq'], [4], [32, 'row']), { only: 'g32' });
  assert.deepEqual(
    study.variants.map((v) => `${v.row}/${v.col}`),
    ['rtn/w4g32', 'awq/w4g32'],
  );
  const seen: string[] = [];
  const result = await runSweep(TINY, cpu, study, {
    tokens,
    evalSource: 'wikitext',
    ...EVAL,
    calib: { file: BROWN, samples: 2, seqLen: 64 },
    kl: true,
    onEvent: (e) => {
      if (e.kind === 'cell') seen.push(`${e.index + 1}/${e.total}`);
    },
  });
  assert.deepEqual(seen, ['1/2', '2/2']);

  const fpModel = loadLlama(TINY, cpu);
  const fp = await perplexity(fpModel, tokens, EVAL);
  assert.equal(result.fp.ppl, fp.ppl);

  const awqCell = result.cells.find((c) => c.row === 'awq');
  assert.ok(awqCell && awqCell.ppl !== null && !awqCell.error);
  const model = loadLlama(TINY, cpu);
  const calib = await loadCalibration(loadTokenizer(TINY), CALIB);
  const report = await quantizeModel(model, awqCell.recipe, calib);
  const direct = await perplexity(model, tokens, { ...EVAL, reference: fpModel });
  assert.equal(awqCell.ppl, direct.ppl);
  assert.deepEqual(awqCell.kl, { mean: direct.kl?.mean, sameTop: direct.kl?.sameTop });
  assert.ok((awqCell.kl?.mean ?? 0) > 0);
  assert.notEqual(awqCell.ppl, fp.ppl);
  assert.deepEqual(awqCell.calibration, { ...CALIB, sampler: 'pool', source: BROWN, sha256: calib.sha256 });
  assert.deepEqual(awqCell.awq_ratios, awqRatios(report));
  assert.equal(awqCell.awq_ratios?.qkv.length, 4);

  const rtnCell = result.cells.find((c) => c.row === 'rtn');
  assert.equal(rtnCell?.calibration, null);
  const lines = pplTable(result).split('\n');
  assert.deepEqual(lines, [
    '|  | W4 g32 |',
    '| --- | --- |',
    `| full precision | ${fp.ppl.toFixed(2)} |`,
    `| RTN | ${rtnCell?.ppl?.toFixed(2)} |`,
    `| AWQ | ${direct.ppl.toFixed(2)} |`,
  ]);
  const klLines = klTable(result)?.split('\n') ?? [];
  assert.equal(
    klLines[3],
    `| AWQ | ${direct.kl?.mean.toFixed(4)} (${((direct.kl?.sameTop ?? 0) * 100).toFixed(1)}%) |`,
  );
});

function llmq(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(BIN, args, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? -1) : 0, stdout, stderr });
    });
  });
}

test('CLI writes the JSON and Markdown, refuses to overwrite, resumes', async () => {
  const text = path.join(root, 'text.raw');
  fs.writeFileSync(text, fs.readFileSync(WIKITEXT, 'utf8').slice(0, 3000));
  const out = path.join(root, 'r.json');
  const md = path.join(root, 'r.md');
  const html = path.join(root, 'r.html');
  const args = [
    'sweep',
    TINY,
    '--study',
    'group',
    '--rows',
    'rtn',
    '--cols',
    'g32,g64',
    '--ppl',
    text,
    '--seqlen',
    '128',
    '--max-windows',
    '1',
    '--out',
    out,
    '--md',
    md,
    '--html',
    html,
  ];
  const first = await llmq(args);
  assert.equal(first.code, 0, first.stderr);
  const r = JSON.parse(fs.readFileSync(out, 'utf8')) as SweepResult;
  assert.equal(r.study, 'group');
  assert.deepEqual(
    r.cells.map((c) => [c.row, c.col, c.recipe.name]),
    [
      ['rtn', 'g32', 'group/rtn/g32'],
      ['rtn', 'g64', 'group/rtn/g64'],
    ],
  );
  assert.deepEqual(r.eval, { source: text, tokens: r.eval.tokens, seqlen: 128, windows: 1 });
  for (const c of r.cells) assert.ok(c.ppl !== null && c.ppl > 1 && c.seconds > 0);
  const mdText = fs.readFileSync(md, 'utf8');
  assert.ok(mdText.includes(pplTable(r)));
  assert.equal(first.stdout, mdText);
  assert.match(mdText, /\| RTN \| \d+\.\d\d \| \d+\.\d\d \|/);
  assert.equal(fs.readFileSync(html, 'utf8'), sweepHtml(r));
  assert.deepEqual(
    fs.readdirSync(root).sort(),
    ['r.html', 'r.json', 'r.md', 'text.raw'],
    'no temporary files are left',
  );

  const again = await llmq(args);
  assert.equal(again.code, 2);
  assert.match(again.stderr, /already exists/);

  const resumed = await llmq([...args, '--resume', '--json']);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.equal(resumed.stderr, '');
  const r2 = JSON.parse(resumed.stdout) as SweepResult;
  assert.deepEqual(r2.cells, r.cells, 'finished cells are reused, not recomputed');
  assert.deepEqual(r2.fp, r.fp);
});
