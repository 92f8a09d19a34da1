"""The errors a user can cause, as one small typed hierarchy; the CLI prints each as one line.

Every error here is a `QkcopyError`, itself a `ValueError` (so code that catches ValueError keeps working);
the missing/existing-path kinds are also `FileNotFoundError` / `FileExistsError`. Each carries `where`: the
file, id or config key it is about, and its message says what was wrong there and what to do.

    QkcopyError
    ├── ConfigError       a config value, override or config.yaml           (where: the key or file)
    ├── DataError         an input image or folder; `ImageError` (data.images) is one
    ├── RunDirError       a run directory that cannot be started or resumed (where: the folder)
    ├── CheckpointError   a damaged checkpoint (weights, optimizer, state)  (where: the file)
    ├── IndexFileError    a damaged or inconsistent reference index         (where: the file)
    ├── ThresholdError    a threshold value or threshold.json               (where: the file or value)
    └── DescriptorError   a descriptor file or its .meta.json               (where: the file)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class QkcopyError(ValueError):
    """A mistake in what the user gave qkcopy; `where` names the file, id or key."""

    def __init__(self, message: str, where: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.where = None if where is None else str(where)


class ConfigError(QkcopyError):
    """A config key, value, override or config file that cannot be used."""


class DataError(QkcopyError):
    """Input images or folders that cannot be used."""


class RunDirError(QkcopyError):
    """A run directory that cannot be started or resumed as asked."""


class RunDirExists(RunDirError, FileExistsError):
    """A new run asked for in a directory that already holds another run."""


class NothingToResume(RunDirError, FileNotFoundError):
    """--resume of a directory that holds no run."""


class CheckpointError(QkcopyError):
    """A checkpoint file that is damaged, truncated or not a qkcopy checkpoint."""


class IndexFileError(QkcopyError):
    """A reference index whose files are damaged or disagree with each other."""


class ThresholdError(QkcopyError):
    """A copy threshold that would label pairs wrongly (not finite, above every possible score) or a bad file."""


class DescriptorError(QkcopyError):
    """A descriptor file, or its .meta.json, that cannot be trusted or read."""


class FingerprintMismatch(QkcopyError):
    """Descriptors, an index, a collection or a threshold made by one model used with another: scores of
    different models are not comparable."""


def read_json(path: str | os.PathLike, error: type[QkcopyError] = QkcopyError, what: str = "JSON file") -> Any:
    """Parse the JSON file `path`; a parse or read failure becomes `error` naming the file and the line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{path}: damaged {what} (JSON error at line {err.lineno}, column {err.colno}: {err.msg}); "
                    "restore or regenerate it", path) from err
    except UnicodeDecodeError as err:
        raise error(f"{path}: damaged {what} (not UTF-8 text); restore or regenerate it", path) from err


def one_line(err: BaseException) -> str:
    """The error's message on one line (a message with line breaks is joined with ' | ')."""
    text = str(err).strip()
    if isinstance(err, KeyError) or not text:  # KeyError('x') prints as 'x': say what kind of error it is
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return " | ".join(part.strip() for part in text.splitlines() if part.strip())
