"""The CPU attention path computes what PyTorch's SDPA computes, values and gradients, for every mask it is given."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from conftest import bench_script

from bertgpt.errors import UserError
from bertgpt.models.attention import count_cpu_flash_flops, matmul_attention, scaled_dot_product_attention


def qkv(B=3, nh=4, T=9, hs=8, nkv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, nh, T, hs), (B, nkv or nh, T, hs), (B, nkv or nh, T, hs)]
    return [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def key_padding(B=3, T=9):
    lengths = torch.tensor([T, T - 3, 2])[:B]
    return (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, T)


def outputs_and_grads(attention, q, k, v, **kwargs):
    y = attention(q, k, v, **kwargs)
    grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(), (q, k, v))
    return y, grads


CASES = {
    "no mask": {},
    "key padding": {"attn_mask": key_padding()},
    "causal": {"is_causal": True},
    "causal and left padding": {"attn_mask": torch.ones(9, 9, dtype=torch.bool).tril() & key_padding().flip(-1) | torch.eye(9, dtype=torch.bool)},
    "float bias": {"attn_mask": torch.randn(3, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))},
    "scale": {"scale": 0.3},
}


@pytest.mark.parametrize("case", CASES)
def test_matmul_attention_matches_sdpa(case):
    kwargs = CASES[case]
    y, grads = outputs_and_grads(matmul_attention, *qkv(), **kwargs)
    y_ref, grads_ref = outputs_and_grads(F.scaled_dot_product_attention, *qkv(), **kwargs)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


def test_grouped_query_heads_keep_one_copy_of_keys_and_values_for_the_backward():
    q, k, v = qkv(nh=6, nkv=2)
    with bench_script("bench_activations").saved_storages() as kept:  # storage -> bytes, of what autograd keeps
        matmul_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert {k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr()} <= kept.keys()  # k and v themselves
    probabilities, causal_mask = 3 * 6 * 9 * 9 * 8, 9 * 9  # float64 (B, nh, T, S), bool (T, S)
    assert sum(kept.values()) == q.numel() * 8 + k.numel() * 8 + v.numel() * 8 + probabilities + causal_mask


@pytest.mark.parametrize(("model", "causal"), [("tiny_bert", False), ("tiny_chat", True)])
def test_one_attention_call_at_a_models_shape_keeps_the_probabilities_on_the_matmul_path_only(model, causal, request):
    from bertgpt.models.library import build

    net = build(request.getfixturevalue(model), pretrained=False)
    B, T, heads = 2, 64, net.config.num_attention_heads
    kv_heads, head_size = getattr(net.config, "num_key_value_heads", None) or heads, net.config.hidden_size // heads
    kept = bench_script("bench_activations").attention_call_bytes(net, B, T, torch.float32)
    q, k_and_v, probabilities = B * heads * T * head_size * 4, 2 * B * kv_heads * T * head_size * 4, B * heads * T * T * 4
    assert kept["matmul"] == q + k_and_v + probabilities + (T * T if causal else 0)  # a decoder's (T, T) bool mask
    assert kept["sdpa"] < kept["matmul"] - probabilities / 2


def test_grouped_query_heads_match_sdpa():
    y, grads = outputs_and_grads(matmul_attention, *qkv(nh=6, nkv=2), is_causal=True, enable_gqa=True)
    y_ref, grads_ref = outputs_and_grads(F.scaled_dot_product_attention, *qkv(nh=6, nkv=2), is_causal=True, enable_gqa=True)
    torch.testing.assert_close(y, y_ref)
    assert grads[1].shape == (3, 2, 9, 8)  # the k gradient sums over the query heads sharing each k head
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


def test_dropout_drops_attention_weights_only_when_asked():
    q, k, v = qkv()
    torch.testing.assert_close(matmul_attention(q, k, v, dropout_p=0.0), matmul_attention(q, k, v))
    torch.manual_seed(0)
    dropped = matmul_attention(q, k, v, dropout_p=0.5)
    assert not torch.allclose(dropped, matmul_attention(q, k, v))


@pytest.mark.parametrize(("dtype", "path"), [(torch.bfloat16, "matmul"), (torch.float32, "sdpa")])
def test_a_cpu_takes_the_matmul_path_in_bf16_and_sdpa_in_fp32(dtype, path, monkeypatch):
    """On a CPU in bf16 PyTorch's SDPA is the slow fused kernel being avoided; in fp32 it is the faster one."""
    from bertgpt.models import attention

    taken = []
    sdpa, matmul = F.scaled_dot_product_attention, attention.matmul_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: taken.append("sdpa") or sdpa(*a, **kw))
    monkeypatch.setattr(attention, "matmul_attention", lambda *a, **kw: taken.append("matmul") or matmul(*a, **kw))
    q, k, v = (t.to(dtype) for t in qkv())
    assert scaled_dot_product_attention(q, k, v, attn_mask=key_padding()).shape == (3, 4, 9, 8)
    assert taken == [path]


