/**
 * Resuming an interrupted quantization (DESIGN.md, pipeline step 3). After each decoder layer the
 * pipeline hands the finished layer and the next layer's calibration inputs to a ResumeStore, which
 * keeps them in a work directory (`<out>.partial/` for `llmq quantize`):
 *   layer-<i>.safetensors   layer i as the checkpoint stores it (codes, scales, norms, ...)
 *   inputs-<i>.safetensors  the f32 hidden states entering layer i + 1, one tensor per chunk
 *   state.json              key, layers done, the per-layer notes and timings so far
 * Every file is written under a temporary name and renamed, state.json last, so an interruption at any
 * moment leaves the previous consistent state. The hidden states are the big part (samples x seqLen x
 * hidden f32: 4.3 GB for 128 x 2048 tokens of an 8B model), so they and the state are written at most
 * once per `intervalMs` (default a minute): an interruption loses at most about that much work. A run resumes only from a state with the same key
 * (source weights, recipe, calibration ids, backend, llmq version); anything else starts afresh.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { formatName } from '../formats/index.ts';
import { openCheckpoint, writeJsonAtomic, writeSafetensors } from '../io/safetensors.ts';
import type { BatchShape, LlamaModel } from '../model/llama.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { layerTensors, readStoredLinear } from './checkpoint.ts';
import type { Recipe } from './recipe.ts';
import { linearPlace } from './weights.ts';

interface State {
  key: string;
  layers: number;
  notes: Record<string, unknown>[];
  timings: Record<string, number>;
}

export interface ResumePoint {
  /** decoder layers already quantized (restored into the model) */
  layers: number;
  /** the calibration inputs of the next layer */
  inputs: Tensor[];
  notes: Record<string, unknown>[];
  timings: Record<string, number>;
}

export class ResumeStore {
  private lastSaved = performance.now();

  constructor(
    readonly dir: string,
    readonly key: string,
    readonly intervalMs = 60_000,
  ) {}

  /** A key over everything that decides the result. */
  static key(parts: Record<string, unknown>): string {
    return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
  }

  private state(): State | undefined {
    try {
      const state = JSON.parse(fs.readFileSync(path.join(this.dir, 'state.json'), 'utf8')) as State;
      return state.key === this.key ? state : undefined;
    } catch {
      return undefined;
    }
  }

  /** Puts the finished layers of an earlier run into `model` and returns where to go on, if any. */
  restore(model: LlamaModel, recipe: Recipe, shapes: BatchShape[]): ResumePoint | undefined {
    const state = this.state();
    if (!state || state.layers === 0) {
      this.clear();
      return undefined;
    }
    const stored = {
      recipe,
      weight_format: recipe.weights ? formatName(recipe.weights) : null,
      activation_format: recipe.activations ? formatName(recipe.activations.format) : null,
    };
    for (let i = 0; i < state.layers; i++) {
      const ckpt = openCheckpoint(this.file('layer', i));
      try {
        model.replaceLayer(i, ckpt, (layer, name, shape) =>
          readStoredLinear(ckpt, model.backend, stored, linearPlace(model.config, layer, name), shape),
        );
      } finally {
        ckpt.close();
      }
    }
    const ckpt = openCheckpoint(this.file('inputs', state.layers - 1));
    try {
      const inputs = shapes.map((s, c) => {
        const t = ckpt.read(`chunk.${c}`);
        return model.backend.upload(
          t.data as Float32Array,
          [s.batch * s.seqLen, model.config.hiddenSize],
          'f32',
        );
      });
      return { layers: state.layers, inputs, notes: state.notes, timings: state.timings };
    } finally {
      ckpt.close();
    }
  }

  /** Records that `layer` is done and `inputs` enter the next one. */
  async save(
    model: LlamaModel,
    layer: number,
    inputs: Tensor[],
    notes: Record<string, unknown>[],
    timings: Record<string, number>,
  ): Promise<void> {
    fs.mkdirSync(this.dir, { recursive: true });
    writeSafetensors(this.file('layer', layer), await layerTensors(model, layer));
    if (performance.now() - this.lastSaved < this.intervalMs) return;
    const previous = this.state()?.layers ?? 0;
    const chunks = await Promise.all(inputs.map((t) => model.backend.read(t)));
    writeSafetensors(
      this.file('inputs', layer),
      chunks.map((data, c) => ({ name: `chunk.${c}`, dtype: 'F32', shape: inputs[c].shape, data })),
    );
    const state: State = { key: this.key, layers: layer + 1, notes, timings };
    writeJsonAtomic(path.join(this.dir, 'state.json'), state);
    if (previous > 0) fs.rmSync(this.file('inputs', previous - 1), { force: true });
    this.lastSaved = performance.now();
  }

  clear(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private file(kind: 'layer' | 'inputs', i: number): string {
    return path.join(this.dir, `${kind}-${String(i).padStart(5, '0')}.safetensors`);
  }
}
