"""Digests of documents: what verification computes of what it reads on either side, and the copy of
what it reads.

`digest_raw_batch`: the digest of a set of documents, in any order. It adds a 128-bit hash (BLAKE2b)
of each document's raw BSON modulo 2**128. Addition does not depend on the order the two sides return
documents in, and unlike XOR a document stored twice adds its hash twice instead of cancelling out, so
neither a duplicate nor a missing+extra pair goes unseen.

`StreamHash`: the hash of a range's bytes in the order read (what the copy keeps of a range). It is MD5
because that is what the server's `dbHash` command computes of a collection (the documents' bytes end to
end in `_id` index order): a collection the copy read in one range is checked on the destination by the
destination itself, without sending its bytes (tasks/verify.py). It detects accidents, not adversaries:
nobody chooses the documents to collide.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator

DIGEST_MOD = 1 << 128
_INT32 = struct.Struct("<i")


def document_hash(doc: bytes | memoryview) -> int:
    return int.from_bytes(hashlib.blake2b(doc, digest_size=16).digest(), "little")


def digest_raw_batch(raw: bytes) -> tuple[int, int]:
    """(documents, sum of their hashes) of a raw batch: BSON documents back to back."""
    view = memoryview(raw)
    unpack, blake, from_bytes = _INT32.unpack_from, hashlib.blake2b, int.from_bytes
    pos, end, count, total = 0, len(raw), 0, 0
    while pos < end:
        size = unpack(raw, pos)[0]
        total += from_bytes(blake(view[pos:pos + size], digest_size=16).digest(), "little")
        pos += size
        count += 1
    return count, total


class StreamHash:
    """The hash of documents' bytes in the order they were read (MD5 over the raw batches end to end,
    whatever their boundaries, as `dbHash` hashes a collection). Two reads of a range in `_id` order give
    the same hash exactly when they return the same documents, byte for byte, and it costs a small part
    of the per-document digest: one call per batch, during which hashlib lets go of the GIL."""

    def __init__(self) -> None:
        self._hash = hashlib.md5(usedforsecurity=False)

    def update(self, raw: bytes) -> None:
        self._hash.update(raw)

    def passing(self, batches: Iterable[bytes]) -> Iterator[bytes]:
        """The batches, each added to the hash as it passes."""
        for raw in batches:
            self._hash.update(raw)
            yield raw

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
