"""Scanner throughput over the full official `insecure` file, side by side, in one process.

    .venv/bin/python benchmarks/bench_scan.py [--data-dir DIR] [--subprocess-samples 30]

Rows: waluigi's batched in-process scan (Bandit + waluigi rules) with 2 worker processes and
with 1; plain Bandit in-process without waluigi's rules (what the rules cost); and the naive
baseline, one `bandit` subprocess per sample, timed on the first N samples (it would take
about an hour on all 6000). Also prints each variant's flagged share, so speed and detection
are read together. Nothing scanned is run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("WALUIGI_DATA_DIR"))
    parser.add_argument("--subprocess-samples", type=int, default=30)
    args = parser.parse_args()

    from waluigi.scan import scan_dataset, scan_texts
    from waluigi.scan.scanner import _load_target

    texts, source = _load_target("insecure", args.data_dir, "all")
    print(f"insecure: {len(texts)} samples ({source['path']})", flush=True)
    rows = []
    for label, options in (
        ("waluigi, batched in-process, 2 workers", {"workers": 2}),
        ("waluigi, batched in-process, 1 process", {"workers": 1}),
        ("plain Bandit (no waluigi rules), in-process, 1 process", {"workers": 1, "plugins": False}),
    ):
        start = time.perf_counter()
        report = scan_dataset("insecure", data_dir=args.data_dir, **options)
        seconds = time.perf_counter() - start
        rows.append((label, report.n, seconds, report.rate))
        print(f"  {label}: {report.n / seconds:.1f} samples/s, flagged {100 * report.rate:.1f}%", flush=True)

    n = args.subprocess_samples
    flagged = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for index, text in enumerate(texts[:n]):
            path = os.path.join(tmp, f"s{index}.py")
            from waluigi.scan import extract_code

            with open(path, "w") as handle:
                handle.write("\n\n".join(extract_code(text)))
            out = subprocess.run([sys.executable, "-m", "bandit", "-q", "-f", "json", "-s", "B113", path],
                                 capture_output=True, text=True, check=False)
            results = json.loads(out.stdout or "{}").get("results", [])
            flagged += any(r["issue_severity"] in ("MEDIUM", "HIGH") for r in results)
    seconds = time.perf_counter() - start
    rows.append((f"one `bandit` subprocess per sample (first {n})", n, seconds, flagged / n))
    same = scan_texts(texts[:n], workers=1, plugins=False)
    agree = sum(r.flagged for r in same)
    print(f"  subprocess baseline: {n / seconds:.1f} samples/s (in-process plain Bandit flags the same "
          f"{agree} of {n}: {'yes' if agree == flagged else 'NO'})", flush=True)

    best = rows[0][1] / rows[0][2]
    print()
    print(f"{'variant':<58} {'samples':>7} {'seconds':>8} {'samples/s':>10} {'flagged':>8} {'waluigi 2w is':>14}")
    for label, count, seconds, rate in rows:
        speed = count / seconds
        print(f"{label:<58} {count:>7} {seconds:>8.1f} {speed:>10.1f} {100 * rate:>7.1f}% {best / speed:>13.1f}x")


if __name__ == "__main__":
    main()
