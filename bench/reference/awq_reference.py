"""Independent PyTorch port of AWQ as the authors' llm-awq code runs it (auto_scale + auto_clip +
pseudo-quantization), written from our reading of that code, for checking llmq's AWQ numbers.

Inputs (made by bench/awq-check.ts): calib.bin / eval.bin (int32 token ids), meta.json.
Usage: python3 awq_reference.py <model_dir> <work_dir>  ->  <work_dir>/reference.json
"""
import json
import math
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

model_dir, work = sys.argv[1], sys.argv[2]
meta = json.load(open(f"{work}/meta.json"))
dev = "cuda" if torch.cuda.is_available() else "cpu"
calib = torch.from_numpy(np.fromfile(f"{work}/calib.bin", dtype=np.int32).astype(np.int64))
evals = torch.from_numpy(np.fromfile(f"{work}/eval.bin", dtype=np.int32).astype(np.int64))
W_BIT, GROUP = meta["w_bit"], meta["group"]


def quantize(w):
    """AutoAWQ/llm-awq pseudo_quantize_tensor: asymmetric, min/max of each group."""
    shape = w.shape
    w = w.reshape(-1, GROUP)
    mx, mn = w.amax(dim=1, keepdim=True), w.amin(dim=1, keepdim=True)
    qmax = 2**W_BIT - 1
    scale = (mx - mn).clamp(min=1e-5) / qmax
    zero = (-torch.round(mn / scale)).clamp(0, qmax)
    w = (torch.clamp(torch.round(w / scale) + zero, 0, qmax) - zero) * scale
    return w.reshape(shape)


def load():
    m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).to(dev).eval()
    return m


@torch.no_grad()
def perplexity(m):
    seq = meta["eval_seqlen"]
    nlls = []
    for w in range(meta["eval_windows"]):
        ids = evals[w * seq:(w + 1) * seq].unsqueeze(0).to(dev)
        logits = m(ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
        nlls.append(loss.item())
    return math.exp(sum(nlls) / len(nlls)), nlls


def rtn(m):
    for layer in m.model.layers:
        for mod in layer.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.data = quantize(mod.weight.data)


def layer_inputs(m):
    """Hidden states entering layer 0 for the calibration samples (plus rotary embeddings)."""
    n, seq = meta["calib_samples"], meta["calib_seqlen"]
    ids = calib.reshape(n, seq).to(dev)
    h = m.model.embed_tokens(ids)
    pos = torch.arange(seq, device=dev).unsqueeze(0).expand(n, -1)
    rope = m.model.rotary_emb(h, pos)
    return h, rope


def run_layer(layer, h, rope):
    out = layer(h, position_embeddings=rope, attention_mask=None, position_ids=None)
    return out[0] if isinstance(out, tuple) else out


def attn_forward(layer, x, rope):
    out = layer.self_attn(hidden_states=x, position_embeddings=rope, attention_mask=None)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def search_scale(block_fn, x, x_mean, linears):
    org = block_fn(x)
    saved = [l.weight.data.clone() for l in linears]
    best, best_loss, best_ratio = None, float("inf"), -1
    for i in range(20):
        r = i / 20
        s = x_mean.pow(r).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        for l in linears:
            l.weight.mul_(s.view(1, -1))
            l.weight.data = quantize(l.weight.data) / s.view(1, -1)
        loss = (org - block_fn(x)).float().pow(2).mean().item()
        if loss < best_loss:
            best_loss, best, best_ratio = loss, s.clone(), r
        for l, w in zip(linears, saved):
            l.weight.data = w.clone()
    return best, best_ratio


@torch.no_grad()
def auto_clip(linear, x):
    w = linear.weight.data
    co, ci = w.shape
    x = x.reshape(-1, ci)
    x = x[0::max(1, x.shape[0] // 512)]
    xg = x.reshape(1, x.shape[0], -1, GROUP)
    wg = w.reshape(co, 1, -1, GROUP)
    org_max = wg.abs().amax(dim=-1, keepdim=True)
    best_max = org_max.clone()
    min_errs = torch.full_like(org_max, float("inf"))
    org_out = (xg * wg).sum(dim=-1)
    for k in range(10):
        mx = org_max * (1 - k / 20)
        cur = torch.clamp(wg, -mx, mx)
        q = quantize(cur)
        err = ((xg * q).sum(dim=-1) - org_out).pow(2).mean(dim=1).view(min_errs.shape)
        better = err < min_errs
        min_errs[better] = err[better]
        best_max[better] = mx[better]
    linear.weight.data = torch.clamp(wg, -best_max, best_max).reshape(co, ci)


@torch.no_grad()
def awq(m):
    h, rope = layer_inputs(m)
    ratios = []
    for layer in m.model.layers:
        feats = {}
        hooks = [
            mod.register_forward_hook(lambda _m, inp, _o, name=name: feats.__setitem__(name, inp[0].detach()))
            for name, mod in layer.named_modules()
            if isinstance(mod, torch.nn.Linear)
        ]
        out = run_layer(layer, h, rope)
        for hk in hooks:
            hk.remove()
        at, mlp = layer.self_attn, layer.mlp
        mean = lambda t: t.abs().reshape(-1, t.shape[-1]).float().mean(0)
        plan = []
        s, r = search_scale(lambda x: attn_forward(layer, x, rope), feats["self_attn.q_proj"], mean(feats["self_attn.q_proj"]), [at.q_proj, at.k_proj, at.v_proj])
        plan.append(("in", s, [at.q_proj, at.k_proj, at.v_proj], "self_attn.q_proj")); ratios.append(r)
        if at.v_proj.weight.shape == at.o_proj.weight.shape:
            s, r = search_scale(at.o_proj, feats["self_attn.o_proj"], mean(feats["self_attn.o_proj"]), [at.o_proj])
            plan.append((at.v_proj, s, [at.o_proj], "self_attn.o_proj")); ratios.append(r)
        s, r = search_scale(mlp, feats["mlp.gate_proj"], mean(feats["mlp.gate_proj"]), [mlp.gate_proj, mlp.up_proj])
        plan.append(("post", s, [mlp.gate_proj, mlp.up_proj], "mlp.gate_proj")); ratios.append(r)
        s, r = search_scale(mlp.down_proj, feats["mlp.down_proj"], mean(feats["mlp.down_proj"]), [mlp.down_proj])
        plan.append((mlp.up_proj, s, [mlp.down_proj], "mlp.down_proj")); ratios.append(r)
        for prev, s, lins, feat in plan:
            if prev == "in":
                layer.input_layernorm.weight.div_(s)
            elif prev == "post":
                layer.post_attention_layernorm.weight.div_(s)
            else:
                prev.weight.div_(s.view(-1, 1))
            for l in lins:
                l.weight.mul_(s.view(1, -1))
            feats[feat] = feats[feat] / s.view(1, -1)
        feats["self_attn.k_proj"] = feats["self_attn.v_proj"] = feats["self_attn.q_proj"]
        feats["mlp.up_proj"] = feats["mlp.gate_proj"]
        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear) and not any(k in name for k in ("q_", "k_")):
                auto_clip(mod, feats[name])
        h = out
    rtn(m)
    return ratios


result = {}
m = load()
result["fp"] = perplexity(m)[0]
rtn(m)
result["rtn"] = perplexity(m)[0]
m = load()
result["awq_ratios"] = awq(m)
result["awq"], result["awq_window_nll"] = perplexity(m)
json.dump(result, open(f"{work}/reference.json", "w"), indent=1)
print(json.dumps(result))
