"""What produced a grid's numbers: the code commits, the machines and the span of the runs.

Read from the results columns that reports.rows takes from status.json (`code_commit`,
`machine_*`, `started`, `updated`; the trainer records them when a run starts; `num_nodes`,
`nodes`: a SLURM job's). Runs trained before cfh recorded them are counted as "not recorded",
never guessed.
"""

from __future__ import annotations

import pandas as pd


def _machine(row: pd.Series) -> str:
    gpu = row.get("machine_gpu")
    cores = row.get("machine_cores")
    parts = [str(row.get("machine_cpu") or "unknown CPU")]
    if pd.notna(cores):
        parts.append(f"{int(cores)} cores")
    parts.append(str(gpu) if isinstance(gpu, str) and gpu else "no GPU")
    host = row.get("machine_host")
    return ", ".join(parts) + (f" (host {host})" if isinstance(host, str) and host else "")


def _counted(values: pd.Series, what: str) -> list[str]:
    known = values.dropna()
    lines = [f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in known.value_counts().items()]
    missing = len(values) - len(known)
    if missing:
        lines.append(f"not recorded for {missing} run{'s' if missing != 1 else ''} ({what})")
    return lines


def provenance_lines(df: pd.DataFrame) -> list[str]:
    """One line each for the code, the machines and the time span of a grid's train runs."""
    runs = df[df["kind"] == "train"].drop_duplicates("signature")
    if runs.empty:
        return []
    old = "trained before cfh recorded it"
    commit = runs["code_commit"] if "code_commit" in runs else pd.Series([None] * len(runs))
    machine_cols = [c for c in ("machine_cpu", "machine_cores", "machine_gpu") if c in runs]
    machines = runs.apply(_machine, axis=1).where(runs[machine_cols].notna().any(axis=1), None)
    if not machine_cols:
        machines = pd.Series([None] * len(runs))
    lines = [
        "Code: " + "; ".join(_counted(commit, old)) + ".",
        "Machine: " + "; ".join(_counted(machines, old)) + ".",
    ]
    if "nodes" in runs and runs["nodes"].notna().any():  # SLURM jobs that recorded their nodes
        n = pd.to_numeric(runs["num_nodes"], errors="coerce")
        where = [
            None if pd.isna(k) else f"{int(k)} node{'s' if k != 1 else ''} {names}"
            for k, names in zip(n, runs["nodes"], strict=True)
        ]
        lines.append("Nodes: " + "; ".join(_counted(pd.Series(where), "not a SLURM job")) + ".")
    started = pd.to_datetime(runs.get("started"), utc=True, errors="coerce").dropna()
    updated = pd.to_datetime(runs.get("updated"), utc=True, errors="coerce").dropna()
    if len(started) and len(updated):
        first, last = started.min(), updated.max()
        minutes = (last - first).total_seconds() / 60.0
        lines.append(
            f"Runs: the first started {first:%Y-%m-%d %H:%M} UTC, the last result at "
            f"{last:%Y-%m-%d %H:%M} UTC ({minutes:.0f} min; a run shared with another grid counts "
            "from its own start, and the span includes any wait between sweeps)."
        )
    return lines
