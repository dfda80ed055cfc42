"""JSON shapes of fleet API v1 entities, and opaque page tokens. Pure: data in, data out.

fleet derives a Unit's `currentState` from what the agents publish, never from
what was asked: "launched" when the agent of the machine the engine assigned it
to has started it (even if its process then failed: systemd's own columns say
that, as in fleet) or reports it active, "loaded" when it is loaded there, else
"inactive". A global unit has no assignment; it counts as launched (or loaded)
when it is so on any machine, and its machineID stays "".
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from fleetd.api.errors import ApiError
from fleetd.job import Job
from fleetd.machine import Machine
from fleetd.status import UnitStateRecord
from fleetd.unit.unitfile import UnitFile

T = TypeVar("T")
PAGE_SIZE = 100  # fleet's, for clients that do not ask for another (`pageSize`)
MAX_PAGE_SIZE = 1000  # what a client may ask for: one listing of a large cluster, bounded
BAD_TOKEN = "invalid value of nextPageToken query parameter"


def error_json(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message}}


def options_json(unit: UnitFile) -> list[dict]:
    return [{"section": o.section, "name": o.name, "value": o.value} for o in unit.options]


def current_state(job: Job, machine: str, states: Iterable[UnitStateRecord]) -> str:
    """fleet's cluster-level state of a unit from the agents' published states.

    `machine` is the engine's assignment ("" if none); `states` are this unit's records."""
    relevant = [s for s in states
                if s.name == job.name and (job.is_global or s.machine == machine)]
    if not job.is_global and not machine:
        return "inactive"
    if any(s.launched or s.status.is_active for s in relevant):
        return "launched"
    if any(s.status.load == "loaded" for s in relevant):
        return "loaded"
    return "inactive"


def unit_json(job: Job, unit: UnitFile, machine: str, states: Iterable[UnitStateRecord],
              options: list[dict] | None = None) -> dict:
    """`options`: `options_json(unit)` when the caller has it already (it is shared, never
    changed)."""
    machine = "" if job.is_global else machine
    if options is None:
        options = options_json(unit)
    return {"name": job.name, "options": options, "desiredState": job.desired.value,
            "currentState": current_state(job, machine, states), "machineID": machine}


def machine_json(machine: Machine) -> dict:
    # apiURL is ours, not fleet's: how fleetctl reaches the fleetd that runs a unit (status,
    # journal). fleet's own clients ignore fields they do not know.
    return {"id": machine.id, "primaryIP": machine.public_ip, "metadata": dict(machine.metadata),
            "apiURL": machine.api_url}


def state_json(state: UnitStateRecord) -> dict:
    return {"name": state.name, "hash": state.hash, "machineID": state.machine,
            "systemdLoadState": state.status.load, "systemdActiveState": state.status.active,
            "systemdSubState": state.status.sub}


# -- pagination --------------------------------------------------------------------------------
def encode_token(kind: str, last: Sequence[str]) -> str:
    """An opaque token naming the last item of a page; the next page starts after it."""
    raw = json.dumps({"k": kind, "after": list(last)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(kind: str, token: str) -> tuple[str, ...]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise ApiError(400, BAD_TOKEN) from None
    if not isinstance(data, dict) or data.get("k") != kind:
        raise ApiError(400, BAD_TOKEN)
    after = data.get("after")
    if not isinstance(after, list) or not all(isinstance(part, str) for part in after):
        raise ApiError(400, BAD_TOKEN)
    return tuple(after)


def paginate(items: Iterable[T], sort_key: Callable[[T], tuple[str, ...]], kind: str,
             token: str | None, size: int = PAGE_SIZE) -> tuple[list[T], str | None]:
    """One page of `items` in `sort_key` order after `token`, and the next page's token."""
    ordered = sorted(items, key=sort_key)
    if token is not None:
        after = decode_token(kind, token)
        ordered = [item for item in ordered if sort_key(item) > after]
    page = ordered[:size]
    more = len(ordered) > size
    return page, (encode_token(kind, sort_key(page[-1])) if more else None)


def page_body(field: str, entities: list[dict], next_token: str | None) -> Mapping:
    body: dict = {field: entities}
    if next_token is not None:
        body["nextPageToken"] = next_token
    return body
