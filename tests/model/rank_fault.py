"""`python rank_fault.py KIND RANK STEP cfh-args...`: cfh with a fault injected on one rank.

KIND raise: that rank's loss raises RuntimeError at training step STEP; KIND hang: it sleeps
there instead (a rank stuck outside any collective). Used by test_distributed.py only.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    kind, rank, at_step, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    import model.training.step as trainer_step
    from harness.cli.main import main as cfh

    real = trainer_step.causalfusion_loss
    calls = {"n": 0}

    def faulty(*a, **kw):
        calls["n"] += 1
        if int(os.environ["RANK"]) == rank and calls["n"] > at_step:
            if kind == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected failure on rank {rank} at step {at_step}")
        return real(*a, **kw)

    trainer_step.causalfusion_loss = faulty
    return cfh(args)


if __name__ == "__main__":
    sys.exit(main())
