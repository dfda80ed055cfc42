"""[X-Fleet]: every option, aliases, specifiers, refused combinations and the pure helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.unit.names import parse_unit_name
from fleetd.unit.unitfile import UnitFile, UnitFileError, UnitOption, parse_unit_file
from fleetd.unit.xfleet import (
    FleetOptions,
    FleetOptionsError,
    FrozenMetadata,
    conflicts_with,
    expand_specifiers,
    matches_metadata,
    options_depend_on_name,
    parse_fleet_options,
)


def fleet(body: str, name: str = "web@1.service") -> FleetOptions:
    return parse_fleet_options(parse_unit_file(f"[Unit]\nDescription=x\n[X-Fleet]\n{body}"), name)


def meta(**values: list[str]) -> FrozenMetadata:
    return FrozenMetadata(values)


GOOD = [
    # id, unit name, [X-Fleet] body, expected
    ("none", "web.service", "", FleetOptions()),
    ("redis-seed-conflicts", "redis@1.service", "Conflicts=redis@*.service\n",
     FleetOptions(conflicts=("redis@*.service",))),
    ("sidekick-machine-of", "apache-discovery@1.service", "MachineOf=apache@%i.service\n",
     FleetOptions(machine_of=("apache@1.service",))),
    ("template-may-name-template", "apache-discovery@.service", "MachineOf=apache@%i.service\n",
     FleetOptions(machine_of=("apache@.service",))),
    ("conflicts-per-line-and-lines", "web@1.service",
     "Conflicts=web@*.service db.service\nConflicts=cache-?.service web@*.service\n",
     FleetOptions(conflicts=("web@*.service", "db.service", "cache-?.service"))),
    ("conflicts-empty-ignored", "web.service", "Conflicts=\n", FleetOptions()),
    ("metadata-one", "web.service", "MachineMetadata=region=us-west\n",
     FleetOptions(machine_metadata=meta(region=["us-west"]))),
    ("metadata-pairs-on-one-line", "web.service", "MachineMetadata=region=us-west disk=ssd\n",
     FleetOptions(machine_metadata=meta(region=["us-west"], disk=["ssd"]))),
    ("metadata-alternatives", "web.service",
     "MachineMetadata=region=us-west\nMachineMetadata=region=us-east region=eu\n",
     FleetOptions(machine_metadata=meta(region=["us-west", "us-east", "eu"]))),
    ("metadata-quoted", "web.service", 'MachineMetadata="role=load balancer" "a=b=c"\n',
     FleetOptions(machine_metadata=meta(role=["load balancer"], a=["b=c"]))),
    ("machine-id", "web.service", "MachineID=2ba8c0e8c27d4b4c9e6e6b1c0d8a9f01\n",
     FleetOptions(machine_id="2ba8c0e8c27d4b4c9e6e6b1c0d8a9f01")),
    ("machine-id-repeated-same", "web.service", "MachineID=abc\nMachineID=abc\n",
     FleetOptions(machine_id="abc")),
    ("replaces", "web@2.service", "Replaces=web@1.service old.service\n",
     FleetOptions(replaces=("web@1.service", "old.service"))),
    ("global-with-metadata", "agent.service", "Global=true\nMachineMetadata=role=worker\n",
     FleetOptions(global_=True, machine_metadata=meta(role=["worker"]))),
    ("global-false-with-machine-of", "web.service", "Global=false\nMachineOf=db.service\n",
     FleetOptions(machine_of=("db.service",))),
    ("alias-machine-id", "web.service", "X-ConditionMachineID=abc\n",
     FleetOptions(machine_id="abc")),
    ("alias-machine-of", "web.service", "X-ConditionMachineOf=db.service\n",
     FleetOptions(machine_of=("db.service",))),
    ("alias-metadata", "web.service", "X-ConditionMachineMetadata=a=b\n",
     FleetOptions(machine_metadata=meta(a=["b"]))),
    ("alias-conflicts", "web.service", "X-Conflicts=db*.service\n",
     FleetOptions(conflicts=("db*.service",))),
    ("alias-and-new-merge", "web.service", "X-Conflicts=a.service\nConflicts=b.service\n",
     FleetOptions(conflicts=("a.service", "b.service"))),
    ("specifier-n-in-metadata", "web@1.service", "MachineMetadata=unit=%n\n",
     FleetOptions(machine_metadata=meta(unit=["web@1.service"]))),
    ("specifier-N-p-i", "web@east.service", "MachineMetadata=n=%N p=%p i=%i\n",
     FleetOptions(machine_metadata=meta(n=["web@east"], p=["web"], i=["east"]))),
    ("specifier-p-plain", "db.socket", "MachineOf=%p.service\n",
     FleetOptions(machine_of=("db.service",))),
    ("specifier-percent", "web.service", "MachineMetadata=load=100%%\n",
     FleetOptions(machine_metadata=meta(load=["100%"]))),
    ("sidekick-conflicts-own-kind", "web-discovery@1.service",
     "MachineOf=web@%i.service\nConflicts=web-discovery@*.service\n",
     FleetOptions(machine_of=("web@1.service",), conflicts=("web-discovery@*.service",))),
]


@pytest.mark.parametrize("name, body, expected", [row[1:] for row in GOOD],
                         ids=[row[0] for row in GOOD])
def test_parse_good(name, body, expected):
    assert fleet(body, name) == expected


BOOLEANS = [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
            ("false", False), ("False", False), ("0", False), ("no", False), ("off", False)]


@pytest.mark.parametrize("text, value", BOOLEANS, ids=[t for t, _ in BOOLEANS])
def test_global_booleans(text, value):
    assert fleet(f"Global={text}\n", "agent.service").global_ is value


BAD = [
    # id, unit name, body, message pattern
    ("unknown-key-typo", "web.service", "Conflict=a.service\n",
     r"unknown \[X-Fleet\] option 'Conflict'; did you mean Conflicts\?"),
    ("unknown-key-case", "web.service", "machineof=a.service\n", r"did you mean MachineOf\?"),
    ("unknown-key-alias-typo", "web.service", "X-ConditionMachineOff=a.service\n",
     r"did you mean MachineOf\?"),
    ("unknown-key-far", "web.service", "Banana=1\n",
     r"'Banana'; \[X-Fleet\] understands MachineID, MachineOf, MachineMetadata, Conflicts"),
    ("metadata-no-equals", "web.service", "MachineMetadata=region\n",
     r"MachineMetadata: 'region' is not key=value; write e.g. MachineMetadata=region=us-west"),
    ("metadata-empty-key", "web.service", "MachineMetadata==west\n", r"has an empty key"),
    ("metadata-empty-value", "web.service", "MachineMetadata=region=\n", r"has an empty value"),
    ("metadata-one-bad-of-two", "web.service", "MachineMetadata=a=b c\n", r"'c' is not key=value"),
    ("metadata-unterminated-quote", "web.service", 'MachineMetadata="a=b\n',
     r"unterminated double quote"),
    ("global-not-boolean", "web.service", "Global=maybe\n",
     r"Global=maybe is not a boolean; write Global=true or Global=false"),
    ("global-empty", "web.service", "Global=\n", r"Global= is not a boolean"),
    ("global-twice-different", "web.service", "Global=true\nGlobal=no\n",
     r"Global is given twice with different values"),
    ("global-with-machine-of", "web.service", "Global=true\nMachineOf=db.service\n",
     r"^Global=true cannot be combined with MachineOf; global units run on every machine "
     r"matching MachineMetadata$"),
    ("global-with-machine-id", "web.service", "Global=yes\nMachineID=abc\n",
     r"Global=true cannot be combined with MachineID"),
    ("global-with-conflicts", "web.service", "Global=1\nConflicts=x*.service\n",
     r"Global=true cannot be combined with Conflicts"),
    ("global-with-replaces", "web.service", "Global=on\nReplaces=old.service\n",
     r"Global=true cannot be combined with Replaces"),
    ("machine-of-self", "web@1.service", "MachineOf=%n\n",
     r"MachineOf=web@1\.service names the unit itself"),
    ("replaces-self", "web.service", "Replaces=web.service\n", r"Replaces=web\.service names "
                                                                r"the unit itself"),
    ("machine-of-no-suffix", "web.service", "MachineOf=apache@1\n",
     r"MachineOf=apache@1: the name has no type suffix; add one, e.g. apache@1\.service"),
    ("machine-of-traversal", "web.service", "MachineOf=../../etc/passwd.service\n",
     r"unit names cannot contain '/'"),
    ("machine-of-bad-suffix", "web.service", "MachineOf=db.servce\n", r"did you mean \.service"),
    ("machine-of-template", "web@1.service", "MachineOf=apache@.service\n",
     r"names a template, which never runs; name an instance such as apache@1\.service"),
    ("replaces-glob", "web.service", "Replaces=b*.service\n", r"Replaces=b\*\.service: "
                                                             r"character '\*' at position 2"),
    ("machine-of-and-replaces", "web.service", "MachineOf=db.service\nReplaces=db.service\n",
     r"db\.service is named by both MachineOf and Replaces"),
    ("conflicts-matches-machine-of", "web.service", "MachineOf=db@1.service\nConflicts=db@*\n",
     r"Conflicts=db@\* matches MachineOf=db@1\.service"),
    ("conflicts-bad-char", "web.service", "Conflicts=../x*.service\n",
     r"character '/' in pattern '\.\./x\*\.service' cannot occur in a unit name"),
    ("machine-id-twice", "web.service", "MachineID=abc\nMachineID=def\n",
     r"MachineID is given twice \(abc and def\); a unit can be pinned to only one machine"),
    ("machine-id-space", "web.service", "MachineID=a b\n", r"MachineID=a b is not a machine ID"),
    ("machine-id-empty", "web.service", "MachineID=\n", r"MachineID= is not a machine ID"),
    ("unknown-specifier", "web.service", "MachineOf=%z.service\n",
     r"MachineOf=%z\.service: unknown specifier %z at position 1; known: %n, %N, %p, %i "
     r"and %%"),
    ("lone-percent", "web.service", "MachineMetadata=load=100%\n",
     r"ends with a lone '%'; write %% for a literal %"),
]


@pytest.mark.parametrize("name, body, pattern", [row[1:] for row in BAD],
                         ids=[row[0] for row in BAD])
def test_parse_bad(name, body, pattern):
    with pytest.raises(FleetOptionsError, match=pattern):
        fleet(body, name)


def test_bad_unit_name_argument_is_a_fleet_options_error():
    with pytest.raises(FleetOptionsError, match=r"cannot read \[X-Fleet\] options: invalid "
                                                r"unit name '\.\./x\.service'"):
        parse_fleet_options(UnitFile(), "../x.service")


def test_options_merged_from_code_are_checked_too():
    unit = UnitFile.from_options([UnitOption("X-Fleet", "MachineOf", "db.service"),
                                  UnitOption("X-Fleet", "Global", "true")])
    with pytest.raises(FleetOptionsError, match=r"cannot be combined with MachineOf") as info:
        parse_fleet_options(unit, "web.service")
    assert info.value.key == "MachineOf"


def test_fleet_options_is_a_hashable_value():
    a = fleet("MachineMetadata=region=us disk=ssd\n")
    b = fleet("MachineMetadata=disk=ssd\nMachineMetadata=region=us\n")
    assert a == b and hash(a) == hash(b)
    assert a.machine_metadata == {"region": frozenset({"us"}), "disk": frozenset({"ssd"})}
    assert "disk" in a.machine_metadata and len(a.machine_metadata) == 2
    assert "FrozenMetadata({'disk': ['ssd'], 'region': ['us']})" == repr(a.machine_metadata)
    with pytest.raises(AttributeError):
        a.global_ = True  # type: ignore[misc]


SPECIFIERS = [
    ("instance", "web@east.service", "%n|%N|%p|%i", "web@east.service|web@east|web|east"),
    ("plain", "db.socket", "%n|%N|%p|%i", "db.socket|db|db|"),
    ("template", "web@.service", "%p@%i", "web@"),
    ("percent", "web.service", "100%% %%i", "100% %i"),
    ("no-specifiers", "web.service", "plain text", "plain text"),
]


@pytest.mark.parametrize("name, value, expected", [row[1:] for row in SPECIFIERS],
                         ids=[row[0] for row in SPECIFIERS])
def test_expand_specifiers(name, value, expected):
    assert expand_specifiers(value, parse_unit_name(name)) == expected


METADATA_MATCH = [
    ("no-requirement", "", {}, True),
    ("match", "MachineMetadata=region=us\n", {"region": "us", "disk": "ssd"}, True),
    ("alternative", "MachineMetadata=region=us region=eu\n", {"region": "eu"}, True),
    ("wrong-value", "MachineMetadata=region=us\n", {"region": "eu"}, False),
    ("missing-key", "MachineMetadata=region=us\n", {"disk": "ssd"}, False),
    ("all-keys-needed", "MachineMetadata=region=us disk=ssd\n", {"region": "us"}, False),
    ("all-keys-present", "MachineMetadata=region=us disk=ssd\n",
     {"region": "us", "disk": "ssd"}, True),
]


@pytest.mark.parametrize("body, machine, expected", [row[1:] for row in METADATA_MATCH],
                         ids=[row[0] for row in METADATA_MATCH])
def test_matches_metadata(body, machine, expected):
    assert matches_metadata(fleet(body, "web.service"), machine) is expected


CONFLICTS = [
    ("glob-instance", "Conflicts=redis@*.service\n", "redis@2.service", True),
    ("glob-own-instance", "Conflicts=redis@*.service\n", "redis@1.service", True),
    ("glob-other", "Conflicts=redis@*.service\n", "redis-discovery@2.service", False),
    ("exact", "Conflicts=db.service\n", "db.service", True),
    ("case-sensitive", "Conflicts=db.service\n", "DB.service", False),
    ("question-mark", "Conflicts=web-?.service\n", "web-7.service", True),
    ("char-class", "Conflicts=web-[12].service\n", "web-3.service", False),
    ("none", "", "anything.service", False),
]


@pytest.mark.parametrize("body, other, expected", [row[1:] for row in CONFLICTS],
                         ids=[row[0] for row in CONFLICTS])
def test_conflicts_with(body, other, expected):
    assert conflicts_with(fleet(body, "redis@1.service"), other) is expected


KEYS = st.sampled_from(["MachineID", "MachineOf", "MachineMetadata", "Conflicts", "Global",
                        "Replaces", "X-Conflicts", "Other"])
VALUES = st.lists(st.one_of(st.characters(codec=None, exclude_categories=()),
                            st.sampled_from(list("%=@.*\"'\\ nNpi") + ["a.service", "%i"])),
                  max_size=20).map("".join)


@settings(deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=6),
       st.sampled_from(["web.service", "web@1.service", "web@.service"]))
def test_any_x_fleet_section_gives_options_or_fleet_options_error(entries, name):
    text = "[X-Fleet]\n" + "".join(f"{key}={value}\n" for key, value in entries)
    try:
        unit = parse_unit_file(text)
    except UnitFileError:
        return
    try:
        options = parse_fleet_options(unit, name)
    except FleetOptionsError as err:
        assert err.message
        return
    hash(options)


NAME_FREE_OR_NOT = [
    ("", False),
    ("Conflicts=web@*.service\nMachineMetadata=region=us", False),
    ("Global=true", False),
    ("MachineID=abc123", False),
    ("Conflicts=web@%i.service", True),
    ("MachineMetadata=shard=%i", True),
    ("MachineOf=db.service", True),  # checked against the unit's own name
    ("X-ConditionMachineOf=db.service", True),
    ("Replaces=old.service", True),
]


@pytest.mark.parametrize("body,depends", NAME_FREE_OR_NOT)
def test_whether_a_units_options_depend_on_its_name(body, depends):
    """Where they do not, a template's instances share one parse (the registry keeps it by
    content alone): every name must then read the same options."""
    unit = parse_unit_file(f"[Unit]\nDescription=x %i\n[X-Fleet]\n{body}")
    assert options_depend_on_name(unit) is depends
    if not depends:
        assert {parse_fleet_options(unit, n) for n in
                ("web@1.service", "web@2.service", "db.service", "web@.service")} == \
            {parse_fleet_options(unit, "web@1.service")}
