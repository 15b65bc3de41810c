/**
 * Sweeps: a grid of recipes (rows = methods, columns = number formats) each run on a freshly loaded
 * full-precision model and scored by perplexity, plus the full-precision perplexity once.
 * Named studies rebuild the tables of the papers llmq implements; the generic grid crosses methods
 * with weight bits and group sizes. Calibration sets are loaded once per (samples, seqLen).
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  type CalibOptions,
  type CalibSampler,
  type CalibSet,
  DEFAULT_CALIB_SEED,
  loadCalibration,
} from '../calib/data.ts';
import { fail } from '../errors.ts';
import { perplexity } from '../eval/perplexity.ts';
import { loadTokenizer, type TextTokenizer } from '../io/tokenizer.ts';
import type { LlamaModel } from '../model/llama.ts';
import { loadLlama } from '../model/llama-dir.ts';
import { readQuantizationConfig } from '../quant/checkpoint.ts';
import '../quant/methods.ts';
import { type QuantReport, quantizeModel } from '../quant/pipeline.ts';
import {
  defineRecipe,
  type Recipe,
  recipeNeedsCalibration,
  resolveRecipe,
  type Step,
} from '../quant/recipe.ts';
import type { Backend } from '../tensor/tensor.ts';

// ---- studies ---------------------------------------------------------------------------------------

export interface Axis {
  /** short name for --rows / --cols */
  key: string;
  /** what the table shows */
  label: string;
}

export interface Variant {
  row: string;
  col: string;
  recipe: Recipe;
}

export interface Study {
  name: string;
  title: string;
  rows: Axis[];
  cols: Axis[];
  variants: Variant[];
  /** histogram the AWQ scales and ratios the variants chose (awq-hist) */
  awqHistogram?: boolean;
}

interface StudyDef {
  title: string;
  build: (title: string) => Study;
}

type Method = { key: string; label: string; steps: Partial<Step>[] };

const RTN: Method = { key: 'rtn', label: 'RTN', steps: [] };
const AWQ_A: Method = { key: 'awq', label: 'AWQ', steps: [{ method: 'awq', withActivations: true }] };
/** AWQ's scales and its clip search applied, then GPTQ on the clipped weights (the issue's AWQ+GPTQ drops the clip) */
const AWQ_CLIP_GPTQ: Method = {
  key: 'awq-clip+gptq',
  label: 'AWQ (with clip)+GPTQ',
  steps: [{ method: 'awq' }, { method: 'gptq' }],
};
const MIXED_1: Method = { key: 'mixed', label: 'Mixed 1%', steps: [{ method: 'mixed', salientPercent: 1 }] };

