"""A persistent reference collection: SQLite the truth (store), faiss a cache (cache), the API (collection)."""

from qkcopy.collection.collection import DEFAULT_BANK, Collection, MatchRow
from qkcopy.collection.records import AddedRef, NewRef, Ref

__all__ = ["DEFAULT_BANK", "AddedRef", "Collection", "MatchRow", "NewRef", "Ref"]
