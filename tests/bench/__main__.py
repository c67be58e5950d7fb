"""`python -m tests.bench [--quick] [--only SECTION] [--runs N]`: see tests/bench/cli.py."""

from __future__ import annotations

import sys

from tests.bench.cli import main

sys.exit(main())