const STUDIES: Record<string, StudyDef> = {
  'w4-abits': {
    title: 'W4 g128 weights, INT b-bit symmetric per-token activations (b = 4..8)',
    build: (title) =>
      crossStudy(
        'w4-abits',
        title,
        [RTN, AWQ_A, MIXED_1],
        [4, 5, 6, 7, 8].map((b) => ({
          key: `a${b}`,
          label: `A${b}`,
          weights: 'int4-g128',
          activations: `int${b}-row-sym`,
        })),
      ),
  },
  group: {
    title: 'W4A4 (INT4 per-token activations) with weight groups of 16, 32, 64, 128',
    build: (title) =>
      crossStudy(
        'group',
        title,
        [RTN, AWQ_A, MIXED_1],
        [16, 32, 64, 128].map((g) => ({
          key: `g${g}`,
          label: `g${g}`,
          weights: `int4-g${g}`,
          activations: 'int4-row-sym',
        })),
      ),
  },
  salient: {
    title: 'W4A4 g128 mixed precision: share of input channels kept in full precision',
    build: (title) =>
      crossStudy(
        'salient',
        title,
        [{ key: 'mixed', label: 'Mixed', steps: [] }],
        [0, 1, 2, 4, 8, 16, 32, 64].map((p) => ({
          key: `${p}`,
          label: `${p}%`,
          weights: 'int4-g128',
          activations: 'int4-row-sym',
          steps: [{ method: 'mixed', salientPercent: p }],
        })),
      ),
  },
  'awq-hist': {
    title: 'AWQ W4A4 (awq-w4a4): histogram of the chosen scales per group type, and the chosen ratios',
    build: (title) => {
      const recipe = { ...resolveRecipe('awq-w4a4'), name: 'awq-hist/awq/w4a4' };
      return {
        name: 'awq-hist',
        title,
        rows: [{ key: 'awq', label: 'AWQ' }],
        cols: [{ key: 'w4a4', label: 'W4A4 g128' }],
        variants: [{ row: 'awq', col: 'w4a4', recipe }],
        awqHistogram: true,
      };
    },
  },
  seed004: {
    title:
      'RTN / GPTQ / SmoothQuant / AWQ and combinations at W8A8 and W4A8: MXINT blocks of 128 and 16, INT per channel',
    build: (title) =>
      crossStudy(
        'seed004',
        title,
        [
          RTN,
          { key: 'gptq', label: 'GPTQ', steps: [{ method: 'gptq' }] },
          { key: 'smoothquant', label: 'SmoothQuant', steps: [{ method: 'smoothquant' }] },
          { key: 'awq', label: 'AWQ', steps: [{ method: 'awq' }] },
          {
            key: 'smoothquant+gptq',
            label: 'SmoothQuant+GPTQ',
            steps: [{ method: 'smoothquant' }, { method: 'gptq' }],
          },
          { key: 'awq+gptq', label: 'AWQ+GPTQ', steps: [{ method: 'awq', clip: false }, { method: 'gptq' }] },
          AWQ_CLIP_GPTQ,
        ],
        [
          { key: 'mx128-w8a8', label: 'MXINT-128 W8A8', weights: 'mxint8-128', activations: 'mxint8-128' },
          { key: 'mx128-w4a8', label: 'MXINT-128 W4A8', weights: 'mxint4-128', activations: 'mxint8-128' },
          { key: 'int-w8a8', label: 'INT W8A8', weights: 'int8-row-sym', activations: 'int8-row-sym' },
          { key: 'int-w4a8', label: 'INT W4A8', weights: 'int4-row', activations: 'int8-row-sym' },
          { key: 'mx16-w8a8', label: 'MXINT-16 W8A8', weights: 'mxint8-16', activations: 'mxint8-16' },
          { key: 'mx16-w4a8', label: 'MXINT-16 W4A8', weights: 'mxint4-16', activations: 'mxint8-16' },
        ],
      ),
  },
};

export function studyNames(): string[] {
  return Object.keys(STUDIES);
}

export function studyTitle(name: string): string {
  return STUDIES[name]?.title ?? '';
}

export function buildStudy(name: string): Study {
  const def = STUDIES[name];
  if (!def) return fail(`--study "${name}" is unknown (studies: ${studyNames().join(', ')})`);
  return def.build(def.title);
}

interface Column extends Axis {
  weights: string;
  activations?: string;
  /** steps of the column, after the row's (the salient study varies a step per column) */
  steps?: Partial<Step>[];
}

/** Every row method with every column format. */
function crossStudy(name: string, title: string, rows: Method[], cols: Column[]): Study {
  const variants = rows.flatMap((row) =>
    cols.map((col) => ({
      row: row.key,
      col: col.key,
      recipe: defineRecipe(`${name}/${row.key}/${col.key}`, {
        description: `${row.label}, ${col.label}`,
        weights: col.weights,
        activations: col.activations,
        steps: [...row.steps, ...(col.steps ?? [])],
      }),
    })),
  );
  return {
    name,
    title,
    rows: rows.map(({ key, label }) => ({ key, label })),
    cols: cols.map(({ key, label }) => ({ key, label })),
    variants,
  };
}

const GRID_METHODS: Record<string, Method> = {
  rtn: RTN,
  awq: { key: 'awq', label: 'AWQ', steps: [{ method: 'awq' }] },
  gptq: { key: 'gptq', label: 'GPTQ', steps: [{ method: 'gptq' }] },
  'gptq-actorder': {
    key: 'gptq-actorder',
    label: 'GPTQ act-order',
    steps: [{ method: 'gptq', actOrder: true }],
  },
  'awq+gptq': {
    key: 'awq+gptq',
    label: 'AWQ+GPTQ',
    steps: [{ method: 'awq', clip: false }, { method: 'gptq' }],
  },
  'awq-clip+gptq': AWQ_CLIP_GPTQ,
};

