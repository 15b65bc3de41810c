"""PyTorch baselines for bench/gpu.ts, run in the same device call: f32 (no TF32) and bf16 GEMM
4096^3, llama-small WikiText-2 perplexity (windows of 2048, fp32 and bf16) from the same token ids,
and a random-weight Llama-3-8B bf16 prefill of 2048 tokens. Prints JSON lines, writes --out."""
import argparse, json, math, time
import numpy as np
import torch
import transformers

p = argparse.ArgumentParser()
p.add_argument('--model'); p.add_argument('--tokens'); p.add_argument('--out')
p.add_argument('--skip', default='')
a = p.parse_args()
skip = set(filter(None, a.skip.split(',')))
results = []
def report(r):
    print(json.dumps(r), flush=True); results.append(r)
    if a.out: json.dump(results, open(a.out, 'w'), indent=1)

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = 'cuda'
report({'what': 'device', 'torch': torch.__version__, 'gpu': torch.cuda.get_device_name()})

def timeit(fn, min_s=0.5):
    fn(); torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while True:
        fn(); n += 1
        torch.cuda.synchronize()
        if time.perf_counter() - t0 > min_s: break
    return (time.perf_counter() - t0) / n

if 'gemm' not in skip:
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(4096, 4096, device=dev, dtype=dt); w = torch.randn(4096, 4096, device=dev, dtype=dt)
        s = timeit(lambda: x @ w.T)
        report({'what': 'gemm', 'label': '4096^3', 'dtype': str(dt), 'ms': s * 1e3, 'tflops': 2 * 4096**3 / s / 1e12})
    for M, N, K, label in ((4096, 4096, 4096, '4096^3'), (2048, 4096, 4096, 'llama-3-8b q/o_proj'),
                           (2048, 14336, 4096, 'llama-3-8b gate/up_proj'), (2048, 4096, 14336, 'llama-3-8b down_proj')):
        x = torch.randint(-128, 128, (M, K), device=dev, dtype=torch.int8)
        w = torch.randint(-128, 128, (N, K), device=dev, dtype=torch.int8)
        s = timeit(lambda: torch._int_mm(x, w.T))
        report({'what': 'int8gemm', 'label': label, 'ms': s * 1e3, 'tops': 2 * M * N * K / s / 1e12})

if 'ppl' not in skip and a.model and a.tokens:
    ids = torch.from_numpy(np.fromfile(a.tokens, dtype=np.int32).astype(np.int64))
    n = ids.numel() // 2048
    for dt in (torch.float32, torch.bfloat16):
        m = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dt).to(dev).eval()
        torch.cuda.synchronize(); t0 = time.perf_counter()
        nlls = []
        with torch.no_grad():
            for i in range(n):
                x = ids[i * 2048:(i + 1) * 2048].to(dev)[None]
                logits = m(x).logits.float()
                nlls.append(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:]).item())
        sec = time.perf_counter() - t0
        report({'what': 'ppl', 'dtype': str(dt), 'windows': n, 'ppl': math.exp(sum(nlls) / n), 'seconds': sec})
        del m; torch.cuda.empty_cache()

if '8b' not in skip:
    cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        m = transformers.LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    x = torch.randint(0, 128000, (1, 2048), device=dev)
    with torch.no_grad():
        s = timeit(lambda: m(x).logits, min_s=1.0)
    report({'what': 'prefill', 'model': 'llama-3-8b random bf16 (transformers, sdpa)', 'seqLen': 2048,
            'seconds': s, 'tokensPerSecond': 2048 / s})
