"""The soak's modules import the integration harness (spin.py, emulator.py, ...) by name,
as soak.py arranges when it runs; its unit tests need the same path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