/** Weights-only grid: method x INT bits (asymmetric) x group size ('row' = per output channel). */
export function gridStudy(methods: string[], bits: number[], groups: (number | 'row')[]): Study {
  const rows = methods.map(
    (m) =>
      GRID_METHODS[m] ??
      fail(`--methods: unknown method "${m}" (known: ${Object.keys(GRID_METHODS).join(', ')})`),
  );
  for (const b of bits)
    if (!Number.isInteger(b) || b < 2 || b > 8) fail(`--w-bits: bits must be integers 2..8, got ${b}`);
  const cols = bits.flatMap((b) =>
    groups.map((g) => ({
      key: g === 'row' ? `w${b}row` : `w${b}g${g}`,
      label: g === 'row' ? `W${b} per-row` : `W${b} g${g}`,
      weights: g === 'row' ? `int${b}-row` : `int${b}-g${g}`,
    })),
  );
  const title = `weights only: ${rows.map((r) => r.label).join(', ')} x ${cols.map((c) => c.label).join(', ')}`;
  return crossStudy('grid', title, rows, cols);
}

export interface StudyFilter {
  rows?: string[];
  cols?: string[];
  /** substring of "row/col" (keys or labels, case-insensitive) */
  only?: string;
}

/** The study restricted to the asked rows, columns and/or variants. */
export function filterStudy(study: Study, filter: StudyFilter): Study {
  const rows = pickAxes('rows', study.rows, filter.rows);
  const cols = pickAxes('cols', study.cols, filter.cols);
  const only = filter.only?.toLowerCase();
  const variants = study.variants.filter((v) => {
    if (!rows.has(v.row) || !cols.has(v.col)) return false;
    if (!only) return true;
    const row = study.rows.find((r) => r.key === v.row) as Axis;
    const col = study.cols.find((c) => c.key === v.col) as Axis;
    return [`${row.key}/${col.key}`, `${row.label}/${col.label}`].some((s) => s.toLowerCase().includes(only));
  });
  if (variants.length === 0) fail(`sweep: the filters leave no variant of study ${study.name} to run`);
  return {
    ...study,
    rows: study.rows.filter((r) => variants.some((v) => v.row === r.key)),
    cols: study.cols.filter((c) => variants.some((v) => v.col === c.key)),
    variants,
  };
}

function pickAxes(flag: string, axes: Axis[], wanted: string[] | undefined): Set<string> {
  if (!wanted) return new Set(axes.map((a) => a.key));
  const keys = new Set<string>();
  for (const w of wanted) {
    const hit = axes.find((a) => [a.key, a.label].some((s) => s.toLowerCase() === w.trim().toLowerCase()));
    if (!hit) fail(`--${flag}: no "${w}" (known: ${axes.map((a) => a.key).join(', ')})`);
    keys.add(hit.key);
  }
  return keys;
}

// ---- running ---------------------------------------------------------------------------------------

export interface CalibRecord {
  source: string;
  file: string | null;
  samples: number;
  seqLen: number;
  seed: number;
  /** absent in sweeps written before samplers existed: 'pool' */
  sampler?: CalibSampler;
  sha256: string;
}

export interface SweepCell {
  row: string;
  col: string;
  /** the recipe as built (formats and steps with every default filled in) */
  recipe: Recipe;
  ppl: number | null;
  /** with --kl: mean KL(P_fp || P_cell) per predicted token (nats) and the share of equal top tokens */
  kl?: { mean: number; sameTop: number };
  /** load + quantize + evaluate */
  seconds: number;
  quantize_seconds: number;
  eval_seconds: number;
  calibration: CalibRecord | null;
  /** AWQ ratio chosen per layer, per group type */
  awq_ratios?: Record<string, number[]>;
  error?: string;
}

