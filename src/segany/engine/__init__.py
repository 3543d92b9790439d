"""The data engine (paper section 4): annotation server and page, store, pre-fill, export, report."""

from .store import Store, open_store

__all__ = ["Store", "open_store"]
