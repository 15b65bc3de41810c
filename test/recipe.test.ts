/** Recipes: built-ins resolve and say exactly what they do; bad recipe files fail with one line. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { UserError } from '../src/errors.ts';
import { builtinRecipeNames, explainRecipe, resolveRecipe } from '../src/quant/recipe.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-recipe-'));
function file(name: string, text: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

test('every built-in resolves; the issue names are there; rtn-w4g128 means asymmetric INT4 g128', () => {
  const names = builtinRecipeNames();
  for (const n of ['rtn-w4g128', 'rtn-w3g128', 'rtn-w8', 'rtn-w8a8', 'rtn-w4a8', 'rtn-w4a4', 'mxint4-128'])
    assert.ok(names.includes(n), n);
  for (const n of [
    'mxint8-128-a-mxint8-128',
    'mxfp4',
    'nvfp4',
    'awq-w4g128',
    'smoothquant-w8a8',
    'sqplus-w4g128',
  ])
    assert.ok(names.includes(n), n);
  for (const n of names) assert.equal(resolveRecipe(n).name, n);
  const r = resolveRecipe('rtn-w4g128');
  assert.deepEqual(r.weights, { kind: 'int', bits: 4, symmetric: false, granularity: 'group', group: 128 });
  assert.equal(r.activations, undefined);
  assert.match(explainRecipe(resolveRecipe('rtn-w8a8')), /activations\s+INT8 symmetric.*per row.*dynamic/i);
  const gptq = resolveRecipe('gptq-w4g128');
  assert.deepEqual(gptq.calib, { samples: 128, seqLen: 2048 });
  assert.equal(gptq.propagate, 'quantized');
  const drawn = resolveRecipe(
    file('gptq-draw.json', '{"base": "gptq-w3g128", "calib": {"sampler": "gptq", "samples": 64}}'),
  );
  assert.deepEqual(drawn.calib, { samples: 64, seqLen: 2048, sampler: 'gptq' });
  assert.equal(resolveRecipe('awq-w4g128').propagate, 'fp');
});

test('a YAML recipe file with a base and step overrides', () => {
  const r = resolveRecipe(
    file('m.yaml', 'base: mixed-w4a4\nweights: int4-g64\nsteps:\n  - mixed: { salientPercent: 8 }\n'),
  );
  assert.equal(r.weights?.kind === 'int' && r.weights.group, 64);
  assert.deepEqual(r.steps, [{ method: 'mixed', salientPercent: 8 }]);
  assert.equal(r.activations?.format.kind, 'int');
});

const BAD: [string, string, RegExp][] = [
  ['unknown top-level key', '{"weights": "int4-g128", "wieghts": 1}', /unknown key "wieghts"/],
  ['unknown step method', '{"weights": "int4-g128", "steps": ["awk"]}', /unknown method "awk"/],
  ['unknown step key', '{"weights": "int4-g128", "steps": [{"awq": {"grids": 10}}]}', /unknown key "grids"/],
  ['bad format name', '{"weights": "int4-g12x"}', /unknown format 'int4-g12x'/],
  ['nothing quantized', '{"steps": ["smoothquant"]}', /quantizes nothing/],
  [
    'static per-token',
    '{"weights": "int8-row-sym", "activations": "int8-row-sym", "static": true}',
    /static activation/,
  ],
  ['static MX', '{"weights": "int8-row-sym", "activations": "mxint8", "static": true}', /static activation/],
  ['awq without weights', '{"activations": "int8-row-sym", "steps": ["awq"]}', /awq needs a weight format/],
  [
    'alpha out of range',
    '{"weights": "int8-row-sym", "steps": [{"smoothquant": {"alpha": 1.5}}]}',
    /alpha must be in/,
  ],
  ['propagate', '{"weights": "int4-g128", "propagate": "gpu"}', /"propagate" must be/],
  [
    'calib sampler',
    '{"weights": "int4-g128", "steps": ["gptq"], "calib": {"sampler": "c4"}}',
    /calib.sampler must be one of pool, gptq/,
  ],
  ['not an object', '[1, 2]', /must be an object/],
];

for (const [what, text, message] of BAD)
  test(`bad recipe: ${what}`, () => {
    const f = file(`${what.replace(/\W/g, '_')}.json`, text);
    assert.throws(
      () => resolveRecipe(f),
      (e: unknown) => e instanceof UserError && message.test(e.message) && !e.message.includes('\n'),
    );
  });

test('a name that is neither built-in nor a file', () => {
  assert.throws(() => resolveRecipe('awq-w5'), /neither a built-in recipe/);
});
