"""submit, load, start, stop, unload, destroy: move units through fleet's lifecycle.

Every argument is resolved and checked before anything changes in the cluster,
so a typo or a conflicting unit in the middle of a list leaves the cluster as it
was. Submitting refuses to overwrite a unit of the same name with different
content unless `--replace` is given (and then only in states where fleet allows
it for that command).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetd.fleetctl.errors import FleetctlError, UnitConflict, UnitNotFound
from fleetd.fleetctl.model import Unit
from fleetd.fleetctl.session import Session
from fleetd.fleetctl.targets import LocalUnit, Target, expand, find_local_unit, is_glob
from fleetd.fleetctl.waiting import WaitPolicy, wait_for_states
from fleetd.unit.names import parse_unit_name
from fleetd.unit.unitfile import UnitOption, content_hash

# Desired states a unit may be in for each command to replace its content (fleet's rule).
REPLACEABLE_IN = {
    "submit": ("inactive",),
    "load": ("inactive", "loaded"),
    "start": ("inactive", "loaded", "launched"),
}
VERB = {"launched": "start", "loaded": "load", "inactive": "unload"}


@dataclass(frozen=True)
class Submission:
    name: str
    action: str  # "create", "replace" or "keep"
    options: tuple[UnitOption, ...] = ()
    existing: Unit | None = None


def _existing_names(session: Session, args: Sequence[str]) -> list[str]:
    if not any(is_glob(arg) for arg in args):
        return []
    return [unit.name for unit in session.client.units()]


def _plan_one(session: Session, target: Target, command: str, replace: bool) -> Submission:
    existing = session.client.unit(target.name)
    local = None if is_glob(target.arg) else find_local_unit(target.arg, target.name)
    if existing is not None:
        if local is None or content_hash(local.unit) == existing.hash:
            return Submission(target.name, "keep", existing=existing)
        if not replace:
            raise UnitConflict(_differs(target.name, local))
        allowed = REPLACEABLE_IN[command]
        if existing.desired_state not in allowed:
            raise UnitConflict(
                f"Unable to replace Unit {target.name} in state '{existing.desired_state}' "
                f"with {command}; use `fleetctl start --replace` or stop it first.")
        return Submission(target.name, "replace", local.unit.options, existing)
    if local is not None:
        return Submission(target.name, "create", local.unit.options)
    template = parse_unit_name(target.name).template
    if template is not None:
        found = session.client.unit(template)
        if found is not None:
            return Submission(target.name, "create", found.options)
        raise UnitNotFound(target.name, f"Unable to find Unit {target.name} or template "
                                        f"Unit {template} in the cluster or on disk.")
    raise UnitNotFound(target.name, f"Unable to find Unit {target.name} in the cluster or "
                                    f"on disk (no file {target.arg}).")


def _differs(name: str, local: LocalUnit) -> str:
    kind = "local template unit file" if local.template else "local unit file"
    return (f"Unit {name} in registry differs from {kind} {local.path}. "
            "Add --replace to override.")


def plan_submissions(session: Session, args: Sequence[str], command: str,
                     replace: bool) -> list[Submission]:
    targets = expand(args, _existing_names(session, args), files=True)
    return [_plan_one(session, target, command, replace) for target in targets]


def apply_submissions(session: Session, plan: Sequence[Submission]) -> list[Unit]:
    """Create or replace what the plan says; returns every unit as it now is."""
    units = []
    for item in plan:
        if item.action == "keep":
            assert item.existing is not None
            units.append(item.existing)
            continue
        desired = item.existing.desired_state if item.existing else "inactive"
        try:
            session.client.put_unit(item.name, desired or "inactive", item.options,
                                    replace=item.action == "replace")
        except UnitConflict:
            raise UnitConflict(f"Unit {item.name} was submitted with different content "
                               "meanwhile. Add --replace to override.") from None
        units.append(Unit(item.name, item.options, desired or "inactive", "", ""))
    return units


def submit(session: Session, args: Sequence[str], replace: bool = False) -> None:
    apply_submissions(session, plan_submissions(session, args, "submit", replace))


def _set_and_wait(session: Session, units: Sequence[Unit], target: str,
                  policy: WaitPolicy | None) -> None:
    """Set the desired state of each unit and wait (policy None: --no-block)."""
    waiting = []
    for unit in units:
        if unit.desired_state != target:
            session.client.put_unit(unit.name, target)
        if unit.is_global:
            session.say(f"Triggered global unit {unit.name} {VERB[target]}")
        elif policy is None:
            session.say(f"Triggered unit {unit.name} {VERB[target]}")
        else:
            waiting.append(unit.name)
    if waiting and policy is not None:
        wait_for_states(session, waiting, target, policy)


def load(session: Session, args: Sequence[str], policy: WaitPolicy | None,
         replace: bool = False) -> None:
    units = apply_submissions(session, plan_submissions(session, args, "load", replace))
    _set_and_wait(session, units, "loaded", policy)


def start(session: Session, args: Sequence[str], policy: WaitPolicy | None,
          replace: bool = False) -> None:
    units = apply_submissions(session, plan_submissions(session, args, "start", replace))
    _set_and_wait(session, units, "launched", policy)


def find_existing(session: Session, args: Sequence[str]) -> list[Unit]:
    """The named units (globs over existing units); an unknown name is UnitNotFound."""
    everything = {unit.name: unit for unit in session.client.units()}
    targets = expand(args, everything, files=False)
    missing = [t.name for t in targets if t.name not in everything]
    if missing:
        raise FleetctlError("\n".join(UnitNotFound(name).message for name in missing))
    return [everything[t.name] for t in targets]


def stop(session: Session, args: Sequence[str], policy: WaitPolicy | None) -> None:
    units = find_existing(session, args)
    for unit in units:
        if not unit.is_global and unit.desired_state == "inactive":
            raise FleetctlError(f"Unable to stop unit {unit.name} in state inactive; "
                                "load or start it first.")
    _set_and_wait(session, units, "loaded", policy)


def unload(session: Session, args: Sequence[str], policy: WaitPolicy | None) -> None:
    _set_and_wait(session, find_existing(session, args), "inactive", policy)


def destroy(session: Session, args: Sequence[str]) -> None:
    """Destroy each unit; unknown ones are reported and make the command fail at the end."""
    names = [t.name for t in expand(args, _existing_names(session, args), files=False)]
    missing = []
    for name in names:
        if session.client.delete_unit(name):
            session.say(f"Destroyed {name}")
        else:
            missing.append(UnitNotFound(name).message)
    if missing:
        raise FleetctlError("\n".join(missing))
