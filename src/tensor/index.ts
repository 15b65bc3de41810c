import { fail } from '../errors.ts';
import { CpuBackend } from './cpu/backend.ts';
import type { Backend } from './tensor.ts';

export type DeviceName = 'cpu' | 'webgpu' | 'auto';

export async function createBackend(device: DeviceName = 'cpu'): Promise<Backend> {
  if (device === 'cpu' || device === 'auto') return new CpuBackend();
  if (device === 'webgpu')
    return fail('--device webgpu: the WebGPU backend is not built yet (issue 6); use --device cpu');
  return fail(`--device must be cpu, webgpu or auto, got "${device}"`);
}
