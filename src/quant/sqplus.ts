/**
 * SmoothQuant+ (Pan et al., 2023): SmoothQuant smoothing before W4 group-wise RTN, with one alpha
 * for the whole model chosen on a grid (step 0.05 over [0, 1]) by the loss of the whole quantized
 * model on `lossSamples` calibration samples. Default loss 'logit-mse': the mean squared error of
 * the quantized model's logits against the full-precision model's (the paper's output error; the
 * fp logits are computed once and kept on the host, lossSamples x seqLen x vocab f32 values);
 * 'nll': the calibration next-token NLL of the quantized model.
 * "No smoothing" (plain RTN) is a candidate too, reported as alpha null, so smoothing is only
 * applied when it lowers the calibration loss.
 * Activation maxima come from one full-precision pass over the calibration set.
 */
import type { CalibSet } from '../calib/data.ts';
import { fail } from '../errors.ts';
import { LINEARS, type LinearName, type LlamaModel } from '../model/llama.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { registerModelStep, timed } from './pipeline.ts';
import type { Recipe, SqPlusStep } from './recipe.ts';
import { SMOOTH_GROUPS, smoothLayer } from './smoothquant.ts';
import { fakeQuantWeight, weightSpecOf } from './weights.ts';

type ActMax = Map<string, Float32Array>;

const key = (layer: number, name: LinearName) => `${layer}.${name}`;

/** Per-channel max |x| of every smoothed linear's input, full-precision model. */
async function activationMaxima(model: LlamaModel, calib: CalibSet): Promise<ActMax> {
  const maxima: ActMax = new Map();
  const pending: Promise<void>[] = [];
  const smoothed = new Set<LinearName>(SMOOTH_GROUPS.map((g) => g.linears[0]));
  for (let s = 0; s < calib.samples; s++) {
    const ids = calib.ids.subarray(s * calib.seqLen, (s + 1) * calib.seqLen);
    const logits = model.forward(
      ids,
      { batch: 1, seqLen: calib.seqLen },
      {
        linearInput: (layer, name, x) => {
          if (!smoothed.has(name)) return undefined;
          pending.push(
            model.backend.columnStats(x).then((st) => {
              const prev = maxima.get(key(layer, name));
              maxima.set(key(layer, name), prev ? prev.map((v, j) => Math.max(v, st.absMax[j])) : st.absMax);
            }),
          );
          return undefined;
        },
      },
    );
    logits.dispose();
  }
  await Promise.all(pending);
  return maxima;
}

interface Snapshot {
  norms: Float32Array[][];
  weights: Float32Array[][];
}

async function snapshot(model: LlamaModel): Promise<Snapshot> {
  const b = model.backend;
  const norms: Float32Array[][] = [];
  const weights: Float32Array[][] = [];
  for (const L of model.layers) {
    norms.push([await b.read(L.inputNorm), await b.read(L.postNorm)]);
    weights.push(await Promise.all(LINEARS.map((n) => b.read(L.linears[n].weight))));
  }
  return { norms, weights };
}

function restore(model: LlamaModel, snap: Snapshot): void {
  const b = model.backend;
  model.layers.forEach((L, i) => {
    L.inputNorm = b.upload(snap.norms[i][0], L.inputNorm.shape, 'f32');
    L.postNorm = b.upload(snap.norms[i][1], L.postNorm.shape, 'f32');
    LINEARS.forEach((n, k) => {
      const lin = L.linears[n];
      lin.weight = b.upload(snap.weights[i][k], lin.weight.shape, 'f32');
      lin.quantized = undefined;
    });
  });
}

/** Fake-quantizes the target weights in place (values only; the pipeline encodes them later). */
async function roundWeights(model: LlamaModel, recipe: Recipe): Promise<void> {
  for (const [i, L] of model.layers.entries())
    for (const n of recipe.targets) {
      const lin = L.linears[n];
      const spec = weightSpecOf(model, recipe, i, n);
      if (!spec) continue;
      const q: Tensor = await fakeQuantWeight(model.backend, lin.weight, spec);
      lin.weight.dispose();
      lin.weight = q;
    }
}

