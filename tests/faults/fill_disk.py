"""A disk filled to its last page, for test_disk_full.py.

`fill(filler)` appends to `filler` until the filesystem holding it has no byte left;
`free(filler, pages)` gives back that many pages. `python fill_disk.py STEP FILLER cfh-args...`
runs cfh unchanged except that right after its checkpoint of STEP is saved (rank 0), FILLER
fills the disk: the run's next write (a metrics line, status.json) finds no room at all.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def fill(filler: Path) -> int:
    """Append zeros to `filler` until ENOSPC; its size after."""
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for chunk in (b"\0" * (1 << 20), b"\0" * PAGE, b"\0"):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def free(filler: Path, pages: int) -> None:
    """Give `pages` pages of `filler` back to its filesystem."""
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - pages * PAGE))


def main() -> int:
    step, filler, args = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    import model.training.trainer as trainer

    real = trainer._save_checkpoint

    def save_then_fill(run_dir, cfg, learner, per_rank, at_step):
        real(run_dir, cfg, learner, per_rank, at_step)
        if at_step == step:
            fill(filler)

    trainer._save_checkpoint = save_then_fill
    from harness.cli.main import main as cfh

    return cfh(args)


if __name__ == "__main__":
    sys.exit(main())
