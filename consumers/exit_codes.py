"""The exit codes of every ``segmenter`` command, for scripts and supervisors.

>>> EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_NOT_FOUND
(0, 1, 2, 3)
"""

from __future__ import annotations

#: It did what was asked.
EXIT_OK = 0
#: It failed: a server could not be reached, or an operation could not complete.
EXIT_ERROR = 1
#: The settings or the command line are wrong; the message names the key.
EXIT_CONFIG = 2
#: What was asked for does not exist (a user, a model, a version).
EXIT_NOT_FOUND = 3