export interface ScaleHistogram {
  /** log2 bin edges: bin i holds scales s with edges[i] <= log2(s) < edges[i + 1] */
  edges: number[];
  counts: Record<string, number[]>;
  /** all chosen scales per group type: min, median, max */
  summary: Record<string, { count: number; min: number; median: number; max: number }>;
  ratios: Record<string, number[]>;
}

export interface SweepResult {
  tool: 'llmq sweep';
  study: string;
  title: string;
  model: string;
  device: string;
  eval: { source: string; tokens: number; seqlen: number; windows: number };
  fp: { ppl: number | null; seconds: number };
  rows: Axis[];
  cols: Axis[];
  cells: SweepCell[];
  awq_histogram?: ScaleHistogram;
  seconds: number;
}

export type SweepEvent =
  | { kind: 'layer'; index: number; total: number; variant: Variant; done: number; layers: number }
  | { kind: 'cell'; index: number; total: number; cell: SweepCell; elapsed: number };

export interface SweepOptions {
  /** evaluation text, tokenized */
  tokens: Int32Array;
  evalSource: string;
  seqLen: number;
  maxWindows?: number;
  /** calibration settings from the command line; each recipe supplies the rest */
  calib?: Partial<CalibOptions>;
  /** an earlier result of the same sweep: its fp ppl and matching cells are reused (resume) */
  previous?: SweepResult;
  /** also measure every cell's KL divergence from the full-precision model */
  kl?: boolean;
  onEvent?: (e: SweepEvent) => void;
  /** called after the fp run and after each cell with the result so far (to save partial results) */
  onUpdate?: (partial: SweepResult) => void;
}

export async function runSweep(
  dir: string,
  backend: Backend,
  study: Study,
  opts: SweepOptions,
): Promise<SweepResult> {
  const start = performance.now();
  if (readQuantizationConfig(dir))
    fail(`${dir} is already quantized; sweep needs a full-precision checkpoint`);
  const windows = Math.min(Math.floor(opts.tokens.length / opts.seqLen), opts.maxWindows ?? Infinity);
  const result: SweepResult = {
    tool: 'llmq sweep',
    study: study.name,
    title: study.title,
    model: path.resolve(dir),
    device: backend.name,
    eval: { source: opts.evalSource, tokens: opts.tokens.length, seqlen: opts.seqLen, windows },
    fp: { ppl: null, seconds: 0 },
    rows: study.rows,
    cols: study.cols,
    cells: [],
    seconds: 0,
  };
  const previous = opts.previous && sameEval(opts.previous, result) ? opts.previous : undefined;
  result.fp = previous?.fp.ppl != null ? previous.fp : await fpPerplexity(dir, backend, opts);
  opts.onUpdate?.(result);
  const calib = new CalibCache(dir, opts.calib ?? {});
  const reports: QuantReport[] = [];
  const reference = opts.kl ? loadLlama(dir, backend) : undefined;
  for (const [index, variant] of study.variants.entries()) {
    const wanted = calib.record(variant.recipe);
    // the histogram needs the scales, which only a fresh run has
    const old = study.awqHistogram
      ? undefined
      : previous?.cells.find((c) => sameCell(c, variant, wanted) && (!opts.kl || c.kl));
    const cell =
      old ?? (await runVariant(dir, backend, variant, calib, { ...opts, reference }, index, study, reports));
    result.cells.push(cell);
    opts.onEvent?.({
      kind: 'cell',
      index,
      total: study.variants.length,
      cell,
      elapsed: (performance.now() - start) / 1000,
    });
    opts.onUpdate?.(result);
  }
  reference?.dispose();
  if (reports.length) result.awq_histogram = awqHistogram(reports);
  result.seconds = (performance.now() - start) / 1000;
  return result;
}

async function fpPerplexity(
  dir: string,
  backend: Backend,
  opts: SweepOptions,
): Promise<{ ppl: number; seconds: number }> {
  const start = performance.now();
  const model = loadLlama(dir, backend);
  try {
    const r = await perplexity(model, opts.tokens, { seqLen: opts.seqLen, maxWindows: opts.maxWindows });
    return { ppl: r.ppl, seconds: (performance.now() - start) / 1000 };
  } finally {
    model.dispose();
  }
}

