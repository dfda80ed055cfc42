"""What each route does, in terms of the registry and this machine's runner.

The registry is the single source of truth: every request reads or writes it.
Reads of units and states are served from a `UnitsView` when one is given and can
answer (it is as current as etcd at the moment of the read: see fleetd/registry/view.py),
else straight from etcd. Handlers return a `Response`; `answer`
turns every exception into the right status (Conflict 409, NotFound 404, etcd
unreachable 503, anything unexpected 500).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fleetd.api import encode, schema
from fleetd.api.errors import ApiError
from fleetd.job import JobState
from fleetd.registry.etcd import RegistryUnavailable
from fleetd.registry.registry import Conflict, NotFound, Registry
from fleetd.registry.together import DesiredStates
from fleetd.registry.view import UnitsView
from fleetd.runner.base import Runner, RunnerError
from fleetd.unit.names import is_template_name
from fleetd.unit.unitfile import UnitFile, UnitFileError, content_hash
from fleetd.unit.xfleet import FleetOptionsError

log = logging.getLogger("fleetd.api")
OPTIONS_JSON_KEPT = 4096  # unit bodies whose options' JSON is kept, by content hash


@dataclass
class Response:
    status: int
    body: dict | str | None = None  # dict: JSON; str: text/plain; None: no body
    stream: Iterator[str] | None = None  # text/plain lines, sent as they come (chunked)
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, **headers: str) -> Response:
    return Response(status, encode.error_json(status, message), headers=dict(headers))


def answer(call: Callable[[], Response]) -> Response:
    try:
        return call()
    except ApiError as err:
        return error(err.status, err.message)
    except Conflict as err:
        return error(409, str(err))
    except NotFound as err:
        return error(404, str(err))
    except (FleetOptionsError, UnitFileError) as err:
        return error(400, str(err))
    except RegistryUnavailable as err:
        log.warning("API request failed, etcd unavailable: %s", err)
        return error(503, "fleet registry (etcd) unavailable; nothing was changed, retry when "
                          f"etcd is reachable: {err}")
    except Exception:  # one bad request must not take the server down
        log.exception("API request failed")
        return error(500, "internal error in fleetd; see its log")


class Api:
    def __init__(self, registry: Registry, runner: Runner, machine_id: str,
                 page_size: int = encode.PAGE_SIZE, view: UnitsView | None = None,
                 max_page_size: int = encode.MAX_PAGE_SIZE) -> None:
        self.registry = registry
        self.view = view
        self._options_cache: dict[str, list[dict]] = {}
        self.desired_states = DesiredStates(registry)  # concurrent PUTs: one transaction
        self.runner = runner
        self.machine_id = machine_id
        self.page_size = page_size
        self.max_page_size = max(max_page_size, page_size)

    # -- cluster-wide ------------------------------------------------------------------------
    def discovery(self) -> Response:
        return Response(200, schema.DISCOVERY)

    def _listing(self) -> contextlib.AbstractContextManager:
        return self.view.listing() if self.view else contextlib.nullcontext()

    def _page_size(self, query: schema.Query) -> int:
        return schema.page_size(query, self.page_size, self.max_page_size)

    def list_machines(self, query: schema.Query) -> Response:
        token = schema.single(query, "nextPageToken")
        size = self._page_size(query)
        _, machines = self.registry.machines()
        page, next_token = encode.paginate(machines.values(), lambda m: (m.id,), "machines",
                                           token, size)
        return Response(200, encode.page_body("machines", [encode.machine_json(m) for m in page],
                                              next_token))

    def list_units(self, query: schema.Query) -> Response:
        """One page: this page's jobs, assignments and states only (from the view, or
        ranged reads of just those keys)."""
        with self._listing():  # the page made too: a snapshot begun meanwhile slows it
            return self._list_units(query)

    def _list_units(self, query: schema.Query) -> Response:
        token = schema.single(query, "nextPageToken")
        size = self._page_size(query)
        after, listed_at = None, 0
        if token is not None:
            parts = encode.decode_token("units", token)
            if len(parts) not in (1, 2):
                raise ApiError(400, encode.BAD_TOKEN)
            after, listed_at = parts[0], _revision(parts[1:])
        page = self.view.units_page(after, size, listed_at) if self.view else None
        if page is None:
            page = self.registry.units_page(after, size)
        entities = []
        for record in page.jobs:
            unit = self.registry.unit(record.job.hash)
            if unit is None:  # destroyed and its body collected between two reads
                continue
            entities.append(encode.unit_json(record.job, unit, page.where.get(record.job.name, ""),
                                             page.states.get(record.job.name, []),
                                             self._options_json(record.job.hash, unit)))
        next_token = (encode.encode_token("units", (page.jobs[-1].job.name,
                                                    str(max(page.revision, listed_at))))
                      if page.more and page.jobs else None)
        return Response(200, encode.page_body("units", entities, next_token))

    def list_states(self, query: schema.Query) -> Response:
        with self._listing():
            return self._list_states(query)

    def _list_states(self, query: schema.Query) -> Response:
        token = schema.single(query, "nextPageToken")
        machine = schema.single(query, "machineID")
        name = schema.single(query, "unitName")
        size = self._page_size(query)
        if name is not None:  # one unit's states: its own keys only
            states = [s for s in self._states_of(name)
                      if machine is None or s.machine == machine]
            page, next_token = encode.paginate(states, lambda s: (s.name, s.machine), "state",
                                               token, size)
        else:
            after = encode.decode_token("state", token) if token is not None else None
            if after is not None and len(after) not in (2, 3):
                raise ApiError(400, encode.BAD_TOKEN)
            start = (after[0], after[1]) if after is not None else None
            listed_at = _revision(after[2:]) if after is not None else 0
            found = (self.view.states_page(start, size, machine, listed_at)
                     if self.view else None)
            page, more, revision = found or self.registry.states_page(start, size, machine)
            next_token = (encode.encode_token("state", (page[-1].name, page[-1].machine,
                                                        str(max(revision, listed_at))))
                          if more else None)
        return Response(200, encode.page_body("states", [encode.state_json(s) for s in page],
                                              next_token))

    # -- one unit ----------------------------------------------------------------------------
    def get_unit(self, name: str) -> Response:
        name = schema.unit_name(name)
        found = self.view.unit_view(name) if self.view else None
        record, machine, states = found or self.registry.unit_view(name)
        unit = self.registry.unit(record.job.hash) if record is not None else None
        if record is None or unit is None:
            raise ApiError(404, f"Unit {name} does not exist.")
        return Response(200, encode.unit_json(record.job, unit, machine, states,
                                              self._options_json(record.job.hash, unit)))

    def _options_json(self, digest: str, unit: UnitFile) -> list[dict]:
        """A unit body's options as JSON, made once per content hash (a page of instances
        of one template shows the same options a hundred times)."""
        found = self._options_cache.get(digest)
        if found is None:
            if len(self._options_cache) >= OPTIONS_JSON_KEPT:
                self._options_cache.clear()
            found = self._options_cache[digest] = encode.options_json(unit)
        return found

    def put_unit(self, name: str, body: bytes, query: schema.Query) -> Response:
        """fleet's Units.Set. Create: options, desiredState optional (inactive). Different
        options for an existing unit: it is submitted anew (201) with the desiredState given,
        else inactive, as fleet's `--replace` expects; `replace=false` refuses that (409), so
        a client that checked first cannot overwrite a unit submitted meanwhile. Otherwise
        only the desiredState changes (204), and it is required."""
        name = schema.unit_name(name)
        replace = schema.optional_flag(query, "replace")
        request = schema.parse_unit_request(name, body)
        if request.desired not in (None, JobState.INACTIVE) and is_template_name(name):
            raise ApiError(400, f'cannot activate template "{name}": a template is a pattern '
                                "for its instances; set the state of an instance such as "
                                f"{name.replace('@.', '@1.', 1)}")
        if request.unit is None and request.desired is not None and self.view is not None:
            # A state change only (fleetctl start/stop/load): the view's record, however
            # old, is a safe guess, as the write compares the revision it names and reads
            # again if it moved. A guess that the unit is already there (or absent) is
            # checked by reading etcd: skipping the write on a stale view would lose it.
            seen = self.view.guess(name)
            if seen is not None and seen.job.desired is not request.desired:
                try:
                    self.desired_states.set(seen, request.desired)
                    return Response(204)
                except NotFound:
                    pass  # destroyed meanwhile: answered below, as any missing unit is
        existing = self.registry.get_job(name)
        if existing is None:
            if request.unit is None:
                raise ApiError(409, f"unit {name} does not exist and options field empty; "
                                    "send its options to create it")
            self.registry.create_job(name, request.unit, request.desired or JobState.INACTIVE,
                                     replace=replace is not False)
            return Response(201)
        if request.unit is not None and content_hash(request.unit) != existing.job.hash:
            if replace is False:
                raise ApiError(409, f"unit {name} already exists with different content "
                                    f"({existing.job.hash[:7]}); replace it (omit "
                                    "replace=false, or fleetctl --replace) or destroy it first")
            self.registry.create_job(name, request.unit, request.desired or JobState.INACTIVE,
                                     replace=True)
            return Response(201)
        if request.desired is None:
            raise ApiError(409, f"must provide DesiredState to update existing unit {name}")
        self.registry.set_desired(name, request.desired, seen=existing)
        return Response(204)

    def get_state(self, name: str, query: schema.Query) -> Response:
        """fleet's UnitState.Get: one UnitState object (not a page), 404 when no machine
        reports the unit. Several machines may (a global unit, or one moving): the one it is
        assigned to wins, else the smallest machine id; `machineID` asks for one machine."""
        name = schema.unit_name(name)
        machine = schema.single(query, "machineID")
        states = sorted((s for s in self._states_of(name)
                         if machine is None or s.machine == machine), key=lambda s: s.machine)
        if not states:
            where = f" on machine {machine}" if machine is not None else ""
            raise ApiError(404, f"unit state does not exist: no machine reports {name}{where}")
        if machine is None and len(states) > 1:
            chosen = next((s for s in states if self.registry.is_assigned(name, s.machine)),
                          states[0])
            return Response(200, encode.state_json(chosen))
        return Response(200, encode.state_json(states[0]))

    def _states_of(self, name: str) -> list:
        found = self.view.states_of(name) if self.view else None
        return found if found is not None else self.registry.states_of(name)

    def delete_unit(self, name: str) -> Response:
        name = schema.unit_name(name)
        if not self.registry.destroy_job(name):
            raise ApiError(404, f"Unit {name} does not exist.")
        return Response(204)

    # -- this machine (fleetctl status / journal) ---------------------------------------------
    def unit_status(self, name: str) -> Response:
        name = schema.unit_name(name)
        try:
            text = self.runner.status_text(name)
        except RunnerError:
            raise ApiError(404, f"Unit {name} is not loaded on machine "
                                f"{self.machine_id}") from None
        return Response(200, {"machineID": self.machine_id, "status": text})

    def journal(self, name: str, query: schema.Query) -> Response:
        name = schema.unit_name(name)
        lines, follow = schema.journal_query(query)
        try:
            found = self.runner.journal(name, lines, follow)
        except RunnerError as err:
            raise ApiError(404, str(err)) from None
        if follow:
            return Response(200, stream=iter(found))
        return Response(200, "".join(f"{line}\n" for line in found))


def _revision(parts: tuple[str, ...]) -> int:
    """The revision a listing's first page was served at, as its page tokens carry it (0:
    none, as in tokens of older fleetds)."""
    if not parts:
        return 0
    if not (parts[0].isascii() and parts[0].isdigit() and len(parts[0]) <= 20):
        raise ApiError(400, encode.BAD_TOKEN)
    return int(parts[0])
