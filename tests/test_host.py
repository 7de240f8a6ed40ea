"""What a run learns about its host: the CPU named so that two machines of one kind are told apart."""

from __future__ import annotations

import json
import os

import pytest
from conftest import compose_train

from bertgpt.host import cpu_flags, cpu_name, glibc

ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n\n"
ZEN5 = ZEN3.replace("cpu family\t: 25", "cpu family\t: 26").replace("model\t\t: 1", "model\t\t: 2")


@pytest.mark.parametrize(("cpuinfo", "name"), [(ZEN3, "AMD EPYC (family 25, model 1)"), (ZEN5, "AMD EPYC (family 26, model 2)"),
                                               ("model name\t: Intel Xeon\n", "Intel Xeon")])
def test_the_cpu_is_named_with_its_family_and_model(cpuinfo, name, tmp_path):
    file = tmp_path / "cpuinfo"
    file.write_text(cpuinfo.rstrip("\n") + "\n\n" + ZEN3.replace("processor\t: 0", "processor\t: 1"))  # a second core must not mix in
    assert cpu_name(file) == name


def test_the_cpu_flags_are_the_first_processors(tmp_path):
    file = tmp_path / "cpuinfo"
    file.write_text(ZEN3 + ZEN3.replace("processor\t: 0", "processor\t: 1").replace("fpu avx2", "fpu avx512_bf16"))
    assert cpu_flags(file) == {"fpu", "avx2"}
    file.write_text("model name\t: Intel Xeon\n")
    assert cpu_flags(file) is None
    assert cpu_flags(tmp_path / "absent") is None


@pytest.mark.parametrize("gpu", [False, True])
def test_the_speed_defaults_follow_the_hardware(gpu, monkeypatch):
    """The measured rules of docs/performance.md: compile and wide padding buckets on a GPU, neither on a CPU;
    bf16 where the CPU has AVX-512 BF16 or AMX; the same experiment recipe everywhere."""
    import torch

    from bertgpt.host import best_precision, cpu_kind

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cfg = compose_train("experiment=fast")
    assert cfg.compile is gpu and cfg.data.pad_to_multiple_of == (64 if gpu else 1)
    assert cfg.trainer.precision == best_precision() == ("bf16-mixed" if gpu or cpu_kind() in ("AVX-512 + AMX", "AVX-512 BF16") else "32-true")
    assert (cfg.data.max_length, cfg.data.truncation, cfg.trainer.val_check_interval) == (256, "head_tail", 0.25)
    assert cfg.callbacks.reach_target.stopping_threshold == 0.9 and "model_checkpoint" in cfg.callbacks


@pytest.mark.parametrize(("cap", "kind"), [(None, "AVX-512 + AMX"), ("ALL", "AVX-512 + AMX"), ("AVX512_CORE_BF16", "AVX-512 BF16"),
                                           ("AVX512_CORE_VNNI", "AVX-512"), ("AVX2", "AVX2"), ("avx2", "AVX2")])
def test_an_isa_cap_makes_the_machine_the_kind_of_its_cap(cap, kind, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN's bf16 matmuls off AVX-512 BF16 and AMX: bf16 is emulated there, so the
    run trains in fp32 like an AVX2 CPU's, and says why it is that kind."""
    import torch

    from bertgpt import host

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(host, "cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"})
    for name in host.ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert host.cpu_kind() == kind
    assert host.best_precision() == ("bf16-mixed" if kind in ("AVX-512 + AMX", "AVX-512 BF16") else "32-true")
    described = host.machine()["cpu_kind"]
    assert described == (kind if cap is None else f"{kind} under ONEDNN_MAX_CPU_ISA={cap}")


def test_the_kind_names_every_cap_the_stand_in_needs(monkeypatch):
    """An AVX-512 machine run as an AVX2 one needs four caps, the compiler target of torch.compile's kernels among
    them (built for -march=native otherwise, they computed NaN there); each one set is named with the kind."""
    import torch

    from bertgpt import host

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(host, "cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512_bf16"})
    caps = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "TORCHINDUCTOR_CPP_MARCH": "x86-64-v3"}
    for name, value in caps.items():
        monkeypatch.setenv(name, value)
    assert host.machine()["cpu_kind"] == "AVX2 under " + " ".join(f"{k}={v}" for k, v in caps.items())


HANDED_BACK = """
import ctypes, json
from bertgpt import host
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
kept = host.keep_freed_memory()
block = libc.malloc(512 * 2**20)
ctypes.memset(block, 1, 512 * 2**20)  # touched: resident
libc.free(block)
after_free = host.resident_bytes()
returned = host.return_freed_memory()
print(json.dumps(dict(kept=kept, after_free=after_free, after_return=host.resident_bytes(), returned=returned,
                      still_kept=host.freed_memory_kept(), again=host.return_freed_memory())))
"""