async function runVariant(
  dir: string,
  backend: Backend,
  variant: Variant,
  calib: CalibCache,
  opts: SweepOptions & { reference?: LlamaModel },
  index: number,
  study: Study,
  reports: QuantReport[],
): Promise<SweepCell> {
  const start = performance.now();
  const cell: SweepCell = {
    row: variant.row,
    col: variant.col,
    recipe: variant.recipe,
    ppl: null,
    seconds: 0,
    quantize_seconds: 0,
    eval_seconds: 0,
    calibration: null,
  };
  // a calibration problem (missing file, too little text) concerns every variant: it stops the sweep
  const set = recipeNeedsCalibration(variant.recipe) ? await calib.get(variant.recipe) : undefined;
  const record = calib.record(variant.recipe);
  if (set && record) cell.calibration = { ...record, source: set.source, sha256: set.sha256 };
  let model: LlamaModel | undefined;
  try {
    model = loadLlama(dir, backend);
    const report = await quantizeModel(model, variant.recipe, set, {
      onLayer: (done, layers) =>
        opts.onEvent?.({ kind: 'layer', index, total: study.variants.length, variant, done, layers }),
    });
    cell.quantize_seconds = report.seconds;
    const ratios = awqRatios(report);
    if (Object.keys(ratios).length) cell.awq_ratios = ratios;
    if (study.awqHistogram) reports.push(report);
    const evalStart = performance.now();
    const r = await perplexity(model, opts.tokens, {
      seqLen: opts.seqLen,
      maxWindows: opts.maxWindows,
      reference: opts.reference,
    });
    cell.eval_seconds = (performance.now() - evalStart) / 1000;
    cell.ppl = r.ppl;
    if (r.kl) cell.kl = { mean: r.kl.mean, sameTop: r.kl.sameTop };
  } catch (e) {
    cell.error = (e as Error)?.message ?? String(e);
  } finally {
    if (model) model.dispose();
  }
  cell.seconds = (performance.now() - start) / 1000;
  return cell;
}

/** Calibration sets by (samples, seqLen): loaded once each, shared by every recipe that asks. */
class CalibCache {
  private readonly sets = new Map<string, Promise<CalibSet>>();
  private tokenizer?: TextTokenizer;

  constructor(
    private readonly dir: string,
    private readonly flags: Partial<CalibOptions>,
  ) {}

  private options(recipe: Recipe): CalibOptions {
    return {
      file: this.flags.file,
      samples: this.flags.samples ?? recipe.calib.samples,
      seqLen: this.flags.seqLen ?? recipe.calib.seqLen,
      seed: this.flags.seed ?? DEFAULT_CALIB_SEED,
      sampler: this.flags.sampler ?? recipe.calib.sampler,
    };
  }

  get(recipe: Recipe): Promise<CalibSet> {
    const o = this.options(recipe);
    const key = `${o.samples}x${o.seqLen}:${o.sampler ?? 'pool'}`;
    let set = this.sets.get(key);
    if (!set) {
      this.tokenizer ??= loadTokenizer(this.dir);
      set = loadCalibration(this.tokenizer, o);
      this.sets.set(key, set);
    }
    return set;
  }

  /** What a recipe's cell records (and what a resumed cell must match); null when it needs none. */
  record(recipe: Recipe): CalibRecord | null {
    if (!recipeNeedsCalibration(recipe)) return null;
    const o = this.options(recipe);
    return {
      source: '',
      file: o.file ?? null,
      samples: o.samples,
      seqLen: o.seqLen,
      seed: o.seed,
      sampler: o.sampler ?? 'pool',
      sha256: '',
    };
  }
}

function sameEval(a: SweepResult, b: SweepResult): boolean {
  return a.model === b.model && JSON.stringify(a.eval) === JSON.stringify(b.eval);
}

