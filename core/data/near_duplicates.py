"""Near-duplicate conversations: MinHash signatures in an LSH index (datasketch).

Exact deduplication misses the copies that differ by a word or a number, and a near copy
split into validation makes the validation loss a memorisation score. Each conversation
(roles and contents, lower-cased) becomes the set of its word n-grams; one whose
estimated Jaccard similarity to a conversation already kept reaches the threshold is
dropped, naming the first one. The index sees records in reading order, before the
split, across the training, validation and test sources.
"""

from __future__ import annotations

import re

from datasketch import MinHash, MinHashLSH

from lorapipe.config import NearDedupeConfig
from lorapipe.data.schemas import Record

_WORD = re.compile(r"\w+")


class NearDuplicates:
    def __init__(self, config: NearDedupeConfig) -> None:
        self.config = config
        self.index = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)

    def _signature(self, record: Record) -> MinHash:
        parts = ([(m["role"], m["content"]) for m in record.messages] if record.kind == "chat"
                 else [("", record.text or f"{record.prompt} {record.completion}")])
        words = [w for role, text in parts for w in (role, *_WORD.findall(text.lower())) if w]
        n = self.config.ngram
        shingles = {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}
        signature = MinHash(num_perm=self.config.num_perm, seed=1)
        signature.update_batch([s.encode() for s in shingles])
        return signature

    def twin(self, record: Record, location: str) -> str | None:
        """The location of a kept record this one nearly copies; else None (and it is
        kept: later ones are compared with it)."""
        signature = self._signature(record)
        matches = self.index.query(signature)  # locations of kept ones at the threshold
        if matches:
            return str(matches[0])
        self.index.insert(location, signature)
        return None
