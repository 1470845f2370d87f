"""Errors as short text: one line for a record, a log line or a message. Imports nothing of arcttt,
so that every module can use it."""

from __future__ import annotations


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """An error (or its text) as its first line, cut at ``limit`` characters; when anything was left
    out (more lines, or a longer line: CUDA's OOM message runs on for lines), ``... (N chars)`` says
    how much there was. Empty for an error without a message."""
    text = str(error)
    lines = text.strip().splitlines() or [""]
    first = lines[0]
    if len(first) > limit or len(lines) > 1:
        first = f"{first[:limit]}... ({len(text):,} chars)"
    return first


def write_fault(e: OSError) -> str:
    """An OSError as one line naming the path: ``cannot write X: No space left on device``."""
    name = e.filename2 or e.filename  # os.replace(tmp, path) names the target second
    where = f" {name}" if name else ""
    return f"cannot write{where}: {e.strerror or type(e).__name__}"
