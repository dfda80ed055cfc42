"""A machine as the cluster sees it: id, public IP, metadata, where its fleetd API listens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Machine:
    id: str
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    api_url: str = ""  # how fleetctl reaches this machine's fleetd (status, journal)
    version: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_json(self) -> dict:
        return {"id": self.id, "publicIP": self.public_ip, "metadata": dict(self.metadata),
                "apiURL": self.api_url, "version": self.version}

    @classmethod
    def from_json(cls, data: Mapping) -> Machine:
        return cls(id=str(data["id"]), public_ip=str(data.get("publicIP", "")),
                   metadata=MappingProxyType({str(k): str(v) for k, v in
                                              dict(data.get("metadata") or {}).items()}),
                   api_url=str(data.get("apiURL", "")), version=str(data.get("version", "")))


def parse_metadata(text: str) -> dict[str, str]:
    """fleet's `k=v,k=v` metadata setting; raises ValueError naming the bad pair."""
    result: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"metadata entry {pair!r} is not key=value")
        result[key.strip()] = value.strip()
    return result