function sameCell(cell: SweepCell, v: Variant, calib: CalibRecord | null): boolean {
  if (cell.error || cell.ppl === null || cell.row !== v.row || cell.col !== v.col) return false;
  if (JSON.stringify(cell.recipe) !== JSON.stringify(v.recipe)) return false;
  if (!calib || !cell.calibration) return calib === cell.calibration;
  const c = cell.calibration;
  return (
    c.file === calib.file &&
    c.samples === calib.samples &&
    c.seqLen === calib.seqLen &&
    c.seed === calib.seed &&
    (c.sampler ?? 'pool') === calib.sampler
  );
}

// ---- AWQ scales and ratios -------------------------------------------------------------------------

const GROUP_TYPES: Record<string, string> = {
  'q_proj,k_proj,v_proj': 'qkv',
  o_proj: 'o',
  'gate_proj,up_proj': 'gate/up',
  down_proj: 'down',
};

interface AwqNote {
  ratio: number;
  scales: number[];
}

function awqNotes(report: QuantReport): [string, AwqNote][][] {
  return report.layers.map((layer) =>
    Object.entries((layer.awq ?? {}) as Record<string, AwqNote>).map(
      ([linears, note]) => [GROUP_TYPES[linears] ?? linears, note] as [string, AwqNote],
    ),
  );
}

/** Ratio chosen per layer for each group type (NaN where a layer has no such group). */
export function awqRatios(report: QuantReport): Record<string, number[]> {
  const layers = awqNotes(report);
  const out: Record<string, number[]> = {};
  layers.forEach((groups, i) => {
    for (const [type, note] of groups) {
      out[type] ??= new Array(layers.length).fill(Number.NaN);
      out[type][i] = note.ratio;
    }
  });
  return out;
}

/** Histogram of log2(scale) in bins of 1/binsPerOctave, per group type, over every layer of the reports. */
export function awqHistogram(reports: QuantReport[], binsPerOctave = 4): ScaleHistogram {
  const values: Record<string, number[]> = {};
  const ratios: Record<string, number[]> = {};
  for (const report of reports) {
    for (const groups of awqNotes(report))
      for (const [type, note] of groups) {
        const list = (values[type] ??= []);
        for (const s of note.scales) list.push(s);
      }
    for (const [type, list] of Object.entries(awqRatios(report))) (ratios[type] ??= []).push(...list);
  }
  for (const list of Object.values(values)) list.sort((a, b) => a - b);
  const bin = (s: number) => Math.floor(Math.log2(s) * binsPerOctave);
  const sorted = Object.values(values).filter((l) => l.length);
  // values are sorted: each list's extremes are its ends (no spread over ~10^6 numbers)
  const lo = sorted.length ? Math.min(...sorted.map((l) => bin(l[0]))) : 0;
  const hi = sorted.length ? Math.max(...sorted.map((l) => bin(l[l.length - 1]))) + 1 : 1;
  const edges = Array.from({ length: hi - lo + 1 }, (_, i) => (lo + i) / binsPerOctave);
  const counts: Record<string, number[]> = {};
  const summary: ScaleHistogram['summary'] = {};
  for (const [type, list] of Object.entries(values)) {
    counts[type] = new Array(hi - lo).fill(0);
    for (const s of list) counts[type][bin(s) - lo]++;
    summary[type] = {
      count: list.length,
      min: list[0],
      median: list[Math.floor(list.length / 2)],
      max: list[list.length - 1],
    };
  }
  return { edges, counts, summary, ratios };
}

// ---- tables ----------------------------------------------------------------------------------------

export function formatPpl(ppl: number | null | undefined): string {
  if (ppl === null || ppl === undefined) return 'n/a';
  if (Number.isNaN(ppl)) return 'nan';
  if (!Number.isFinite(ppl)) return 'inf';
  return ppl >= 1e6 ? ppl.toExponential(2) : ppl.toFixed(2);
}

function mdTable(header: string[], body: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...body.map(line)].join('\n');
}

/** The cell of a row and column of the study, if the sweep has it. */
export function cellAt(result: SweepResult, row: Axis, col: Axis): SweepCell | undefined {
  return result.cells.find((c) => c.row === row.key && c.col === col.key);
}

