"""`python -m harness.cli ...` is `cfh ...`."""

import sys

from harness.cli.main import main

sys.exit(main())
