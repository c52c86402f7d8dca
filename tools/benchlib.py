"""Helpers shared by the tools/bench_*.py scripts: measuring a command, tables, result files.

Not part of the onnxq package; the scripts import it from their own folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
RESULTS = TOOLS / "results"
GNU_TIME = "/usr/bin/time"
MIB = 1024**2


@dataclasses.dataclass
class Measurement:
    """Wall time and memory of one command run in a subprocess."""

    label: str
    command: list[str]
    returncode: int
    wall_s: float
    #: Peak resident set size (ru_maxrss, as `/usr/bin/time -v` reports it): anonymous + file-backed pages.
    max_rss_mib: float
    #: Peaks of /proc/PID/status RssAnon (heap: copies of weights) and RssFile (mapped files), sampled.
    peak_anon_mib: float | None
    peak_file_mib: float | None
    source: str
    stdout: str = dataclasses.field(repr=False, default="")
    stderr: str = dataclasses.field(repr=False, default="")

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stdout"] = self.stdout[-2000:]
        out["stderr"] = self.stderr[-2000:]
        return out


def measure(
    label: str,
    command: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    interval_s: float = 0.02,
) -> Measurement:
    """Runs ``command`` under ``/usr/bin/time -v`` (or ``os.wait4`` without it) and samples /proc.

    The sampler follows the measured process (the child of ``time``) and records
    the peaks of RssAnon and RssFile; ru_maxrss alone cannot tell weights copied
    to the heap from weights that are only mapped from the page cache.
    """
    command = [str(c) for c in command]
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-") as tmp:
        stats_file = Path(tmp) / "time.txt"
        full = [GNU_TIME, "-v", "-o", str(stats_file), *command] if use_time else command
        start = time.perf_counter()
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = _Sampler(proc.pid, child=use_time, interval_s=interval_s)
        sampler.start()
        if use_time:
            stdout, stderr = proc.communicate()
            wall = time.perf_counter() - start
            sampler.stop()
            stats = stats_file.read_text() if stats_file.exists() else ""
            max_rss_kib = _time_field(stats, "Maximum resident set size (kbytes)")
            source = "/usr/bin/time -v"
        else:
            # NOTE: without GNU time, wait4() gives the same ru_maxrss for this one child.
            out_buf: list[str] = []
            err_buf: list[str] = []
            readers = [
                threading.Thread(target=lambda: out_buf.append(proc.stdout.read())),  # type: ignore[union-attr]
                threading.Thread(target=lambda: err_buf.append(proc.stderr.read())),  # type: ignore[union-attr]
            ]
            for r in readers:
                r.start()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            for r in readers:
                r.join()
            sampler.stop()
            stdout, stderr = "".join(out_buf), "".join(err_buf)
            max_rss_kib = float(usage.ru_maxrss)
            source = "os.wait4 (no /usr/bin/time)"
    return Measurement(
        label=label,
        command=command,
        returncode=proc.returncode,
        wall_s=round(wall, 3),
        max_rss_mib=round((max_rss_kib or 0.0) / 1024, 1),
        peak_anon_mib=None if sampler.peak_anon_kib is None else round(sampler.peak_anon_kib / 1024, 1),
        peak_file_mib=None if sampler.peak_file_kib is None else round(sampler.peak_file_kib / 1024, 1),
        source=source,
        stdout=stdout,
        stderr=stderr,
    )


class _Sampler(threading.Thread):
    def __init__(self, pid: int, *, child: bool, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.child = child
        self.interval_s = interval_s
        self.peak_anon_kib: float | None = None
        self.peak_file_kib: float | None = None
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def _find_target(self) -> int | None:
        if not self.child:
            return self.pid
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def run(self) -> None:
        target = None
        while not self._done.is_set():
            target = target or self._find_target()
            if target is not None:
                try:
                    status = Path(f"/proc/{target}/status").read_text()
                except OSError:
                    status = ""
                anon = _status_kib(status, "RssAnon")
                file = _status_kib(status, "RssFile")
                if anon is not None:
                    self.peak_anon_kib = max(self.peak_anon_kib or 0.0, anon)
                if file is not None:
                    self.peak_file_kib = max(self.peak_file_kib or 0.0, file)
            self._done.wait(self.interval_s)


def _status_kib(status: str, key: str) -> float | None:
    m = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
    return float(m.group(1)) if m else None


def _time_field_text(stats: str, key: str) -> str | None:
    for line in stats.splitlines():
        if line.strip().startswith(key):
            return line.split("):", 1)[-1].strip() if "):" in line else line.rsplit(":", 1)[-1].strip()
    return None


def _time_field(stats: str, key: str) -> float | None:
    text = _time_field_text(stats, key)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def busy_warning() -> str | None:
    """A line to print when other processes keep the CPUs busy (timings then vary run to run)."""
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load > 0.5 * cpus:
        return f"note: load average {load:.1f} on {cpus} CPUs while measuring; wall times are noisy"
    return None


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows for i in range(len(headers))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric, strict=True)) + "|")
    for r in cells:
        lines.append(
            "| " + " | ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, numeric, strict=True)) + " |"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def environment() -> dict[str, Any]:
    """Machine and library versions, recorded with every result."""
    import importlib.metadata as md

    versions = {}
    for dist in ("onnxq", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy", "torch"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    try:
        mem_kib = _status_kib(Path("/proc/meminfo").read_text(), "MemTotal")
    except OSError:
        mem_kib = None
    mem_total = None if mem_kib is None else round(mem_kib / 1024**2, 1)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": mem_total,
        # Other processes on the machine skew wall times; the 1/5/15-minute load average says how busy it was.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    document.setdefault("environment", {})["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nresult written to {path}")


def onnxq_command(*args: str) -> list[str]:
    """The onnxq CLI of this interpreter (``python -m onnxq``), so the measured code is this checkout's."""
    return [sys.executable, "-m", "onnxq", *args]


def folder_listing(folder: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime_ns) for every entry in ``folder`` (recursively), to detect stray files."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def free_disk_gib(path: Path) -> float:
    return shutil.disk_usage(path).free / 1024**3
