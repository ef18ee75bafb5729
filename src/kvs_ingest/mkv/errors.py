from __future__ import annotations


class MkvError(Exception):
    """The bytes are not valid EBML/Matroska, or an element exceeds the reader's bounds."""
