"""`python slow_checkpoint.py STEP MARKER cfh-args...`: cfh whose checkpoint write at STEP stalls.

The real writer (model.io.atomic_write_bytes) runs unchanged; only os.fsync of the temp file of
`ckpt_<STEP>.pt` is made to touch MARKER and sleep, so a test can SIGKILL the process while that
checkpoint is written but not yet renamed into place. Used by test_kills.py only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    step, marker, args = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    real_fsync = os.fsync
    target = f".ckpt_{step:08d}.pt."

    def stalling_fsync(fd: int) -> None:
        real_fsync(fd)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(target) and not name.startswith(target + "sha256"):
            marker.write_text(str(os.getpid()))
            time.sleep(3600)

    os.fsync = stalling_fsync
    from harness.cli.main import main as cfh

    return cfh(args)


if __name__ == "__main__":
    sys.exit(main())
