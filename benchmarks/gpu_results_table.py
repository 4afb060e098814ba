"""Markdown tables of the GPU records in benchmarks/results/: the bench cells (one row per target and path,
forward and forward + backward side by side) and the timm anchors.

    cd benchmarks/results && python ../gpu_results_table.py gpu-h200-bench.json gpu-h200-anchors.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _f(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def bench_table(doc: dict) -> str:
    out = []
    cells = [(run["run"], c) for run in doc["runs"] for c in run["cells"]]
    for precision in ("float32", "bf16 autocast"):
        out += [f"\n{precision}\n", "| target | path asked > taken | run | status | fwd ms (IQR) | fwd img/s |"]
        out[-1] += " fwd+bwd ms (IQR) | peak MiB fwd / train | GFLOP/s fwd | of matmul peak |"
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for run, c in cells:
            if c["precision"] != precision:
                continue
            m = c["metrics"]
            taken = ",".join(c["backends"])
            path = f"{c['backend']} > {taken}" if taken else c["backend"]
            fwd = f"{_f(m.get('latency_fwd_median_ms'), '{:.2f}')} ({_f(m.get('latency_fwd_iqr_ms'), '{:.2f}')})"
            bwd = f"{_f(m.get('latency_fwdbwd_median_ms'), '{:.2f}')} ({_f(m.get('latency_fwdbwd_iqr_ms'), '{:.2f}')})"
            mem = f"{_f(m.get('peak_mem_fwd_mb'), '{:.0f}')} / {_f(m.get('peak_mem_train_mb'), '{:.0f}')}"
            frac = m.get("peak_fraction")
            out.append(
                f"| {c['label']} | {path} | {run} | {c['status']} | {fwd} | {_f(m.get('throughput_img_s'), '{:.0f}')} "
                f"| {bwd} | {mem} | {_f(m.get('gflops_achieved'), '{:.0f}')} "
                f"| {_f(frac * 100 if frac is not None else None, '{:.1f}%')} |"
            )
    peaks = {
        (run["run"], c["precision"]): c["metrics"].get("matmul_peak_gflops")
        for run in doc["runs"]
        for c in run["cells"]
        if c["metrics"].get("matmul_peak_gflops")
    }
    out.append(
        "\nmatmul peak (8192^3 torch.mm, GFLOP/s): " + ", ".join(f"run {r} {p}: {v:.0f}" for (r, p), v in peaks.items())
    )
    return "\n".join(out)


def anchors_table(doc: dict) -> str:
    out = [
        "| anchor | precision / pass | variant | median ms | img/s | per-round ratio to timm |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in doc.items():
        if not isinstance(res, dict) or "vs" not in name:
            continue
        for key, timed in res.items():
            if key.count("/") != 1 or not isinstance(timed, dict):
                continue
            for variant, s in timed.items():
                ratio = next((v for k, v in s.items() if k.startswith("ratio_to_")), None)
                img_s = _f(s.get("img_s"), "{:.0f}")
                out.append(f"| {name} | {key} | {variant} | {s['median_ms']:.2f} | {img_s} | {ratio:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", help="gpu-*-bench.json")
    p.add_argument("anchors", nargs="?", help="gpu-*-anchors.json")
    args = p.parse_args(argv)
    print(bench_table(json.loads(Path(args.bench).read_text())))
    if args.anchors:
        print("\n" + anchors_table(json.loads(Path(args.anchors).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
