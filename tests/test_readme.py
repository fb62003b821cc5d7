"""The README's tables name tests: each named test exists, so no row points at nothing."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_readme_exists():
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", readme))
    defined = {match for path in (ROOT / "tests").rglob("test_*.py")
               for match in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M)}
    assert named and named <= defined, sorted(named - defined)