function sampleIds(calib: CalibSet, s: number): Int32Array {
  return calib.ids.subarray(s * calib.seqLen, (s + 1) * calib.seqLen);
}

/** Mean next-token NLL of the model on the first `samples` calibration samples. */
async function calibrationNll(model: LlamaModel, calib: CalibSet, samples: number): Promise<number> {
  let total = 0;
  let count = 0;
  for (let s = 0; s < samples; s++) {
    const ids = sampleIds(calib, s);
    const logits = model.forward(ids, { batch: 1, seqLen: calib.seqLen });
    const targets = new Int32Array(ids.length);
    targets.set(ids.subarray(1));
    const nll = await model.backend.read(model.backend.nll(logits, targets));
    logits.dispose();
    for (let t = 0; t < ids.length - 1; t++) total += nll[t];
    count += ids.length - 1;
  }
  return total / count;
}

const MAX_REFERENCE_BYTES = 2 ** 31;

/** The full-precision logits of the first `samples` calibration samples, kept on the host. */
async function referenceLogits(model: LlamaModel, calib: CalibSet, samples: number): Promise<Float32Array[]> {
  const bytes = samples * calib.seqLen * model.config.vocabSize * 4;
  if (bytes > MAX_REFERENCE_BYTES)
    fail(
      `sqplus: the logit-mse loss would keep ${(bytes / 2 ** 30).toFixed(1)} GiB of reference logits; lower lossSamples or use loss "nll"`,
    );
  const out: Float32Array[] = [];
  for (let s = 0; s < samples; s++) {
    const logits = model.forward(sampleIds(calib, s), { batch: 1, seqLen: calib.seqLen });
    out.push(await model.backend.read(logits));
    logits.dispose();
  }
  return out;
}

/** Mean squared difference between the model's logits and the reference logits. */
async function logitMse(model: LlamaModel, calib: CalibSet, reference: Float32Array[]): Promise<number> {
  let total = 0;
  let count = 0;
  for (const [s, want] of reference.entries()) {
    const logits = model.forward(sampleIds(calib, s), { batch: 1, seqLen: calib.seqLen });
    const ref = model.backend.upload(want, logits.shape, 'f32');
    total += await model.backend.sumSquaredDiff(logits, ref);
    count += want.length;
    logits.dispose();
    ref.dispose();
  }
  return total / count;
}

async function sqplus(
  model: LlamaModel,
  recipe: Recipe,
  calib: CalibSet,
  step: SqPlusStep,
  timings: Record<string, number>,
) {
  const maxima = await timed(timings, 'sqplus capture', () => activationMaxima(model, calib));
  const snap = await snapshot(model);
  const lossSamples = Math.min(step.lossSamples, calib.samples);
  const reference = step.loss === 'logit-mse' ? await referenceLogits(model, calib, lossSamples) : undefined;
  const loss = () =>
    reference ? logitMse(model, calib, reference) : calibrationNll(model, calib, lossSamples);
  const losses: { alpha: number | null; loss: number }[] = [];
  const candidates: (number | null)[] = [null];
  for (let i = 0; Math.round(i * step.step * 1e6) <= 1e6; i++)
    candidates.push(Math.min(1, Math.round(i * step.step * 1e6) / 1e6));
  for (const alpha of candidates)
    await timed(timings, 'sqplus search', async () => {
      if (alpha !== null) await smoothModel(model, maxima, alpha);
      await roundWeights(model, recipe);
      losses.push({ alpha, loss: await loss() });
      restore(model, snap);
    });
  const best = losses.reduce((x, y) => (y.loss < x.loss ? y : x));
  if (best.alpha !== null) await smoothModel(model, maxima, best.alpha);
  return { alpha: best.alpha, loss: step.loss, lossSamples, losses };
}

async function smoothModel(model: LlamaModel, maxima: ActMax, alpha: number): Promise<void> {
  for (let l = 0; l < model.layers.length; l++)
    await smoothLayer(model, l, (n) => maxima.get(key(l, n)), alpha);
}

registerModelStep('sqplus', async (model, recipe, calib, report) => {
  const step = recipe.steps.find((s) => s.method === 'sqplus') as SqPlusStep;
  report.model.sqplus = await sqplus(model, recipe, calib, step, report.timings);
});
