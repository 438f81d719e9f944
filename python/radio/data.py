"""Loaders for the evaluation and calibration text of ../shared/data (see its README.md).

- WikiText-2 raw test (the headline perplexity): the 2,891 non-empty rows, CRLF normalised to LF.
- State of the Union addresses: ``"calibration"`` = years < 1990, ``"evaluation"`` = 1990-2021.
  Never calibrate on the evaluation split.

The data directory is ``$RADIO_DATA`` when set, else the first ``shared/data`` found beside the
checkout (searched upwards from this file and from the working directory). Nothing here is ever
downloaded; a missing directory raises ``DataNotFoundError`` (tests turn it into a skip).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import List, Optional

__all__ = ["DataNotFoundError", "data_dir", "wikitext2_test", "sotu_files", "sotu_text",
           "SOTU_SPLITS"]

SOTU_SPLITS = {"calibration": (0, 1989), "evaluation": (1990, 2021)}
_WIKITEXT = Path("wikitext-2-raw") / "wiki.test.raw"
_SOTU_NAME = re.compile(r"^(\d{4})_.*\.txt$")


class DataNotFoundError(FileNotFoundError):
    """The shared data directory (or a file in it) is absent."""


def _candidates() -> List[Path]:
    env = os.environ.get("RADIO_DATA")
    if env:
        return [Path(env)]
    out = []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for ancestor in (start, *start.parents):
            out.append(ancestor / "shared" / "data")
    return out


def data_dir() -> Path:
    """The data directory ($RADIO_DATA, or ../shared/data beside the checkout)."""
    candidates = _candidates()
    for path in candidates:
        if (path / _WIKITEXT).is_file() or (path / "sotu").is_dir():
            return path
    if os.environ.get("RADIO_DATA"):
        raise DataNotFoundError(f"RADIO_DATA={candidates[0]} holds neither {_WIKITEXT} nor sotu/")
    raise DataNotFoundError("radio's data directory was not found: set RADIO_DATA, or place "
                            "shared/data (with wikitext-2-raw/ and sotu/) beside the checkout")


def _expected_sha256(path: Path) -> Optional[str]:
    sums = path.parent / "SHA256SUMS"
    if not sums.is_file():
        return None
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == path.name:
            return parts[0]
    return None


def wikitext2_test(directory: Optional[Path] = None, verify: bool = True) -> str:
    """WikiText-2 raw test text, CRLF -> LF (rows already joined by line ends in the file)."""
    path = Path(directory or data_dir()) / _WIKITEXT
    if not path.is_file():
        raise DataNotFoundError(f"WikiText-2 test file not found: {path}")
    raw = path.read_bytes()
    expected = _expected_sha256(path) if verify else None
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise ValueError(f"{path} does not match its SHA256SUMS entry {expected}: the file is "
                         f"damaged or a different version")
    return raw.decode("utf-8").replace("\r\n", "\n")


def sotu_files(split: str, directory: Optional[Path] = None) -> List[Path]:
    """State of the Union files of a split, in year order."""
    if split not in SOTU_SPLITS:
        raise ValueError(f"split must be one of {sorted(SOTU_SPLITS)}, got {split!r}")
    folder = Path(directory or data_dir()) / "sotu"
    if not folder.is_dir():
        raise DataNotFoundError(f"State of the Union folder not found: {folder}")
    lo, hi = SOTU_SPLITS[split]
    files = []
    for path in sorted(folder.iterdir()):
        match = _SOTU_NAME.match(path.name)
        if match and lo <= int(match.group(1)) <= hi:
            files.append(path)
    if not files:
        raise DataNotFoundError(f"no State of the Union files for {split} ({lo}-{hi}) in {folder}")
    return files


def sotu_text(split: str, directory: Optional[Path] = None) -> str:
    """All addresses of a split, CRLF -> LF, joined with blank lines, in year order."""
    return "\n\n".join(p.read_text(encoding="utf-8").replace("\r\n", "\n").strip()
                       for p in sotu_files(split, directory))