def test_under_bf16_autocast_an_fp32_query_takes_the_matmul_path(tiny_chat, monkeypatch):
    """A Llama-layout decoder rotates q and k with fp32 tables, so under bf16 autocast its attention gets fp32
    queries: the path follows autocast's precision, not q's dtype, or the decoder would miss the faster path."""
    from bertgpt.models import attention, library

    taken = []
    matmul = attention.matmul_attention
    monkeypatch.setattr(attention, "matmul_attention", lambda q, *a, **kw: taken.append(q.dtype) or matmul(q, *a, **kw))
    decoder = library.build(tiny_chat, head="sequence", num_labels=2)
    ids = torch.randint(10, 100, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = decoder(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert taken and set(taken) == {torch.float32}  # every layer's q arrived in fp32, and took the matmuls
    taken.clear()
    decoder(input_ids=ids, attention_mask=torch.ones_like(ids))  # no autocast: fp32, SDPA's fused kernel
    assert taken == []


def test_flops_of_the_fused_cpu_kernel_are_those_of_its_matmuls():
    """torch's counter sees nothing of SDPA's fused CPU kernel; taught it, it counts a forward as the math kernel's
    matmuls count it: two products of (T x hs) by (hs x T) per head."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    B, nh, T, hs = 2, 3, 16, 8
    q, k, v = (torch.randn(B, nh, T, hs) for _ in range(3))

    def count(backend) -> int:
        with sdpa_kernel(backend), FlopCounterMode(display=False) as counter:
            F.scaled_dot_product_attention(q, k, v)
        return counter.get_total_flops()

    assert count(SDPBackend.FLASH_ATTENTION) in (0, 2 * 2 * B * nh * T * T * hs)  # 0 until taught (or torch learns it)
    count_cpu_flash_flops()
    count_cpu_flash_flops()  # a second call registers nothing twice
    assert count(SDPBackend.FLASH_ATTENTION) == count(SDPBackend.MATH) == 2 * 2 * B * nh * T * T * hs


def test_library_and_own_models_take_the_attention_setting(tiny_bert, tiny_gpt2):
    from bertgpt.models import convert, library

    auto, sdpa = library.build(tiny_bert), library.build(tiny_bert, attention="sdpa")
    assert (auto.config._attn_implementation, sdpa.config._attn_implementation) == ("bertgpt", "sdpa")
    sdpa.load_state_dict(auto.state_dict())
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        torch.testing.assert_close(auto.eval()(input_ids=ids, attention_mask=mask).logits, sdpa.eval()(input_ids=ids, attention_mask=mask).logits)
    decoder = library.build(tiny_gpt2)
    assert decoder.config._attn_implementation == "bertgpt"
    assert convert.build_bert(tiny_bert, attention="sdpa").encoder[0].attention.attend is F.scaled_dot_product_attention
    assert convert.build_gpt(tiny_gpt2).transformer.h[0].attn.attend is scaled_dot_product_attention
    with pytest.raises(UserError, match="attention=flash: choose auto"):
        library.build(tiny_bert, attention="flash")
    with pytest.raises(UserError, match="attention=flash: choose auto"):
        convert.build_bert(tiny_bert, attention="flash")


FAULTS_OF_A_FRESH_64MB_TENSOR = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "keep":
    from bertgpt.host import keep_freed_memory
    assert keep_freed_memory()
for step in range(16):  # the same large tensor, step after step, as a training loop allocates it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20, dtype=torch.uint8)  # written, so every page is touched
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    """glibc maps a 64 MB tensor afresh at every step (16,384 page faults at 4 KB); kept, its memory is reused
    once the heap has grown to hold it (a few steps: each aligned request is a little larger than the block freed)."""
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")

    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULTS_OF_A_FRESH_64MB_TENSOR, src, mode], capture_output=True, text=True, check=True)
        return int(run.stdout)

    kept, default = faults("keep"), faults("default")
    assert kept < 100, kept
    assert default > 10 * max(kept, 1), (default, kept)
