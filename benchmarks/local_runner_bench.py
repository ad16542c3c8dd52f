"""Local runner overhead: following an execution by a tight history poll vs waiting on its end.

    .venv/bin/python benchmarks/local_runner_bench.py [--runs 5] [--work-seconds 1.0]

The handlers run in moto's execution thread, in this process: whatever the runner's thread does
while it follows the execution competes with them for the interpreter. The same execution
(a CPU-bound extract of ``--work-seconds``, then trivial transform and load) runs under
``LocalStepFunctions.execute`` with ``poll_seconds=0.05`` (the runner's old 50 ms poll of the
whole history: the baseline) and with the default (it waits on the end of the execution and
reads the history only when a state starts or the wait times out). Printed side by side,
medians over ``--runs``: execute wall time, the handler's own time, and the CPU time the
following thread used.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import threading
import time
from typing import Any

from state_machine.local_runner import LocalStepFunctions


def busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += 1


def measure(poll_seconds: float | None, runs: int, work: float) -> dict[str, float]:
    handler_s: list[float] = []

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        t = time.perf_counter()
        busy(work)
        handler_s.append(time.perf_counter() - t)
        return {"done": True, "coin_count": 1}

    def passthrough(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return event

    handlers = {"extract": extract, "transform": passthrough, "load": passthrough}
    walls, follower_cpu = [], []
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        for i in range(runs):
            kwargs: dict[str, Any] = {"on_event": lambda ev: None}
            if poll_seconds is not None:
                kwargs["poll_seconds"] = poll_seconds
            cpu = time.thread_time()
            t = time.perf_counter()
            result = sfn.execute({}, name=f"bench-{poll_seconds}-{i}", **kwargs)
            walls.append(time.perf_counter() - t)
            follower_cpu.append(time.thread_time() - cpu)
            assert result.status == "SUCCEEDED", result
    return {
        "wall": statistics.median(walls),
        "handler": statistics.median(handler_s),
        "follower_cpu": statistics.median(follower_cpu),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work-seconds", type=float, default=1.0)
    args = ap.parse_args()
    default = inspect.signature(LocalStepFunctions.execute).parameters["poll_seconds"].default
    base = measure(0.05, args.runs, args.work_seconds)
    new = measure(None, args.runs, args.work_seconds)
    print(
        f"local runner: a {args.work_seconds:g} s CPU-bound extract, medians of {args.runs} runs"
        f" ({threading.active_count()} threads now)"
    )
    print(f"  {'':<28}{'50 ms poll (baseline)':>24}{f'wait on end ({default:g} s)':>24}")
    for key, label in (
        ("wall", "execute wall (s)"),
        ("handler", "handler time (s)"),
        ("follower_cpu", "following thread CPU (s)"),
    ):
        print(f"  {label:<28}{base[key]:>24.3f}{new[key]:>24.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
