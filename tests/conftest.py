"""Suite-wide setup.

Hypothesis is imported here, at start-up: its pytest plugin otherwise imports it lazily in the terminal
summary, and on CPython 3.11.7 compiling (assertion-rewriting) its modules that deep in pytest's hook
stack can fail with ``SystemError: AST constructor recursion depth mismatch`` after every test passed —
seen when a run's tests never imported hypothesis themselves.
"""

import hypothesis  # noqa: F401
