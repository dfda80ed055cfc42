"""submit, load, start, stop, unload, destroy: move units through fleet's lifecycle.

Every argument is resolved and checked before anything changes in the cluster,
so a typo or a conflicting unit in the middle of a list leaves the cluster as it
was. Submitting refuses to overwrite a unit of the same name with different
content unless `--replace` is given (and then only in states where fleet allows
it for that command).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fleetd.fleetctl.errors import FleetctlError, UnitConflict, UnitNotFound, UsageError
from fleetd.fleetctl.model import Unit
from fleetd.fleetctl.session import Session
from fleetd.fleetctl.targets import (
    LocalUnit,
    Target,
    expand,
    find_local_unit,
    is_glob,
    refuse_non_unit_file,
    unit_name_of,
)
from fleetd.fleetctl.waiting import WaitPolicy, wait_for_active, wait_for_states
from fleetd.unit.names import is_template_name, parse_unit_name
from fleetd.unit.unitfile import UnitOption, content_hash

# Desired states a unit may be in for each command to replace its content (fleet's rule).
REPLACEABLE_IN = {
    "submit": ("inactive",),
    "load": ("inactive", "loaded"),
    "start": ("inactive", "loaded", "launched"),
}
VERB_PAST = {"load": "loaded", "start": "started"}
PUTS_AT_ONCE = 8  # the API's worker threads (fleetd's Limits.workers)


@dataclass(frozen=True)
class Submission:
    name: str
    action: str  # "create", "replace" or "keep"
    options: tuple[UnitOption, ...] = ()
    existing: Unit | None = None


def _listed(session: Session, args: Sequence[str]) -> Mapping[str, Unit] | None:
    """Every unit, when a glob needs the listing (it then answers for each target too)."""
    if not any(is_glob(arg) for arg in args):
        return None
    return session.client.units_by_name()


def _plan_one(session: Session, target: Target, command: str, replace: bool,
              listed: Mapping[str, Unit] | None = None) -> Submission:
    def lookup(name: str) -> Unit | None:
        return listed.get(name) if listed is not None else session.client.unit(name)

    existing = lookup(target.name)
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
    refuse_non_unit_file(target.arg)
    template = parse_unit_name(target.name).template
    if template is not None:
        found = lookup(template)
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
    listed = _listed(session, args)
    targets = expand(args, list(listed or ()), files=True)
    if command in ("load", "start"):
        templates = [t.name for t in targets if is_template_name(t.name)]
        if templates:
            example = templates[0].replace("@.", "@1.", 1)
            raise UsageError(f"{', '.join(templates)}: a template cannot be {VERB_PAST[command]}"
                             f"; it is the pattern of its instances: {command} an instance "
                             f"such as {example} (fleetctl submit {templates[0]} stores it)")
    return [_plan_one(session, target, command, replace, listed) for target in targets]


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


def _set_and_wait(session: Session, units: Sequence[Unit], target: str, command: str,
                  policy: WaitPolicy | None) -> list[str]:
    """Set the desired state of each unit not already there and wait for the non-global
    ones (policy None: --no-block); units already there are left alone, silently, as in
    fleet. Returns the names waited for (or triggered, with --no-block)."""
    waiting = []
    changing = [unit for unit in units if unit.desired_state != target]
    put_desired_states(session, [unit.name for unit in changing], target)
    for unit in changing:
        if unit.is_global:
            session.say(f"Triggered global unit {unit.name} {command}")
        elif policy is None:
            session.say(f"Triggered unit {unit.name} {command}")
        else:
            waiting.append(unit.name)
    if waiting and policy is not None:
        wait_for_states(session, waiting, target, policy)
        if target == "launched":
            wait_for_active(session, waiting, policy)
    return waiting


def put_desired_states(session: Session, names: Sequence[str], target: str) -> None:
    """Set the desired state of each unit, up to PUTS_AT_ONCE requests in flight (the
    server answers them in parallel, and etcd commits concurrent writes together). After
    a failure no further request is sent; the first failure in `names` order is raised
    once those in flight have answered."""
    if len(names) <= 1:
        for name in names:
            session.client.put_unit(name, target)
        return
    failed = threading.Event()

    def put(name: str) -> bool:
        if failed.is_set():
            return False
        try:
            session.client.put_unit(name, target)
        except BaseException:
            failed.set()
            raise
        return True

    with ThreadPoolExecutor(max_workers=min(PUTS_AT_ONCE, len(names)),
                            thread_name_prefix="fleetctl-put") as pool:
        results = [pool.submit(put, name) for name in names]
    for result in results:
        result.result()  # the first failure, in order


def load(session: Session, args: Sequence[str], policy: WaitPolicy | None,
         replace: bool = False) -> None:
    units = apply_submissions(session, plan_submissions(session, args, "load", replace))
    _set_and_wait(session, units, "loaded", "load", policy)


def start(session: Session, args: Sequence[str], policy: WaitPolicy | None,
          replace: bool = False) -> None:
    units = apply_submissions(session, plan_submissions(session, args, "start", replace))
    _set_and_wait(session, units, "launched", "start", policy)


def find_existing(session: Session, args: Sequence[str], templates: bool = False) -> list[Unit]:
    """The named units (globs over existing units). Names the cluster does not have are
    skipped with a warning, and none found at all is fleet's "Units not found in
    registry": both on stderr, and the command still succeeds, as fleet's does."""
    for arg in args:  # bad names are usage errors, before anything is asked
        if not is_glob(arg):
            unit_name_of(arg)
    everything = session.client.units_by_name()
    try:
        targets = expand(args, everything, files=False, templates=templates)
    except FleetctlError as err:  # an unmatched glob: nothing of it is in the registry
        session.warn(err.message)
        targets = []
    found = [everything[t.name] for t in targets if t.name in everything]
    if not found:
        session.warn("Units not found in registry")
        return []
    for target in targets:
        if target.name not in everything:
            session.warn(f"Unit {target.name} not found in registry; skipped")
    return found


def _runnable(session: Session, units: Sequence[Unit]) -> list[Unit]:
    for unit in units:
        if is_template_name(unit.name):
            session.warn(f"Unit {unit.name} is a template: it never runs; skipped")
    return [u for u in units if not is_template_name(u.name)]


def stop(session: Session, args: Sequence[str], policy: WaitPolicy | None) -> None:
    units = _runnable(session, find_existing(session, args))
    for unit in units:
        if not unit.is_global and unit.desired_state == "inactive":
            raise FleetctlError(f"Unable to stop unit {unit.name} in state inactive; "
                                "load or start it first.")
    stopped = _set_and_wait(session, units, "loaded", "stop", policy)
    if stopped and policy is not None:
        session.warn(f"Successfully stopped units [{' '.join(stopped)}].")


def unload(session: Session, args: Sequence[str], policy: WaitPolicy | None) -> None:
    units = _runnable(session, find_existing(session, args))
    unloaded = _set_and_wait(session, units, "inactive", "unload", policy)
    if unloaded and policy is not None:
        session.warn(f"Successfully unloaded units [{' '.join(unloaded)}].")


def destroy(session: Session, args: Sequence[str]) -> None:
    """Destroy each unit (a glob takes templates too); names the cluster does not have
    are skipped as in `stop`."""
    for unit in find_existing(session, args, templates=True):
        if session.client.delete_unit(unit.name):
            session.say(f"Destroyed {unit.name}")
        else:  # destroyed by someone else meanwhile: what was asked is done
            session.warn(f"Unit {unit.name} not found in registry; skipped")
