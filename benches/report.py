"""Run the benchmarks and print them as one table, each figure beside its raw idiom.

    python benches/report.py [pytest args...]

Run it with the Python of an environment that has the package installed
(tools/bench.sh does, for both backends).  Medians come from pytest-benchmark;
ratios compare two benchmarks of the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# (label, benchmark, baseline, how to compare, target)
CALL_MODELS = ("tiny_f32", "dynamic_batch")
RATIOS = [row for m in CALL_MODELS for row in [
    (f"[{m}] run() / set_tensor+invoke+get_tensor", f"test_runtime_run[{m}]",
     f"test_raw_set_invoke_get[{m}]", "ratio", "<= 0.5"),
    (f"[{m}] run() / SignatureRunner call", f"test_runtime_run[{m}]", f"test_raw_signature_runner[{m}]",
     "ratio", "<= 0.3"),
    (f"[{m}] run() - C-level invoke (us)", f"test_runtime_run[{m}]", f"test_c_level_invoke[{m}]",
     "diff_us", "<= 0.3"),
    (f"[{m}] run() - bare invoke() (us)", f"test_runtime_run[{m}]", f"test_raw_bare_invoke[{m}]",
     "diff_us", "<= 1.0"),
    (f"[{m}] run(out=) / set_tensor+invoke+get_tensor", f"test_runtime_run_out[{m}]",
     f"test_raw_set_invoke_get[{m}]", "ratio", "<= 0.5"),
]] + [
    ("float32 preprocess: numpy idiom / fused", "test_numpy_idiom_then_set_tensor[image_f32]",
     "test_fused_kernel_into_tensor[image_f32]", "ratio", ">= 4"),
    ("float32 preprocess: fused / plain copy", "test_fused_kernel_into_tensor[image_f32]",
     "test_plain_copy_of_output_bytes[image_f32]", "ratio", "<= 1"),
    ("int8 preprocess: numpy idiom / fused", "test_numpy_idiom_then_set_tensor[image_int8]",
     "test_fused_kernel_into_tensor[image_int8]", "ratio", ">= 4"),
    ("int8 preprocess: fused / plain copy", "test_fused_kernel_into_tensor[image_int8]",
     "test_plain_copy_of_output_bytes[image_int8]", "ratio", "<= 4"),
    ("SignatureRunner train / Trainer.step: mlp", "test_raw_signature_runner_train[trainable_mlp]",
     "test_trainer_step[trainable_mlp]", "ratio", ">= 1.5"),
    ("SignatureRunner train / Trainer.step: linear", "test_raw_signature_runner_train[trainable_linear]",
     "test_trainer_step[trainable_linear]", "ratio", ">= 1.5"),
    ("Trainer.step - bare train invoke (us): mlp", "test_trainer_step[trainable_mlp]",
     "test_raw_bare_train_invoke[trainable_mlp]", "diff_us", "<= 1.0"),
    ("Trainer.step - bare train invoke (us): linear", "test_trainer_step[trainable_linear]",
     "test_raw_bare_train_invoke[trainable_linear]", "diff_us", "<= 1.0"),
]


def _meets(value: float, target: str) -> bool:
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        # cwd outside the repository: "python -m" puts cwd first on sys.path,
        # and the installed package, not the source tree, is what is measured.
        code = subprocess.call([sys.executable, "-m", "pytest", HERE, "-q", "-p", "no:cacheprovider",
                                f"--benchmark-json={out}", "--benchmark-disable-gc",
                                "--benchmark-columns=median,iqr,rounds", *sys.argv[1:]], cwd=tmp)
        if not os.path.exists(out):
            return code or 1
        with open(out) as f:
            report = json.load(f)
    bench = {b["name"]: b for b in report["benchmarks"]}
    # A benchmark that loops in C reports per round; per call is per round / calls.
    median = {name: b["stats"]["median"] / b["extra_info"].get("calls_per_round", 1)
              for name, b in bench.items()}
    from tflite_hotswap import load_backend
    import numpy
    print(f"\nbackend {load_backend().name}, numpy {numpy.__version__}, "
          f"{report['machine_info'].get('cpu', {}).get('brand_raw', '')}")
    print(f"\n{'comparison (same run)':<56}{'value':>10}  {'target':<8} ok")
    for label, a, b, how, target in RATIOS:
        if a not in median or b not in median:
            continue
        value = median[a] / median[b] if how == "ratio" else (median[a] - median[b]) * 1e6
        print(f"{label:<56}{value:>10.2f}  {target:<8} {'yes' if _meets(value, target) else 'NO'}")
    print(f"\n{'median per call (us)':<56}{'value':>10}")
    for name in [*(f"{b}[{m}]" for m in CALL_MODELS for b in (
            "test_c_level_invoke", "test_raw_bare_invoke", "test_raw_set_invoke_get",
            "test_raw_signature_runner", "test_runtime_run", "test_runtime_run_out")),
                 *(f"{test}[{m}]" for m in ("trainable_mlp", "trainable_linear")
                   for test in ("test_raw_bare_train_invoke", "test_raw_signature_runner_train",
                                "test_trainer_step"))]:
        if name in median:
            print(f"{name:<56}{median[name] * 1e6:>10.2f}")
    turns = [b for b in report["benchmarks"] if b["group"] == "train-step-in-turns"]
    if turns:
        print(f"\n{'train step, timed in turns (median us)':<44}{'step':>8}{'runner':>8}{'bare':>8}"
              f"{'runner/step':>13}{'step-bare':>11}  path")
        for b in turns:
            e = b["extra_info"]
            ok = "yes" if e["runner_over_step"] >= 1.5 else "NO"
            print(f"{b['name'][len('test_train_step_in_turns'):]:<44}{e['step_us']:>8}{e['runner_us']:>8}"
                  f"{e['bare_invoke_us']:>8}{e['runner_over_step']:>9} ({ok}){e['step_minus_bare_us']:>9}  "
                  f"{e['path']}")
    gil_turns = {b["name"]: b["extra_info"] for b in report["benchmarks"] if b["group"] == "gil-turns"}
    if len(gil_turns) == 2:
        plain = gil_turns["test_loop_beside_python_bursts[default]"]
        short = gil_turns["test_loop_beside_python_bursts[short]"]
        print(f"\nrun() loop beside 30 ms bursts of Python work: longest call {plain['max_ms']} ms with the "
              f"default switch interval, {short['max_ms']} ms with short turns "
              f"(p99 {plain['p99_us']} / {short['p99_us']} us)")
    for b in report["benchmarks"]:
        if b["group"] == "zero-copy":
            e = b["extra_info"]
            print(f"\nrun() of a 19 MB float32 batch, timed in turns: lent {e['lent_us']} us, copied "
                  f"{e['copied_us']} us, lent / copied {e['lent_over_copied']} (target <= 1: "
                  f"{'yes' if e['lent_over_copied'] <= 1 else 'NO'})")
    retire = {b["name"].split("[")[-1].rstrip("]"): b["extra_info"] for b in report["benchmarks"]
              if b["group"] == "retire-gil"}
    if len(retire) == 2:
        lib, plain = retire["library"], retire["plain"]
        print(f"\nfreeing a retired 20 MB version, longest GIL wait of another thread (ms, median / max of "
              f"{lib['releases']}): library {lib['median_ms']} / {lib['max_ms']}, plain bytes and no "
              f"delegate removal {plain['median_ms']} / {plain['max_ms']}")
    swaps = [b for b in report["benchmarks"] if (b["group"] or "").startswith("swap-under-load")]
    if swaps:
        keys = ["calls", "failed_calls", "swaps", "p50_us", "p99_us", "p999_us", "max_us",
                "max_stall_per_window_ms", "median_stall_per_window_ms"]
        print(f"\n{'run() loop under swaps':<46}" + "".join(f"{k:>12}" for k in keys[:7])
              + "  max/median stall per swap (ms; without swaps: per 100 ms)")
        for b in swaps:
            e = b["extra_info"]
            name = b["name"].replace("test_run_loop_latency", "").replace(
                "test_tiny_loop_beside_20mb_swaps", "tiny loop beside 20mb").replace(
                "test_loop_beside_raw_loads", "20mb, no swaps, 2 raw loads/100 ms beside")
            print(f"{name:<46}" + "".join(f"{e[k]:>12}" for k in keys[:7])
                  + f"  {e['max_stall_per_window_ms']} / {e['median_stall_per_window_ms']}"
                  + (f", {e['windows_over_2ms']} of {e['windows']} over 2 ms" if "windows_over_2ms" in e else ""))
    saturated = {b["name"].split("[")[-1].rstrip("]"): b["extra_info"] for b in report["benchmarks"]
                 if b["group"] == "saturated-cores"}
    if saturated:
        cpu = next(iter(saturated.values()))
        print(f"\n2 callers keeping both cores busy (conv_heavy, workers=2); a swap of the 20 MB model takes "
              f"{cpu['probe_cpu_ms']} ms of CPU in the probe and {cpu['own_cpu_ms']} ms in the serving process; "
              f"per step (nothing: per 100 ms tick), longest call minus median (ms):")
        for name, e in saturated.items():
            print(f"  beside {name:<10} max {e['max_stall_ms']:>6}  median {e['median_stall_ms']:>6}  "
                  f"{e['windows_over_2ms']} of {e['windows']} over 2 ms  ({e['steps']} done, "
                  f"median call {e['median_call_ms']} ms, {e['calls_per_s']} calls/s, {e['failed_calls']} failed)")
    scaling = {b["name"]: b["extra_info"]["calls_per_second"] for b in report["benchmarks"] if b["group"] == "scaling"}
    if len(scaling) == 2:
        one, two = scaling["test_two_callers[1]"], scaling["test_two_callers[2]"]
        ratio = two / one
        print(f"\nscaling, 2 callers on conv_heavy: workers=1 {one:.1f}/s, workers=2 {two:.1f}/s, "
              f"ratio {ratio:.2f} (target >= 1.7: {'yes' if ratio >= 1.7 else 'NO'})")
    costs = {b["name"]: b["stats"]["median"] * 1e3 for b in report["benchmarks"] if b["group"] == "swap-cost"}
    if costs:
        print("\nswap of a 0.5 MB model (median ms): " + ", ".join(
            f"{name.split('[')[-1].rstrip(']') if '[' in name else 'known model, cached verdict'} {ms:.1f}"
            for name, ms in costs.items()))
    if "test_curl_to_file" in median and "test_store_fetch" in median:
        mb = 50 * 1024 * 1024 / 1e6
        ours, curl = mb / median["test_store_fetch"], mb / median["test_curl_to_file"]
        print(f"\ndownload 50 MB from nginx on loopback: store.fetch {ours:.0f} MB/s (hashed, fsynced), "
              f"curl {curl:.0f} MB/s, ratio {ours / curl:.2f} (target >= 0.8: {'yes' if ours / curl >= 0.8 else 'NO'})")
    for b in report["benchmarks"]:
        if b["group"] == "download-resume":
            e = b["extra_info"]
            print(f"{b['name']}: {e['bytes_transferred']:,} bytes for a {e['file_size']:,}-byte file, "
                  f"ratio {e['ratio']:.3f}" + (" (target <= 1.05: " + ("yes)" if e["ratio"] <= 1.05 else "NO)")
                                              if "server_cut" in b["name"] else " (includes bytes lost in "
                                              "socket buffers at the interruption)"))
    return code


if __name__ == "__main__":
    sys.exit(main())
