"""The one exception a cancelled job's work raises, in whichever layer noticed the cancel.

Kept here (beside the settings and errors every layer may import) so that evaluation code can stop
a corpus encoding without importing the training package that sits above it.
"""

from __future__ import annotations


class TrainingCancelled(Exception):
    """Raised by the engine after it stopped because the observer asked it to."""
