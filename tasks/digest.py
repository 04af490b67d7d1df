"""The digest of a set of documents: what the copy computes of what it reads, and verification of
what it reads on either side.

The digest adds a 128-bit hash (BLAKE2b) of each document's raw BSON modulo 2**128. Addition does not
depend on the order the two sides return documents in, and unlike XOR a document stored twice adds
its hash twice instead of cancelling out, so neither a duplicate nor a missing+extra pair goes unseen.
"""
from __future__ import annotations

import hashlib
import struct

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


def digest_hex(total: int) -> str:
    return f"{total % DIGEST_MOD:032x}"
