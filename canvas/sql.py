"""Small helpers for the few hot paths that write raw SQL (ingest, chunks)."""

from collections.abc import Iterator

from django.db import connection


def slices(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(count: int, mark: str = "%s") -> str:
    return ",".join([mark] * count)


def sql_in(column: str, values: list) -> tuple[str, list]:
    """`column IN (...)`; one array parameter on PostgreSQL, whose driver would
    otherwise re-parse a query text that differs with every batch size."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s)", [list(values)]
    return f"{column} IN ({marks(len(values))})", list(values)


def int_array(values) -> str:
    """A PostgreSQL array literal of integers: far cheaper to send than a list."""
    return "{" + ",".join(map(str, values)) + "}"