@pytest.mark.skipif(glibc() is None, reason="glibc's mallopt and malloc_trim")
def test_kept_freed_memory_stays_resident_until_it_is_handed_back():
    """Under keep_freed_memory a freed 512 MB block stays in the process (the next step reuses its pages);
    return_freed_memory gives it back to the system at once, and only once."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HANDED_BACK], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    assert result["kept"] and result["returned"] and not result["still_kept"] and not result["again"]
    assert result["after_free"] - result["after_return"] > 400 * 2**20, result


KEPT_UNDER_MIMALLOC = """
import ctypes, json, time
from bertgpt import host
malloc = host.mimalloc()
malloc.malloc.restype, malloc.malloc.argtypes, malloc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def resident_after_a_step():
    block = malloc.malloc(512 * 2**20)
    ctypes.memset(block, 1, 512 * 2**20)
    malloc.free(block)
    time.sleep(1.5)  # past mimalloc's purge delay (1 s)
    malloc.mi_collect(ctypes.c_bool(False))
    return host.resident_bytes()
delay = malloc.mi_option_get(host.MI_OPTION_PURGE_DELAY)
kept = host.keep_freed_memory()
while_kept = resident_after_a_step()
returned = host.return_freed_memory()
print(json.dumps(dict(allocator=host.allocator(), kept=kept, while_kept=while_kept, returned=returned, after_return=resident_after_a_step(),
                      delay_restored=malloc.mi_option_get(host.MI_OPTION_PURGE_DELAY) == delay > 0)))
"""


def test_the_allocator_is_glibcs_unless_another_is_preloaded():
    import subprocess
    import sys

    from bertgpt import host

    assert host.allocator() == "glibc" if glibc() is not None else host.allocator() == "unknown"
    library = host.preloadable_mimalloc()
    if library is None:
        pytest.skip("mimalloc is installed on Linux only, and LD_PRELOAD cannot name a path with a space or a colon")
    env = {**os.environ, "LD_PRELOAD": str(library)}
    out = subprocess.run([sys.executable, "-c", KEPT_UNDER_MIMALLOC], capture_output=True, text=True, check=True, env=env).stdout
    result = json.loads(out)
    assert result["allocator"] == "mimalloc" and result["kept"] and result["returned"] and result["delay_restored"], result
    assert result["while_kept"] - result["after_return"] > 400 * 2**20, result  # freed pages stay, then go back after the delay


def test_the_memory_limit_is_the_machines_or_its_containers(tmp_path):
    from bertgpt.host import memory_limit_bytes

    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cgroup"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:         1000 kB\n")
    assert memory_limit_bytes(meminfo, cgroup) == 16384000 * 1024
    (cgroup / "memory").mkdir(parents=True)
    (cgroup / "memory.max").write_text("max\n")  # cgroup v2 without a limit
    assert memory_limit_bytes(meminfo, cgroup) == 16384000 * 1024
    (cgroup / "memory.max").write_text(f"{8 * 2**30}\n")
    assert memory_limit_bytes(meminfo, cgroup) == 8 * 2**30
    (cgroup / "memory.max").unlink()
    (cgroup / "memory" / "memory.limit_in_bytes").write_text(f"{4 * 2**30}\n")  # cgroup v1
    assert memory_limit_bytes(meminfo, cgroup) == 4 * 2**30
    assert memory_limit_bytes(tmp_path / "absent", tmp_path / "none") is None


@pytest.mark.parametrize(("situation", "execs"), [("glibc serving", True), ("BERTGPT_ALLOCATOR=glibc", False),
                                                  ("mimalloc serving", False), ("a space in its path", False)])
def test_rerun_under_mimalloc_execs_the_same_command_with_mimalloc_in_front(situation, execs, monkeypatch):
    import sys
    from pathlib import Path

    from bertgpt import host

    calls = []
    monkeypatch.setattr(host.os, "execve", lambda *args: calls.append(args))
    library = Path("/venv/site-packages/cmeel.prefix/lib/libmimalloc.so" if situation != "a space in its path" else "/my venv/libmimalloc.so")
    monkeypatch.setattr(host, "mimalloc_library", lambda: library)
    monkeypatch.setattr(host, "allocator", lambda: "mimalloc" if situation == "mimalloc serving" else "glibc")
    monkeypatch.setattr(host.sys, "orig_argv", ["python", "-X", "importtime", "src/train.py", "model=gpt"])
    monkeypatch.setenv("LD_PRELOAD", "/other.so")
    if situation == "BERTGPT_ALLOCATOR=glibc":
        monkeypatch.setenv("BERTGPT_ALLOCATOR", "glibc")
    else:
        monkeypatch.delenv("BERTGPT_ALLOCATOR", raising=False)
    host.rerun_under_mimalloc()
    assert len(calls) == execs
    if execs:
        executable, argv, env = calls[0]
        assert executable == sys.executable and argv == [sys.executable, "-X", "importtime", "src/train.py", "model=gpt"]  # its flags kept
        assert env["LD_PRELOAD"] == f"{library} /other.so"
