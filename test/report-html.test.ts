/** The sweep's HTML report: chart coordinates from the definition, gaps, escaping, the tables. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CHART, chartSeries, escapeHtml, sweepChart, sweepHtml, yRange } from '../src/report/html.ts';
import type { SweepCell, SweepResult } from '../src/report/sweep.ts';

function cell(row: string, col: string, ppl: number | null, extra: Partial<SweepCell> = {}): SweepCell {
  return {
    row,
    col,
    recipe: { name: `${row}/${col}` } as SweepCell['recipe'],
    ppl,
    seconds: 1,
    quantize_seconds: 0.5,
    eval_seconds: 0.5,
    calibration: null,
    ...extra,
  };
}

const result: SweepResult = {
  tool: 'llmq sweep',
  study: 'w4-abits',
  title: 'W4 with <activation> bits',
  model: 'm',
  device: 'cpu',
  eval: { source: 'wiki', tokens: 1000, seqlen: 512, windows: 2 },
  fp: { ppl: 800, seconds: 1 },
  rows: [
    { key: 'rtn', label: 'RTN' },
    { key: 'awq', label: 'AWQ & co' },
  ],
  cols: [
    { key: 'a4', label: 'A4' },
    { key: 'a6', label: 'A6' },
    { key: 'a8', label: 'A8' },
  ],
  cells: [
    cell('rtn', 'a4', 40000),
    cell('rtn', 'a6', 900),
    cell('rtn', 'a8', 820),
    cell('awq', 'a4', null, { error: 'out of memory' }),
    cell('awq', 'a6', 850, { kl: { mean: 0.1, sameTop: 0.7 } }),
    cell('awq', 'a8', Number.POSITIVE_INFINITY),
  ],
  seconds: 10,
};

test('series skip missing, failed and infinite cells', () => {
  assert.deepEqual(chartSeries(result), [
    {
      label: 'RTN',
      points: [
        [0, 40000],
        [1, 900],
        [2, 820],
      ],
    },
    { label: 'AWQ & co', points: [[1, 850]] },
  ]);
});

test('polyline points sit where a log-scale axis puts them', () => {
  const svg = sweepChart(result);
  const [lo, hi] = yRange([40000, 900, 820, 850, 800]);
  assert.ok(lo < 800 && lo > 700 && hi > 40000 && hi < 45000);
  const w = CHART.width - CHART.left - CHART.right;
  const h = CHART.height - CHART.top - CHART.bottom;
  const expect = (i: number, v: number) => {
    const x = CHART.left + (i * w) / 2;
    const y = CHART.top + ((Math.log10(hi) - Math.log10(v)) / (Math.log10(hi) - Math.log10(lo))) * h;
    return `${Math.round(x * 10) / 10},${Math.round(y * 10) / 10}`;
  };
  const lines = [...svg.matchAll(/<polyline class="series" data-label="([^"]*)"[^>]*points="([^"]*)"/g)];
  assert.deepEqual(
    lines.map((m) => [m[1], m[2]]),
    [
      ['RTN', [expect(0, 40000), expect(1, 900), expect(2, 820)].join(' ')],
      ['AWQ &amp; co', expect(1, 850)],
    ],
  );
  // the full-precision line at 800, dashed
  const fp = /<line class="fp" x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)"/.exec(svg);
  assert.equal(`${CHART.left},${fp?.[1]}`, expect(0, 800).replace(/^[\d.]+/, String(CHART.left)));
  assert.equal((svg.match(/<circle /g) ?? []).length, 4);
});

test('the page escapes labels and carries the perplexity and KL tables', () => {
  const page = sweepHtml(result);
  assert.ok(page.startsWith('<!doctype html>'));
  assert.ok(page.includes('W4 with &lt;activation&gt; bits'));
  assert.ok(!page.includes('<activation>'));
  assert.ok(page.includes('<tr><td>RTN</td><td>40000.00</td><td>900.00</td><td>820.00</td></tr>'));
  assert.ok(page.includes('<tr><td>AWQ &amp; co</td><td>error</td><td>850.00</td><td>inf</td></tr>'));
  assert.ok(page.includes('<td>0.1000 (70.0%)</td>'));
  assert.equal(escapeHtml('a<b>&"'), 'a&lt;b&gt;&amp;&quot;');
  assert.ok(!/<script/i.test(page));
});
