"""Each SlowFast variant's model-only forward on the default CPU runtime, beside the default model's.

Every variant of export/variants.py is scripted from random weights (the cost of a forward does not
depend on them), saved with its contract in a temporary directory and loaded by the real handler
as a worker would (model-config.yaml's runtime), then timed on one view of its own input shape.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from bench.util import progress


def compare(reps: int, warmup: int, quick: bool = False) -> Dict[str, Any]:
    """``{variant: {forward_ms: {median, min}, runtime, load_s, top1, top5, gflops, params_m, frames}}``."""
    import torch

    from harness.inproc import InProcessHandler
    from export.save import save_with_contract
    from export.scriptable import script_slowfast
    from export.variants import CLASSIFIERS, build, contract_for, read_label_file

    results: Dict[str, Any] = {}
    names = list(CLASSIFIERS)[:1] if quick else list(CLASSIFIERS)
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as scratch:
        for name in names:
            variant = CLASSIFIERS[name]
            directory = Path(scratch) / name
            contract = contract_for(variant, read_label_file(variant.labels_file), weights="random (timing only)")
            save_with_contract(script_slowfast(build(variant)), contract, directory / f"{name}.pt")
            started = time.perf_counter()
            handler = InProcessHandler(directory / f"{name}.pt")
            load_s = time.perf_counter() - started
            pathways = handler.dummy_pathways(1)
            times: List[float] = []
            with torch.inference_mode():
                for rep in range(warmup + reps):
                    elapsed = handler.forward_ms(pathways)
                    if rep >= warmup:
                        times.append(elapsed)
            results[name] = {
                "forward_ms": {"median": statistics.median(times), "min": min(times)},
                "runtime": handler.runtime.name, "load_s": round(load_s, 1),
                "top1": variant.top1, "top5": variant.top5, "gflops": variant.gflops, "params_m": variant.params_m,
                "frames": f"{variant.num_frames} x 2, alpha {variant.alpha}",
            }
            progress(f"  {name}: {statistics.median(times):,.0f} ms a forward ({handler.runtime.name}, loaded in {load_s:.0f} s)")
            del handler
    return results
