"""The fleetd keyspace in etcd, defined once: every key is built and parsed here.

All keys live under one configurable prefix P (default `/_coreos.com/fleet/`).

key (under P)               value                                 writer  reader         lease
unit/<hash>                 unit file text (canonical, not JSON)  API*    engine, agent  -
job/<name>                  {name, hash, desired}                 API*    engine, API    -
global/<name>               {name, hash, desired}                 API*    agents, API    -
assign/<machine>/<name>     {hash, desired}                       engine  that agent     -
machine/<id>                {id, publicIP, metadata, apiURL, ...} agent   engine, API    agent
heartbeat/<id>              {seq, sent[, leaving]}                agent   engines        agent
fence/<id>                  {lease} of the machine fenced         engine  that agent     -
state/<name>/<machine>      {hash, load, active, sub, launched}   agent   API, engine    agent
engine/leader               leader's machine id (text)            engine  engines, API   engine
lock/apply                  {host, pid, since, step, ...}         apply   apply, plan    apply

API*: and `provision apply`, through `Registry` in guarded transactions under `lock/apply`.

Why this shape: an agent watches only `assign/<its id>/` and the small `global/`
prefix, so a change to one unit wakes one agent, not the cluster. Global units
are not scheduled: every agent whose metadata matches runs them. A unit is
named in at most one of `job/` and `global/`; the API enforces that in the same
transaction that writes it. Unit states are per (unit, machine) so a unit that
is, wrongly, active on two machines shows as two rows instead of hiding one.
`lock/apply` lets one `provision apply` at a time write the cluster's units: its
create revision fences every write of the holder (see `apply_lock.py`).

Liveness: an agent rewrites `heartbeat/<id>` every heartbeat period; engines watch
that prefix and judge a machine by the heartbeats they saw arrive (not by lease
expiry alone, which etcd postpones on every raft leader change). The leader fences a
machine it judged dead by revoking its lease and writing `fence/<id>` in the same
transactions that move its units (guarded by the heartbeat key being gone); the
agent registers again only in a transaction comparing `fence/<id>` with what it saw
when it last read its assignments, and deletes it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DEFAULT_PREFIX = "/_coreos.com/fleet/"
# Where sidekicks announce services (the fleet guides' convention), outside the prefix.
SERVICES_PREFIX = "/services/"


class Kind(str, Enum):
    UNIT = "unit"
    JOB = "job"
    GLOBAL = "global"
    ASSIGN = "assign"
    MACHINE = "machine"
    HEARTBEAT = "heartbeat"
    FENCE = "fence"
    STATE = "state"
    ENGINE = "engine"
    LOCK = "lock"


@dataclass(frozen=True)
class ParsedKey:
    kind: Kind
    name: str = ""  # unit name, unit hash (UNIT) or machine id (MACHINE)
    machine: str = ""  # ASSIGN, STATE


class Keys:
    """Builds and parses the keys under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix.startswith("/"):
            raise ValueError(f"etcd key prefix {prefix!r} must start with /")
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"

    # -- builders ------------------------------------------------------------------------------
    def unit(self, content_hash: str) -> str:
        return f"{self.prefix}unit/{content_hash}"

    def job(self, name: str) -> str:
        return f"{self.prefix}job/{name}"

    def global_job(self, name: str) -> str:
        return f"{self.prefix}global/{name}"

    def assignment(self, machine: str, name: str) -> str:
        return f"{self.prefix}assign/{machine}/{name}"

    def machine(self, machine: str) -> str:
        return f"{self.prefix}machine/{machine}"

    def heartbeat(self, machine: str) -> str:
        return f"{self.prefix}heartbeat/{machine}"

    def fence(self, machine: str) -> str:
        return f"{self.prefix}fence/{machine}"

    def state(self, name: str, machine: str) -> str:
        return f"{self.prefix}state/{name}/{machine}"

    def leader(self) -> str:
        return f"{self.prefix}engine/leader"

    def apply_lock(self) -> str:
        return f"{self.prefix}lock/apply"

    # -- prefixes (for range reads and watches) ---------------------------------------------------
    def of(self, kind: Kind) -> str:
        return f"{self.prefix}{kind.value}/"

    def assignments_of(self, machine: str) -> str:
        return f"{self.prefix}assign/{machine}/"

    def states_of(self, name: str) -> str:
        return f"{self.prefix}state/{name}/"

    # -- parser ----------------------------------------------------------------------------------
    def parse(self, key: str | bytes) -> ParsedKey | None:
        """The meaning of a key, or None for a key this keyspace does not define."""
        if isinstance(key, bytes):
            key = key.decode("utf-8", errors="replace")
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix):].split("/")
        try:
            kind = Kind(parts[0])
        except ValueError:
            return None
        rest = parts[1:]
        if kind in (Kind.UNIT, Kind.JOB, Kind.GLOBAL, Kind.MACHINE, Kind.HEARTBEAT,
                    Kind.FENCE) and len(rest) == 1 and rest[0]:
            return ParsedKey(kind, rest[0])
        if kind is Kind.ASSIGN and len(rest) == 2 and all(rest):
            return ParsedKey(kind, rest[1], rest[0])
        if kind is Kind.STATE and len(rest) == 2 and all(rest):
            return ParsedKey(kind, rest[0], rest[1])
        if kind is Kind.ENGINE and rest == ["leader"]:
            return ParsedKey(kind, "leader")
        if kind is Kind.LOCK and rest == ["apply"]:
            return ParsedKey(kind, "apply")
        return None
