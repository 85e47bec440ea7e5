"""One version in every place that states it: setup.py, nar_refine.__version__ and the newest
release of CHANGELOG.md (compatibility messages name these versions)."""

import re

from helpers import REPO


def test_versions_agree():
    setup = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    package = re.search(r'__version__ = "([^"]+)"', (REPO / "nar_refine" / "__init__.py").read_text()).group(1)
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d\d-\d\d$", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert setup == package == releases[0], (setup, package, releases)
