"""Unit files, pure: names, systemd unit-file syntax and the [X-Fleet] options.

Nothing here does I/O; callers read files and talk to etcd, this package only
turns text into validated values (or positioned errors) and back.
"""

from fleetd.unit.names import (
    KNOWN_SUFFIXES,
    UnitName,
    UnitNameError,
    is_valid_unit_name,
    normalize_unit_name,
    parse_unit_name,
)
from fleetd.unit.unitfile import (
    UnitFile,
    UnitFileError,
    UnitOption,
    content_hash,
    parse_unit_file,
    serialize,
    short_hash,
    split_command_line,
)
from fleetd.unit.xfleet import (
    FleetOptions,
    FleetOptionsError,
    FrozenMetadata,
    conflicts_with,
    expand_specifiers,
    matches_metadata,
    parse_fleet_options,
)

__all__ = [
    "KNOWN_SUFFIXES",
    "FleetOptions",
    "FleetOptionsError",
    "FrozenMetadata",
    "UnitFile",
    "UnitFileError",
    "UnitName",
    "UnitNameError",
    "UnitOption",
    "conflicts_with",
    "content_hash",
    "expand_specifiers",
    "is_valid_unit_name",
    "matches_metadata",
    "normalize_unit_name",
    "parse_fleet_options",
    "parse_unit_file",
    "parse_unit_name",
    "serialize",
    "short_hash",
    "split_command_line",
]
