"""Throughput and latency over time of an end-to-end run, as a PNG beside its JSON.

    .venv/bin/python -m bench.plot bench/results/end-to-end-20261126T040000.json   # draw an earlier run again
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # without pyplot: no display or global state, files only

from bench.metrics_memory import percentile


def rates(timeline: list[dict[str, float]], field: str, window: float = 5.0) -> tuple[list[float], list[float]]:
    """Rate of a cumulative count in the timeline over the last `window` seconds at each sample (from the first
    sample while less than a window has passed): per-second samples jump with the load's batches."""
    times, per_second = [], []
    base = 0
    for index, now in enumerate(timeline[1:], start=1):
        while base + 1 < index and now["t"] - timeline[base + 1]["t"] >= window:
            base += 1
        span = now["t"] - timeline[base]["t"]
        if span > 0:
            times.append(now["t"])
            per_second.append(max(0.0, (now[field] - timeline[base][field]) / span))
    return times, per_second


def completed_median(probes: list[list[float]], times: list[float], window: float = 5.0,
                     ) -> list[tuple[float, float]]:
    """At each time, the median latency of the probes whose counter moved in the last `window` seconds (by
    when they were seen, not sent: under a growing queue no probe sent in the last seconds is seen yet)."""
    seen = sorted((sent + latency, latency) for sent, latency in probes)
    out = []
    for now in times:
        recent = [latency for at, latency in seen if now - window < at <= now]
        if recent:
            out.append((now, percentile(recent, 0.5)))
    return out


def plot(result: dict[str, Any], out: Path) -> Path:
    timeline: list[dict[str, float]] = result["timeline"]
    settings, machine = result["settings"], result["machine"]
    figure = Figure(figsize=(11, 7), layout="constrained")
    throughput, latency = figure.subplots(2, 1, sharex=True)
    offered = f"{settings['rate']:g} events/s offered" if settings.get("rate") else "as fast as intake takes"
    figure.suptitle(f"End to end, {result['measured_at'][:16]}Z: {offered}, {machine['cpus']} CPUs; "
                    f"{result['end_to_end_events_per_s']:,} events/s until the counters reflected all")
    for field, label in (("sent", "sent (ingress), 5 s average"), ("judged", "judged by resolution, 5 s average")):
        times, values = rates(timeline, field)
        throughput.plot(times, values, label=label)
    if timeline:
        send_end = result["send_seconds"]
        for axis in (throughput, latency):
            axis.axvline(send_end, color="grey", linestyle=":", linewidth=1)
        throughput.annotate("sending stops", (send_end, 0), textcoords="offset points", xytext=(4, 4),
                            color="grey", fontsize=8)
    throughput.set_ylabel("events/s")
    throughput.set_ylim(bottom=0)
    throughput.legend(loc="upper right")
    throughput.grid(alpha=0.3)

    probes = result.get("probes", [])
    if probes:
        latency.scatter([at for at, _ in probes], [seconds for _, seconds in probes], s=6, alpha=0.5,
                        label="each probe (ingress → visible counter), at its send")
    windowed = completed_median(probes, [row["t"] for row in timeline])
    if windowed:
        latency.plot([t for t, _ in windowed], [p for _, p in windowed], color="black", linewidth=1,
                     label="median of the probes seen in the last 5 s")
    p99 = result["latency_s"].get("p99")
    if p99 is not None:
        latency.axhline(p99, color="red", linestyle="--", linewidth=1, label=f"p99 of the run: {p99:g} s")
    latency.set_ylabel("seconds")
    latency.set_ylim(bottom=0)
    latency.set_xlabel("seconds since the first send")
    latency.legend(loc="upper left")
    latency.grid(alpha=0.3)
    figure.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    for name in sys.argv[1:]:
        source = Path(name)
        print(plot(json.loads(source.read_text()), source.with_suffix(".png")))
