"""Suite-wide settings.

Under CI (CI=true) hypothesis draws the same examples on every run (`derandomize`), so a property
test cannot pass on one commit and fail on the next by the luck of the draw; locally it keeps
searching with fresh examples and its example database.

tests/test_repro.py (a whole `dvc repro`, ~a third of the suite's time) is collected first, then the
other files that hold end-to-end (`slow`) tests, each file's tests in their own order: `make test`
hands whole files to its workers in collection order (pytest-xdist, --dist loadfile), so the longest
files start at once instead of ending the run on one worker while the others sit idle.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


LONGEST_FILE = "test_repro.py"


def pytest_collection_modifyitems(config, items):
    """LONGEST_FILE, then the files with a `slow` test, then the rest (a stable sort: every file's
    tests keep their order)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: (item.path.name != LONGEST_FILE, item.path not in slow_files))
