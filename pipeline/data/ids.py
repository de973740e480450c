"""Sample ids as the user has them: integers, or strings such as `img-000123`.

The cache and every later stage join rows on an int64 key, `sample_id`. For integer ids the key is
the id itself. For string ids it is a stable 63-bit hash of the id's UTF-8 bytes (blake2b, 8 bytes,
top bit cleared), the same on every machine and every run; the strings themselves are kept beside
the keys in the prepared data (`PreparedData.user_id`) so that every message and output can show
the user's id. Two distinct strings with the same key are refused at prepare (a chance of about
n^2 / 2^64 for n ids: 5e-8 for a million).
"""

from __future__ import annotations

import hashlib

import numpy as np

from pipeline.data.checks import DatasetError, SampleIdTypeError, few

KEY_MASK = (1 << 63) - 1
"""Keys are non-negative int64: the top bit of the 64-bit digest is cleared."""


class SampleIdCollisionError(DatasetError):
    """Two different string ids hash to the same int64 key."""


STRING_KINDS = "USOT"
"""numpy dtype kinds that can hold strings: fixed unicode, bytes, object, StringDType (Zarr v3)."""


def string_key(text: str) -> int:
    """The int64 key of one string id: blake2b-64 of its UTF-8 bytes with the top bit cleared."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & KEY_MASK


def as_strings(values: np.ndarray, what: str, source: str) -> np.ndarray:
    """(N,) strings of any numpy string dtype -> (N,) object array of Python str.

    Bytes are decoded as UTF-8. A missing value (None) or a non-string element is a
    SampleIdTypeError naming `what` and the rows."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return np.array([v.decode("utf-8") for v in values.tolist()], dtype=object)
    items = values.tolist()
    missing = [row for row, item in enumerate(items) if item is None]
    if missing:
        raise SampleIdTypeError(
            f"{source}: rows {few(missing)} have no id (null); give every row an id, or set the id "
            "column / array to null to number rows by position"
        )
    bad = [row for row, item in enumerate(items) if not isinstance(item, str)]
    if bad:
        kinds = sorted({type(items[row]).__name__ for row in bad})
        raise SampleIdTypeError(
            f"{source}: {what} must all be strings or all integers, but rows {few(bad)} hold "
            f"{', '.join(kinds)}; give every row an id of one kind"
        )
    return np.array(items, dtype=object)


def sample_keys(ids: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The user's ids (N,) -> (keys (N,) int64, user_id (N,) object str array or None).

    Integer ids are their own keys (user_id None); string ids get `string_key` each. Floats, bools
    and anything else are a SampleIdTypeError saying what to do; two strings with one key a
    SampleIdCollisionError. Duplicate ids are not checked here (`checks.check_sample_ids`)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise SampleIdTypeError(
            f"{source}: sample ids have shape {list(ids.shape)}; give one id per row, shape (rows,)"
        )
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64), None
    if ids.dtype.kind in STRING_KINDS:
        strings = as_strings(ids, "sample ids", source)
        keys = np.fromiter((string_key(s) for s in strings), dtype=np.int64, count=len(strings))
        _refuse_collisions(keys, strings, source)
        return keys, strings
    advice = (
        "an integer id column with nulls reads as floats: drop or fill the rows without an id"
        if ids.dtype.kind == "f"
        else "map them to integers or strings"
    )
    raise SampleIdTypeError(
        f"{source}: sample ids must be integers or strings, got {ids.dtype} values; {advice} "
        "(or set the id column / array to null to number rows by position)"
    )


def _refuse_collisions(keys: np.ndarray, strings: np.ndarray, source: str) -> None:
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    for index in same:
        first, second = strings[order[index]], strings[order[index + 1]]
        if first != second:  # equal strings are duplicates, refused by check_sample_ids
            raise SampleIdCollisionError(
                f"{source}: sample ids {first!r} and {second!r} hash to the same 63-bit key "
                f"{int(sorted_keys[index])}; rename one of them"
            )
