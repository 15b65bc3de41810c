import { fail } from '../errors.ts';
import { CpuBackend } from './cpu/backend.ts';
import type { Backend } from './tensor.ts';

export type DeviceName = 'cpu' | 'webgpu' | 'auto';

export async function createBackend(device: DeviceName = 'cpu'): Promise<Backend> {
  if (device === 'cpu') return new CpuBackend();
  if (device !== 'webgpu' && device !== 'auto') return fail(`--device must be cpu, webgpu or auto, got "${device}"`);
  const { tryCreateWebGpuBackend } = await import('./webgpu/backend.ts');
  const gpu = await tryCreateWebGpuBackend();
  if (gpu) return gpu;
  if (device === 'webgpu') return fail('--device webgpu: no WebGPU adapter is available on this machine');
  return new CpuBackend();
}
