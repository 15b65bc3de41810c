import { fail } from '../errors.ts';
import { CpuBackend } from './cpu/backend.ts';
import type { Backend } from './tensor.ts';
import { openDevice, WebGpuBackend } from './webgpu/backend.ts';

export type DeviceName = 'cpu' | 'webgpu' | 'auto';

/**
 * The backend for `--device`: cpu, webgpu (fails when no adapter exists), or auto (webgpu when an
 * adapter can be created, else cpu). Dawn toggles come from $LLMQ_WEBGPU_FLAGS. auto passes over
 * software Vulkan adapters (Mesa lavapipe, SwiftShader): the CPU backend is far faster than they are.
 */
export async function createBackend(device: DeviceName = 'cpu'): Promise<Backend> {
  if (device === 'cpu') return new CpuBackend();
  if (device === 'webgpu') return WebGpuBackend.create();
  if (device === 'auto') {
    const probe = await openDevice();
    if (!probe) return new CpuBackend();
    const software = isSoftwareAdapter(probe.adapter);
    probe.device.destroy();
    return software ? new CpuBackend() : WebGpuBackend.create();
  }
  return fail(`--device must be cpu, webgpu or auto, got "${device}"`);
}

function isSoftwareAdapter(adapter: GPUAdapter): boolean {
  const info = (adapter as { info?: Partial<GPUAdapterInfo> }).info;
  const text = `${info?.vendor ?? ''} ${info?.architecture ?? ''} ${info?.description ?? ''}`;
  return /llvmpipe|lavapipe|swiftshader|software/i.test(text);
}
