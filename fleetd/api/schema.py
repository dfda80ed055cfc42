"""Validation of what clients send: unit names, PUT bodies and query parameters. Pure.

Everything a client can get wrong is refused here with an `ApiError` whose
message says what to change, before anything reaches the registry; a
desiredState outside inactive|loaded|launched is never stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetd.api.errors import ApiError
from fleetd.job import JobState
from fleetd.unit.names import UnitNameError, parse_unit_name
from fleetd.unit.unitfile import (
    UnitFile,
    UnitFileError,
    UnitOption,
    parse_unit_file,
    serialize,
)
from fleetd.unit.xfleet import FleetOptionsError, parse_fleet_options

MAX_BODY = 1 << 20  # bytes; a unit file is a few KiB
MAX_JOURNAL_LINES = 100_000
Query = Mapping[str, Sequence[str]]
_STATES = ", ".join(state.value for state in JobState)


@dataclass(frozen=True)
class UnitRequest:
    """A PUT /units/<name> body: None means the body did not name that field."""

    name: str
    unit: UnitFile | None
    desired: JobState | None


def unit_name(text: str) -> str:
    try:
        return parse_unit_name(text).full
    except UnitNameError as err:
        raise ApiError(400, str(err)) from None


def parse_unit_request(name: str, body: bytes) -> UnitRequest:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ApiError(400, f"unable to decode body: {err}") from None
    if not isinstance(data, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"desiredState": '
                            '"launched", "options": [{"section": ..., "name": ..., '
                            '"value": ...}]}')
    body_name = data.get("name")
    if body_name not in (None, ""):
        if body_name != name:
            raise ApiError(400, f"name in URL {name!r} differs from unit name in request body "
                                f"{body_name!r}")
    desired = _desired(data.get("desiredState"))
    unit = _unit(name, data.get("options"))
    return UnitRequest(name, unit, desired)


def _desired(value: object) -> JobState | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"desiredState must be a string, one of {_STATES}")
    if len(value) > 64:  # a 500 kB state must not come back as a 500 kB message
        raise ApiError(400, f"desiredState: unknown unit state {value[:32]!r}... "
                            f"({len(value)} characters); use one of {_STATES}")
    try:
        return JobState.parse(value)
    except ValueError as err:
        raise ApiError(400, f"desiredState: {err}") from None


def _unit(name: str, value: object) -> UnitFile | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ApiError(400, "options must be a list of {section, name, value} objects, not "
                            f"{_json_type(value)}")
    if not value:
        return None
    options = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ApiError(400, f"options[{index}] must be an object with section, name and "
                                f"value, not {_json_type(item)}")
        # fleet's Go client leaves empty fields out (`omitempty`): `Environment=` arrives
        # without "value". A missing section or name is a broken option all the same.
        item = {"value": "", **item}
        for field in ("section", "name", "value"):
            if field not in item:
                raise ApiError(400, f"options[{index}] has no {field!r}; every option needs "
                                    "a section and a name (and a value, empty if left out)")
            if not isinstance(item[field], str):
                raise ApiError(400, f"options[{index}].{field} must be a string, not "
                                    f"{_json_type(item[field])}")
        try:
            options.append(UnitOption(item["section"], item["name"], item["value"]))
        except UnitFileError as err:
            raise ApiError(400, f"options[{index}]: {err}") from None
    unit = UnitFile(tuple(options))
    try:
        if parse_unit_file(serialize(unit)) != unit:
            raise ApiError(400, "the options do not form a unit file that reads back the same")
        parse_fleet_options(unit, name)
    except (UnitFileError, FleetOptionsError) as err:
        raise ApiError(400, str(err)) from None
    return unit


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# -- query parameters --------------------------------------------------------------------------
def single(query: Query, key: str) -> str | None:
    values = query.get(key) or []
    if len(values) > 1:
        raise ApiError(400, f"query parameter {key} is given {len(values)} times; give it once")
    return values[0] if values else None


def page_size(query: Query, default: int, most: int) -> int:
    """`pageSize` (ours; fleet's pages are always 100 and its server ignores the
    parameter): items per page, `default` when absent, at most `most` (a larger ask gets
    `most`, as Google-style APIs constrain it)."""
    value = single(query, "pageSize")
    if value is None:
        return default
    digits = value.lstrip("0")
    if not (value.isascii() and value.isdigit() and digits):
        raise ApiError(400, f"query parameter pageSize={value[:32]!r} must be a whole number "
                            "of items, 1 or more")
    return most if len(digits) > 9 else min(int(digits), most)


def flag(query: Query, key: str, default: bool = False) -> bool:
    found = optional_flag(query, key)
    return default if found is None else found


def optional_flag(query: Query, key: str) -> bool | None:
    """true/false (or 1/0) when the parameter is given, None when it is not."""
    value = single(query, key)
    if value is None:
        return None
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ApiError(400, f"query parameter {key}={value!r} must be true or false")


def journal_query(query: Query) -> tuple[int, bool]:
    text = single(query, "lines")
    lines = 10
    if text is not None:
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_JOURNAL_LINES:
            raise ApiError(400, f"query parameter lines={text!r} must be a whole number from 0 "
                                f"to {MAX_JOURNAL_LINES}")
        lines = int(text)
    return lines, flag(query, "follow")


# -- discovery -------------------------------------------------------------------------------
def _method(id_: str, http: str, path: str, description: str, **params: str) -> dict:
    method = {"id": f"fleet.{id_}", "httpMethod": http, "path": path,
              "description": description}
    if params:
        method["parameters"] = {name: {"type": "string", "location": where}
                                for name, where in params.items()}
    return method


def _props(*names: str) -> dict:
    return {"type": "object", "properties": {n: {"type": "string"} for n in names}}


DISCOVERY = {
    "kind": "discovery#restDescription",
    "discoveryVersion": "v1",
    "id": "fleet:v1",
    "name": "fleet",
    "version": "v1",
    "title": "fleet API",
    "protocol": "rest",
    "rootUrl": "$ENDPOINT/",
    "servicePath": "fleet/v1/",
    "basePath": "/fleet/v1/",
    "schemas": {
        "Machine": _props("id", "primaryIP", "metadata", "apiURL"),
        "UnitOption": _props("section", "name", "value"),
        "Unit": _props("name", "options", "desiredState", "currentState", "machineID"),
        "UnitState": _props("name", "hash", "machineID", "systemdLoadState",
                            "systemdActiveState", "systemdSubState"),
        "Error": _props("code", "message"),
    },
    "resources": {
        "Machines": {"methods": {
            "List": _method("Machines.List", "GET", "machines", "page of machines",
                            nextPageToken="query"),
        }},
        "Units": {"methods": {
            "List": _method("Units.List", "GET", "units", "page of units",
                            nextPageToken="query"),
            "Get": _method("Units.Get", "GET", "units/{unitName}", "one unit",
                           unitName="path"),
            "Set": _method("Units.Set", "PUT", "units/{unitName}",
                           "create a unit (desiredState defaults to inactive), replace its "
                           "options (different options: the unit is submitted anew; "
                           "replace=false refuses that with 409) or change its desiredState",
                           unitName="path", replace="query"),
            "Delete": _method("Units.Delete", "DELETE", "units/{unitName}", "destroy a unit",
                              unitName="path"),
            "Status": _method("Units.Status", "GET", "units/{unitName}/status",
                              "systemctl-status-like text from this machine's runner",
                              unitName="path"),
            "Journal": _method("Units.Journal", "GET", "units/{unitName}/journal",
                               "the unit's log on this machine (text/plain)",
                               unitName="path", lines="query", follow="query"),
        }},
        "UnitState": {"methods": {
            "List": _method("UnitState.List", "GET", "state", "page of unit states",
                            machineID="query", unitName="query", nextPageToken="query"),
            "Get": _method("UnitState.Get", "GET", "state/{unitName}",
                           "one unit's state: from its assigned machine, else the first "
                           "machine reporting it (machineID picks one)", unitName="path",
                           machineID="query"),
        }},
        "Discovery": {"methods": {
            "Get": _method("Discovery.Get", "GET", "discovery", "this document"),
        }},
    },
}
