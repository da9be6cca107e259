"""The errors a user can cause: bad input, a bad config, an unreadable file, an output that cannot be written.

Every one of them derives from :class:`FlowVAEError`; the ``flowvae`` command prints its message as one
``error: ...`` line and exits with code 2 (``--debug`` adds the traceback). Anything else that escapes a
command is a bug in flowvae and is shown with its traceback. Each class also derives from the built-in
exception Python code would expect (``ValueError``, ``OSError``, ...), so ``except ValueError`` around an
API call keeps working.
"""
from __future__ import annotations


class FlowVAEError(Exception):
    """Base of the errors caused by what the user asked for (exit code 2 at the command line)."""


class UsageError(FlowVAEError, ValueError):
    """An option or argument whose value cannot work (an index past the test set, a flow-only model
    asked for its global code, an image of another size, ...)."""


class FileFormatError(FlowVAEError, ValueError):
    """A file that exists but is not what it should be (empty, text, an image, truncated, a foreign pickle)."""
