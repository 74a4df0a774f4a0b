"""A profile snapshot (correlate.profile) as a terminal table shaped like
`gluster volume profile VOL info`: one block per brick, one row per procedure."""
from __future__ import annotations

from ..profile import FEW
from .terminal import format_time, safe_text

HEADER = (f"{'%-latency':>9}  {'p50':>10}  {'p90':>10}  {'p99':>10}  {'max':>10}  "
          f"{'calls':>8}  {'errors':>7}  {'in-flight':>9}  fop")
LATENCY_WIDTH = 4 * 10 + 3 * 2      # the p50 .. max columns


def duration(ns: int | None) -> str:
    """A latency with a unit a person reads at once: 412 us, 3.25 ms, 1.20 s."""
    if ns is None:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def short_duration(ns: int) -> str:
    """Three significant digits, at most 7 characters: 168 us, 1.23 ms, 11.4 s."""
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} us"
    for scale, unit in ((1e6, "ms"), (1e9, "s")):
        value = ns / scale
        if value < 999.5 or unit == "s":
            digits = 2 if value < 9.995 else 1 if value < 99.95 else 0
            return f"{value:.{digits}f} {unit}"
    return f"{ns / 1e9:.0f} s"


def _latencies(p: dict) -> str:
    """p50 p90 p99 max, or, for a row with few replies, the latencies themselves."""
    few = p.get("latencies_ns")
    if few:
        noun = "reply" if len(few) == 1 else "replies"
        return f"{f'{len(few)} {noun}: ' + ', '.join(map(short_duration, few)):<{LATENCY_WIDTH}}"
    return (f"{duration(p['p50_ns']):>10}  {duration(p['p90_ns']):>10}  "
            f"{duration(p['p99_ns']):>10}  {duration(p['max_ns']):>10}")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _rows(procedures: list[dict], indent: str) -> list[str]:
    lines = [indent + HEADER, indent + "-" * len(HEADER)]
    for p in procedures:
        errors = sum(p["errors"].values())
        lines.append(indent + f"{p['latency_share']:>9.2f}  {_latencies(p)}  {p['calls']:>8}  {errors:>7}  "
                     f"{p['max_in_flight']:>9}  {safe_text(p['procedure'], 40)}")
    failed = [f"{safe_text(p['procedure'], 40)} {safe_text(e, 40)} x{n}"
              for p in procedures for e, n in p["errors"].items()]
    if failed:
        lines.append(indent + "errors: " + ", ".join(failed[:20])
                     + (f" (and {len(failed) - 20} more)" if len(failed) > 20 else ""))
    return lines


def format_profile(snap: dict) -> str:
    """The whole profile as text (ends without a newline)."""
    lines = []
    span = ""
    if snap.get("from_ns") is not None:
        span = (f"{format_time(snap['from_ns'])} - {format_time(snap['to_ns'])} UTC, "
                f"{(snap['to_ns'] - snap['from_ns']) / 1e9:.2f} s")
    lines.append(f"Profile from the wire: {span or 'no traffic'} (latency: call to reply as "
                 f"captured; percentiles within {snap['relative_accuracy'] * 100:g}%, and "
                 f"with at most {FEW} replies their latencies instead; "
                 "in-flight: most calls outstanding at once)")
    if not snap["bricks"]:
        lines.append("No RPC calls seen.")
    for b in snap["bricks"]:
        name = safe_text(b["brick"], 200) if b.get("brick") else "(brick path not in the capture)"
        volume = f"  volume {safe_text(b['volume'], 80)}" if b.get("volume") else ""
        title = f"Brick: {safe_text(b['server'], 80)} {name}{volume}"
        lines += ["", title, "-" * len(title)]
        if snap.get("per_client"):
            for c in b["clients"]:
                lines += [f"  Client: {safe_text(c['client'] or '?', 120)}"]
                lines += _rows(c["procedures"], "  ")
        else:
            lines += _rows(b["procedures"], "")
        lines.append(f"Data read: {_size(b['bytes_read'])}   Data written: {_size(b['bytes_written'])}")
    if snap.get("dropped_rows"):
        lines.append(f"({snap['dropped_rows']} calls left out: more brick/procedure rows than "
                     "the profile keeps)")
    return "\n".join(lines)
