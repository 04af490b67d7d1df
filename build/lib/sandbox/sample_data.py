"""Sample documents for the demo and the benchmarks, generated fast and deterministically."""
from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import bson
from bson import ObjectId

_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
          "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def encoded_documents(n: int, start: int = 0, doc_bytes: int = 1024, seed: int = 7) -> Iterator[bytes]:
    """n BSON documents of about doc_bytes each: an ObjectId _id, an indexed `k`, nested fields and
    a text payload."""
    rnd = random.Random(seed + start)
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    filler = " ".join(rnd.choice(_WORDS) for _ in range(400))
    for i in range(start, start + n):
        doc = {
            "_id": ObjectId(),
            "k": rnd.randrange(1_000_000),
            "seq": i,
            "at": base + timedelta(seconds=i),
            "tags": [rnd.choice(_WORDS) for _ in range(3)],
            "address": {"city": rnd.choice(_WORDS).title(), "zip": f"{rnd.randrange(10**5):05d}"},
            "amount": round(rnd.random() * 1000, 2),
        }
        raw = bson.encode(doc)
        pad = doc_bytes - len(raw) - 16
        if pad > 0:
            offset = rnd.randrange(len(filler) - pad) if len(filler) > pad else 0
            doc["note"] = (filler * (1 + pad // len(filler)))[offset:offset + pad]
            raw = bson.encode(doc)
        yield raw
