"""A persistent reference collection: SQLite the truth (store), faiss a cache (cache), the API (collection)."""

from qkcopy.collection.collection import DEFAULT_BANK, Collection, MatchRow
from qkcopy.collection.records import Added, NewRef, Ref

__all__ = ["DEFAULT_BANK", "Added", "Collection", "MatchRow", "NewRef", "Ref"]
