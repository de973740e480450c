"""Suite-wide settings.

Under CI (CI=true) hypothesis draws the same examples on every run (`derandomize`), so a property
test cannot pass on one commit and fail on the next by the luck of the draw; locally it keeps
searching with fresh examples and its example database.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
