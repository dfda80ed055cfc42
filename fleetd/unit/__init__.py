"""Unit files, pure: names, systemd unit-file syntax and the [X-Fleet] options.

Nothing here does I/O; callers read files and talk to etcd, this package only
turns text into validated values (or positioned errors) and back.
"""

# Each name is imported from its module when first asked for: a caller that needs only
# unit files (fleetctl's listings) does not pay for the name and [X-Fleet] parsers.
_HOME = {
    "KNOWN_SUFFIXES": "names", "UnitName": "names", "UnitNameError": "names",
    "is_valid_unit_name": "names", "normalize_unit_name": "names", "parse_unit_name": "names",
    "UnitFile": "unitfile", "UnitFileError": "unitfile", "UnitOption": "unitfile",
    "content_hash": "unitfile", "parse_unit_file": "unitfile", "serialize": "unitfile",
    "short_hash": "unitfile", "split_command_line": "unitfile",
    "FleetOptions": "xfleet", "FleetOptionsError": "xfleet", "FrozenMetadata": "xfleet",
    "conflicts_with": "xfleet", "expand_specifiers": "xfleet", "matches_metadata": "xfleet",
    "parse_fleet_options": "xfleet",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


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
