"""Makes tinyrun.py (shared with the subprocess script) importable; tests/conftest.py
already points LORAPIPE_CACHE at a per-session directory that subprocesses inherit."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
