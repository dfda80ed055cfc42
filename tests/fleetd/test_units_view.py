"""The API's in-memory view of units, assignments and states (fleetd/registry/view.py), on a
real etcd: what a read costs, that it shows every write made before it (through the API or
anyone else, under the prefix or not), and that it reads anew when its watch is compacted
or silently gone.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid

import pytest

from fleetd.api import Api
from fleetd.api.encode import encode_token
from fleetd.api.errors import ApiError
from fleetd.api.handlers import answer
from fleetd.job import JobState
from fleetd.registry.etcd import Etcd, RegistryUnavailable
from fleetd.registry.registry import Registry, encode
from fleetd.registry.view import UnitsView
from fleetd.unit.unitfile import parse_unit_file
from tests.fleetd.test_api import keys_read_by, stored_cluster
from tests.support.etcd import wait_for

SLEEP = parse_unit_file("[Service]\nExecStart=/bin/sleep 100\n")


@pytest.fixture
def cluster(etcd_server):
    """(registry, view, api over the view, api reading etcd directly) of 300 stored units."""
    made = []

    def make(units: int = 300, catch_up_s: float = 1.0, idle_s: float = 60.0):
        registry = stored_cluster(etcd_server, units)
        view = UnitsView(registry, catch_up_s=catch_up_s, idle_s=idle_s)
        made.append(view)
        view.start()
        wait_for(lambda: view.live, 15, message="view built")
        return (registry, view, Api(registry, None, "m0", page_size=50, view=view),
                Api(registry, None, "m0", page_size=50))
    yield make
    for view in made:
        view.close()
        view.registry.etcd.close()


def all_pages(api: Api, route: str = "units") -> list[dict]:
    items, token = [], None
    while True:
        query = {"nextPageToken": [token]} if token else {}
        reply = api.list_units(query) if route == "units" else api.list_states(query)
        assert reply.status == 200, reply
        items += reply.body[route if route == "units" else "states"]
        token = reply.body.get("nextPageToken")
        if token is None:
            return items


@pytest.mark.parametrize("units", [100, 1000])
def test_a_page_and_one_unit_are_one_small_request_whatever_the_number_of_units(cluster,
                                                                                 units):
    """From the view, a page or one unit costs the revision read only (no key of the store
    moves): O(page) work in memory, O(1) for a unit; the later pages of a listing not even
    that (they are as fresh as its first)."""
    registry, view, api, _ = cluster(units)
    api.list_units({})  # the unit body, read once per fleetd
    keys, requests, first = keys_read_by(registry, lambda: api.list_units({}))
    assert first.status == 200 and len(first.body["units"]) == 50
    assert (keys, requests) == (0, 1)
    token = first.body["nextPageToken"]
    keys, requests, _ = keys_read_by(registry, lambda: api.list_units(
        {"nextPageToken": [token]}))
    assert (keys, requests) == (0, 0)
    keys, requests, one = keys_read_by(registry, lambda: api.get_unit("job@7.service"))
    assert one.status == 200 and one.body["machineID"] == "m1"
    assert (keys, requests) == (0, 1)
    keys, requests, states = keys_read_by(registry, lambda: api.list_states({}))
    assert len(states.body["states"]) == 50 and (keys, requests) == (0, 1)
    keys, requests, _ = keys_read_by(registry, lambda: api.list_states(
        {"nextPageToken": [states.body["nextPageToken"]]}))
    assert (keys, requests) == (0, 0)
    keys, requests, _ = keys_read_by(registry, lambda: api.list_states(
        {"unitName": ["job@7.service"]}))
    assert (keys, requests) == (0, 1)


def test_the_view_answers_exactly_what_etcd_holds(cluster):
    registry, view, api, direct = cluster(300)
    registry.etcd.delete(registry.keys.state("job@8.service", "m2"))
    registry.etcd.delete(registry.keys.assignment("m2", "job@8.service"))
    registry.create_job("glob.service", parse_unit_file(
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n"), JobState.LAUNCHED)
    registry.write_states("m1", 0, {"glob.service": ("h", _status(), True)})
    assert all_pages(api) == all_pages(direct)
    assert all_pages(api, "states") == all_pages(direct, "states")
    for query in ({"machineID": ["m1"]}, {"unitName": ["job@8.service"]}):
        assert api.list_states(query).body == direct.list_states(query).body
    for name in ("job@8.service", "job@9.service", "glob.service"):
        assert api.get_unit(name).body == direct.get_unit(name).body
        assert api.get_state(name, {}).body == direct.get_state(name, {}).body


def _status():
    from fleetd.status import UnitStatus

    return UnitStatus("loaded", "active", "running")


def test_a_read_shows_every_write_made_before_it(cluster, etcd_server):
    """Read-your-writes through the API, and writes of any other client: the read waits for
    the view to reach etcd's revision at the time of the read. Writes outside the prefix
    move the view too (it is never left waiting for its own keys to change)."""
    registry, view, api, _ = cluster(100, catch_up_s=30)
    other = Registry(Etcd([etcd_server.url]), registry.keys.prefix)
    try:
        for i in range(20):
            state = ("loaded", "launched")[i % 2]
            body = json.dumps({"desiredState": state}).encode()
            assert api.put_unit("job@5.service", body, {}).status == 204
            assert api.get_unit("job@5.service").body["desiredState"] == state
            name = f"new{i}-{uuid.uuid4().hex[:6]}.service"
            other.create_job(name, SLEEP, JobState.INACTIVE)
            assert api.get_unit(name).status == 200
            other.etcd.put(f"/elsewhere-{uuid.uuid4().hex[:6]}", "x")  # outside the prefix
            keys, requests, reply = keys_read_by(registry, lambda: api.list_units({}))
            assert (keys, requests) == (0, 1), "served by the view, not waited out"
            other.destroy_job(name)
            assert name not in {u["name"] for u in all_pages(api)}
        assert view.rebuilds == 1
    finally:
        other.etcd.close()


def test_a_listing_is_as_fresh_as_its_first_page(cluster, etcd_server):
    """A write made before a listing began shows on every page of it; a token naming a
    revision the view has not reached costs the page etcd's revision, as a first page;
    tokens without a revision (older fleetds) still work, and a bad one is refused."""
    registry, view, api, _ = cluster(100, catch_up_s=30)
    other = Registry(Etcd([etcd_server.url]), registry.keys.prefix)
    try:
        other.create_job("zz-before.service", SLEEP, JobState.INACTIVE)
        names = [u["name"] for u in all_pages(api)]
        assert names[-1] == "zz-before.service" and len(names) == 101
        first = api.list_units({})
        after = json.loads(base64.urlsafe_b64decode(
            first.body["nextPageToken"] + "==="))["after"]
        # A revision the view has not reached (here: none has, etcd is not there yet)
        ahead = encode_token("units", (after[0], str(int(after[1]) + 1000)))
        keys, requests, reply = keys_read_by(registry, lambda: api.list_units(
            {"nextPageToken": [ahead]}))
        assert reply.status == 200 and (keys, requests) == (0, 1)
        older = encode_token("units", (after[0],))
        assert api.list_units({"nextPageToken": [older]}).body["units"] == \
            reply.body["units"]
        for revision in ("-1", "²", "9" * 5000):
            bad = encode_token("units", (after[0], revision))
            with pytest.raises(ApiError) as refused:
                api.list_units({"nextPageToken": [bad]})
            assert refused.value.status == 400
    finally:
        other.etcd.close()


def test_a_compacted_watch_is_read_anew(cluster, etcd_server):
    """The stream ends while the view is behind; by the time it watches again from its last
    revision, that history is compacted: it reads everything again and goes on."""
    registry, view, api, _ = cluster(100)
    writer = Registry(Etcd([etcd_server.url]), registry.keys.prefix)
    try:
        with view._cond:  # the view applies nothing meanwhile
            view._cancel_watch()  # its events stop here, as when a stream breaks
            writer.create_job("after-break.service", SLEEP, JobState.LAUNCHED)
            writer.etcd.delete(writer.keys.job("job@3.service"))
            writer.etcd.client.compact(writer.etcd.revision())
            view._events.put(RegistryUnavailable("watch stream closed"))  # what it then says
        wait_for(lambda: view.rebuilds == 2 and view.live, 15, message="view read anew")
        keys, requests, reply = keys_read_by(registry, lambda: api.get_unit(
            "after-break.service"))
        assert reply.status == 200 and (keys, requests) == (1, 2)  # + its new unit body
        names = {u["name"] for u in all_pages(api)}
        assert "after-break.service" in names and "job@3.service" not in names
    finally:
        writer.etcd.close()


def test_a_watch_gone_without_a_word_is_read_anew_and_no_read_is_stale(cluster, etcd_server):
    registry, view, api, _ = cluster(100, catch_up_s=0.3)
    digest = registry.get_job("job@4.service").job.hash
    view._cancel_watch()  # no event, no error ever comes again
    registry.etcd.put(registry.keys.job("job@4.service"),
                      encode({"name": "job@4.service", "hash": digest, "desired": "inactive"}))
    assert api.get_unit("job@4.service").body["desiredState"] == "inactive"
    wait_for(lambda: view.rebuilds == 2 and view.live, 15, message="view read anew")
    keys, requests, reply = keys_read_by(registry, lambda: api.get_unit("job@4.service"))
    assert reply.body["desiredState"] == "inactive" and requests == 1


def test_a_state_change_is_one_guarded_write_and_lands_even_on_a_stale_view(cluster,
                                                                            etcd_server):
    """`fleetctl start` of many units is one PUT each: with the view, one request (the
    write, comparing the revision the view saw). A stale view costs a retry, never a lost
    or misplaced write: a view that says the unit is already in that state is checked."""
    registry, view, api, _ = cluster(100)
    api.get_unit("job@1.service")  # the unit body, read once per fleetd
    keys, requests, reply = keys_read_by(registry, lambda: api.put_unit(
        "job@7.service", b'{"desiredState": "loaded"}', {}))
    assert reply.status == 204 and (keys, requests) == (0, 1)
    assert registry.get_job("job@7.service").job.desired is JobState.LOADED
    wait_for(lambda: view.guess("job@7.service").job.desired is JobState.LOADED, 15,
             message="the view saw it")
    view._cancel_watch()  # from here on the view is stale
    other = Registry(Etcd([etcd_server.url]), registry.keys.prefix)
    try:
        other.set_desired("job@7.service", JobState.INACTIVE)
        other.set_desired("job@8.service", JobState.INACTIVE)
        for name, state in (("job@7.service", "loaded"),  # the view thinks it is so
                            ("job@8.service", "loaded")):  # the view's revision is old
            reply = api.put_unit(name, json.dumps({"desiredState": state}).encode(), {})
            assert reply.status == 204
            assert other.get_job(name).job.desired.value == state, name
        other.destroy_job("job@9.service")
        reply = answer(lambda: api.put_unit("job@9.service", b'{"desiredState": "loaded"}',
                                            {}))
        assert reply.status == 409 and "does not exist" in reply.body["error"]["message"]
    finally:
        other.etcd.close()


def test_an_unread_view_stops_following_etcd_and_the_next_read_starts_it_again(
        cluster):
    """Following every write costs each machine CPU (a 1,000-unit apply is thousands of
    events): a view nobody reads lets go of its watch and its memory; the read that wakes
    it is answered from etcd, and the view serves the ones after it, writes made while it
    slept included."""
    registry, view, api, direct = cluster(100, idle_s=0.5)
    wait_for(lambda: not view.following, 15, message="the unread view retired")
    assert not view.live and view.revision == 0
    registry.set_desired("job@7.service", JobState.INACTIVE)
    first = api.get_unit("job@7.service")  # starts the view, answered from etcd
    assert first.status == 200 and first.body["desiredState"] == "inactive"
    wait_for(lambda: view.live, 15, message="the view following again")
    keys, requests, again = keys_read_by(registry, lambda: api.get_unit("job@7.service"))
    assert again.body == first.body and (keys, requests) == (0, 1)
    assert all_pages(api) == all_pages(direct)


def test_the_listing_that_starts_the_view_is_read_before_its_snapshot(etcd_server):
    """Read at the same time, the first page and the snapshot (the same keys) took 3x as
    long: the view reads its snapshot once the listing that woke it has been served."""
    registry = stored_cluster(etcd_server, 100)
    view = UnitsView(registry, catch_up_s=30.0)
    api = Api(registry, None, "m0", page_size=50, view=view)
    served, snapshots = [], []
    snapshot = registry.etcd.snapshot

    def recorded(*args, **kwargs):
        snapshots.append(list(served))
        return snapshot(*args, **kwargs)

    registry.etcd.snapshot = recorded
    direct = registry.units_page

    def slow_direct(*args, **kwargs):
        page = direct(*args, **kwargs)
        wait_for(lambda: view.following, 15, message="the view woken")
        return page

    registry.units_page = slow_direct
    try:
        first = api.list_units({})
        served.append("first")
        assert first.status == 200 and len(first.body["units"]) == 50
        wait_for(lambda: view.live, 15, message="the view following")
        assert snapshots and snapshots[0] == ["first"], "the snapshot came after the listing"
    finally:
        view.close()
        registry.etcd.close()


def test_a_listing_asked_for_while_the_snapshot_is_read_waits_for_it(etcd_server):
    """Rather than read the same keys from etcd at the same time, a page asked for while
    the view reads its snapshot is served from the view once it is built."""
    registry = stored_cluster(etcd_server, 100)
    view = UnitsView(registry, catch_up_s=30.0)
    api = Api(registry, None, "m0", page_size=50, view=view)
    reading, release = threading.Event(), threading.Event()
    snapshot = registry.etcd.snapshot

    def held(*args, **kwargs):
        reading.set()
        release.wait(30)
        return snapshot(*args, **kwargs)

    registry.etcd.snapshot = held
    direct_reads = []
    direct = registry.units_page
    registry.units_page = lambda *a, **k: direct_reads.append(a) or direct(*a, **k)
    replies = []
    try:
        view.start()
        assert reading.wait(15), "the snapshot began"
        reader = threading.Thread(target=lambda: replies.append(api.list_units({})))
        reader.start()
        # Until the reader waits on the view (or, wrongly, has read etcd itself).
        wait_for(lambda: direct_reads or view._cond._waiters, 15, message="the reader waits")
        release.set()
        reader.join(30)
        assert replies and replies[0].status == 200 and len(replies[0].body["units"]) == 50
        assert direct_reads == [], "the page was read from etcd beside the snapshot"
    finally:
        release.set()
        view.close()
        registry.etcd.close()
