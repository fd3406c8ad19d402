"""What the data caps left out, so a cap is never silent.

Caps (DataConfig): ``max_sources`` / ``max_bytes_per_source`` trim the pooled corpus (the stdlib
demo, or ``data.source``); ``max_bytes_per_holder`` trims each holder's own data (``holder_paths``),
which the pool caps never touch. Whatever they leave out is recorded here as the "caps" entry of
data_manifest.json and stated in the data summary line::

    {"applies_to": "holder_paths", "max_bytes_per_holder": 400000, ...,
     "cut": {"holder0": {"documents": [20, 130], "bytes": [399812, 2100345]}},   # [used, available]
     "sources_left_out": []}
"""

from __future__ import annotations

from .documents import Document

__all__ = ["cap_holder", "cut_between", "caps_statement"]


def cap_holder(groups: dict[str, list[Document]], max_bytes: int | None) -> dict[str, list[Document]]:
    """A holder's sources with whole documents taken in order while the holder's total fits ``max_bytes``."""
    if max_bytes is None:
        return groups
    out, used = {}, 0
    for src, docs in groups.items():
        keep = []
        for d in docs:
            if used + d.n_bytes <= max_bytes:
                keep.append(d)
                used += d.n_bytes
        if keep:
            out[src] = keep
    return out


def _size(docs: list[Document]) -> tuple[int, int]:
    return len(docs), sum(d.n_bytes for d in docs)


def cut_between(name: str, before: dict[str, list[Document]] | list[Document],
                after: dict[str, list[Document]] | list[Document]) -> dict | None:
    """{"documents": [used, available], "bytes": [used, available]} for ``name``, or None if nothing was cut."""
    flat = (lambda g: [d for ds in g.values() for d in ds] if isinstance(g, dict) else list(g))
    (n0, b0), (n1, b1) = _size(flat(before)), _size(flat(after))
    if (n1, b1) == (n0, b0):
        return None
    return {"documents": [n1, n0], "bytes": [b1, b0]}


def _mb(b: int) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def caps_statement(caps: dict) -> str | None:
    """One sentence for the data summary line saying what the caps left out (None: nothing)."""
    cut, left = caps.get("cut", {}), caps.get("sources_left_out", [])
    if not cut and not left:
        return None
    used = sum(c["bytes"][0] for c in cut.values())
    avail = sum(c["bytes"][1] for c in cut.values())
    kind = caps["applies_to"]
    if kind == "holder_paths":
        parts = [f"{h} {_mb(c['bytes'][0])} of {_mb(c['bytes'][1])} ({c['documents'][0]} of {c['documents'][1]} documents)"
                 for h, c in cut.items()]
        return (f"CAPPED by data.max_bytes_per_holder={caps['max_bytes_per_holder']}: " + ", ".join(parts)
                + "; set data.max_bytes_per_holder=null to use all of each holder's data")
    what = []
    if cut:
        what.append(f"{len(cut)} source(s) cut to data.max_bytes_per_source={caps['max_bytes_per_source']} "
                    f"({_mb(used)} of {_mb(avail)} used)")
    if left:
        what.append(f"{len(left)} source(s) left out by data.max_sources={caps['max_sources']}")
    if kind == "stdlib":
        return "demo caps on the stdlib corpus: " + ", ".join(what)
    return ("CAPPED data.source: " + ", ".join(what)
            + "; set data.max_bytes_per_source=null and data.max_sources=null to use all of it")