/** Rows x columns of perplexities, the full-precision row first. */
export function pplTable(result: SweepResult): string {
  const fp = formatPpl(result.fp.ppl);
  const body = [
    ['full precision', ...result.cols.map(() => fp)],
    ...result.rows.map((row) => [
      row.label,
      ...result.cols.map((col) => {
        const cell = cellAt(result, row, col);
        return !cell ? '-' : cell.error ? 'error' : formatPpl(cell.ppl);
      }),
    ]),
  ];
  return mdTable(['', ...result.cols.map((c) => c.label)], body);
}

/** KL from full precision per cell (mean nats per token, same top token %), when the sweep measured it. */
export function klTable(result: SweepResult): string | undefined {
  if (!result.cells.some((c) => c.kl)) return undefined;
  const body = result.rows.map((row) => [
    row.label,
    ...result.cols.map((col) => {
      const kl = cellAt(result, row, col)?.kl;
      return kl ? `${kl.mean.toFixed(4)} (${(kl.sameTop * 100).toFixed(1)}%)` : '-';
    }),
  ]);
  return mdTable(['KL from fp (same top token)', ...result.cols.map((c) => c.label)], body);
}

function histogramTables(h: ScaleHistogram): string {
  const types = Object.keys(h.counts);
  const counts = mdTable(
    ['log2(scale)', 'scale', ...types],
    h.edges
      .slice(0, -1)
      .map((lo, i) => [
        `[${lo}, ${h.edges[i + 1]})`,
        `${(2 ** lo).toPrecision(3)}-${(2 ** h.edges[i + 1]).toPrecision(3)}`,
        ...types.map((t) => String(h.counts[t][i])),
      ]),
  );
  const summary = mdTable(
    ['group', 'scales', 'min', 'median', 'max'],
    types.map((t) => {
      const s = h.summary[t];
      return [t, String(s.count), s.min.toPrecision(3), s.median.toPrecision(3), s.max.toPrecision(3)];
    }),
  );
  const layers = Math.max(0, ...Object.values(h.ratios).map((r) => r.length));
  const ratios = mdTable(
    ['ratio', ...Array.from({ length: layers }, (_, i) => `L${i}`), 'mean'],
    Object.entries(h.ratios).map(([t, r]) => {
      const chosen = r.filter((x) => !Number.isNaN(x));
      const mean = chosen.reduce((a, b) => a + b, 0) / Math.max(chosen.length, 1);
      return [t, ...r.map((x) => (Number.isNaN(x) ? '-' : x.toFixed(2))), mean.toFixed(3)];
    }),
  );
  return `AWQ scales (count per log2 bin):\n\n${counts}\n\n${summary}\n\nAWQ ratios chosen per layer:\n\n${ratios}`;
}

export function sweepMarkdown(result: SweepResult): string {
  const e = result.eval;
  const calibs = new Map<string, CalibRecord>();
  for (const c of result.cells)
    if (c.calibration) calibs.set(`${c.calibration.samples}x${c.calibration.seqLen}`, c.calibration);
  const lines = [
    `## llmq sweep ${result.study}: ${result.title}`,
    '',
    `Model ${result.model} on ${result.device}. Perplexity of ${e.source}: ${e.windows} windows of ${e.seqlen} tokens.` +
      (calibs.size
        ? ` Calibration: ${[...calibs.values()].map((c) => `${c.samples} x ${c.seqLen} tokens (seed ${c.seed}${c.sampler === 'gptq' ? ', GPTQ reference draw' : ''})`).join(', ')} from ${[...calibs.values()][0].source}.`
        : ''),
    '',
    pplTable(result),
  ];
  const kl = klTable(result);
  if (kl) lines.push('', kl);
  const failed = result.cells.filter((c) => c.error);
  if (failed.length)
    lines.push('', ...failed.map((c) => `- error in ${c.row} / ${c.col}: ${c.error?.split('\n')[0]}`));
  if (result.awq_histogram) lines.push('', histogramTables(result.awq_histogram));
  return `${lines.join('\n')}\n`;
}

/** Writes through a temporary file in the same folder and a rename, so readers never see half a file. */
export function writeAtomic(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}
