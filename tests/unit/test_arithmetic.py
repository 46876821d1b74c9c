"""The arithmetic caps (waluigi/arithmetic.py): AVX2 for torch's kernels and MKL on every x86 CPU
that has it, unless the user chose otherwise; recorded in each run's manifest."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

from waluigi.arithmetic import PORTABLE, SWITCH, cpu_flags, cpu_name, portable_settings
from waluigi.runs import RunDir

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Some Xeon
flags\t\t: fpu sse2 avx avx2 avx512f amx_tile
"""


def test_caps_are_set_on_x86_with_avx2_only_where_the_user_left_them_unset():
    flags = cpu_flags(CPUINFO)
    assert {"avx2", "avx512f"} <= flags and cpu_name(CPUINFO) == "Some Xeon"
    assert portable_settings({}, flags, "x86_64") == PORTABLE
    assert portable_settings({}, flags, "AMD64") == PORTABLE
    # a user's own value of either variable is kept; the other is still capped
    assert portable_settings({"MKL_CBWR": "AUTO"}, flags, "x86_64") == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert portable_settings({"MKL_CBWR": "AUTO", "ATEN_CPU_CAPABILITY": "avx512"}, flags, "x86_64") == {}
    # switched off; another architecture; an x86 CPU without AVX2; flags that cannot be read
    assert portable_settings({SWITCH: "native"}, flags, "x86_64") == {}
    assert portable_settings({SWITCH: " Native "}, flags, "x86_64") == {}
    assert portable_settings({}, flags, "aarch64") == {}
    assert portable_settings({}, {"sse2", "avx"}, "x86_64") == {}
    assert portable_settings({}, cpu_flags("processor\t: 0\n"), "x86_64") == {}


def _fresh(env: dict[str, str]) -> dict:
    """What a fresh interpreter that imports waluigi, then torch, runs with."""
    code = ("import json, os, waluigi, torch; torch.ones(4).sum()\n"
            "print(json.dumps({k: os.environ.get(k) for k in %r} | "
            "{'capability': torch.backends.cpu.get_cpu_capability()}))" % (list(PORTABLE),))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_waluigi_caps_this_machines_torch_before_it_runs():
    clean = {k: v for k, v in os.environ.items() if k not in (*PORTABLE, SWITCH)}
    expected = portable_settings({}, cpu_flags(), platform.machine())
    seen = _fresh(clean)
    assert {k: seen[k] for k in PORTABLE} == {k: expected.get(k) for k in PORTABLE}
    if expected:  # capped: torch's kernels run at AVX2 whatever more the CPU has
        assert seen["capability"] == "AVX2"
    # the user's choice wins, and "native" leaves both unset
    assert _fresh({**clean, "ATEN_CPU_CAPABILITY": "default"})["capability"] == "DEFAULT"
    assert {k: v for k, v in _fresh({**clean, SWITCH: "native"}).items() if k in PORTABLE} == dict.fromkeys(PORTABLE)


def test_a_runs_manifest_records_its_arithmetic(tmp_path):
    import torch  # noqa: F401  (loaded, so the record names the kernels' instruction set)

    run = RunDir.open(tmp_path / "run", stage="test", identity={"x": 1}, config={})
    record = run.manifest()["arithmetic"]
    assert record["machine"] == platform.machine() and record["cpu"] == cpu_name()
    assert {k: record[k] for k in PORTABLE} == {k: os.environ.get(k) for k in PORTABLE}
    assert record["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_study_whose_runs_computed_on_two_kinds_says_so_beside_its_cost():
    from waluigi.sweep.results import arithmetic_label, cost_line

    amd = arithmetic_label({"cpu": "AMD EPYC", "torch_cpu_capability": "AVX2", "MKL_CBWR": "AVX2,STRICT"})
    xeon = arithmetic_label({"cpu": "Some Xeon", "torch_cpu_capability": "AVX512", "MKL_CBWR": None})
    assert amd == "AMD EPYC, torch kernels AVX2, MKL_CBWR AVX2,STRICT" and "MKL_CBWR unset" in xeon
    assert arithmetic_label(None) is None and arithmetic_label({}) is None

    def row(ft, ev, ft_kind, ev_kind, status="finished"):
        return {"finetune_run": ft, "eval_run": ev, "finetune_seconds": 2.0, "eval_seconds": 1.0,
                "finetune_arithmetic": ft_kind, "eval_arithmetic": ev_kind, "status": status}

    # one kind (and runs that recorded nothing): the cost line alone
    same = [row("ft/a", "ev/1", amd, amd), row("ft/a", "ev/2", amd, None)]
    assert cost_line(same) == "per cell: fine-tune 2.0 s (mean of 1), eval 1.0 s (mean of 2)"
    # two kinds: each run counted once (a fine-tune shared by two cells too); a failed cell's eval not at all
    mixed = [row("ft/a", "ev/1", amd, amd), row("ft/a", "ev/2", amd, xeon), row("ft/b", "ev/3", xeon, None),
             row("ft/c", "ev/4", None, xeon, status="failed")]
    note = cost_line(mixed).splitlines()[1]
    assert note.startswith("note: these runs computed on 2 kinds of CPU arithmetic (")
    assert f"{amd}: 2 runs; {xeon}: 2 runs; 1 not recorded)" in note and "reproducibility.md" in note
