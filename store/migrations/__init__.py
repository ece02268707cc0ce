"""Alembic migrations of the store schema. Applied by :meth:`store.Store.open` (``migrate=True``)."""
