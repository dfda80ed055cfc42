"""Feasibility: can machine M run job J right now, and if not, why not.

Each [X-Fleet] constraint is one small checker, `(traits, machine_id) -> Rejection | None`
(Nomad's feasibility checkers). Checkers never walk the cluster: they read indexes that the
scheduler's plan overlay keeps up to date as it unschedules and places.

- `Traits`: a job's constraints, pre-digested once per pass (globs classified, template key).
- `MachineClasses`: machines grouped by identical metadata ("computed classes"). A
  MachineMetadata verdict is worked out once per (constraint, class) and memoised, and the
  machines matching a constraint are found through an inverted (key, value) -> classes index.
- `Occupancy`: per machine, the units planned there, indexed so each Conflicts check costs
  O(1) for the two common glob shapes: a literal unit name and the template glob
  `prefix@*.suffix` (indexed by the (prefix, suffix) "template key" of each resident). Any
  other glob (`*.service`, `web@1?.service`) falls back to fnmatch over the residents of that
  one machine, never over the cluster.

Conflicts are two-way: J cannot join a machine running a unit that one of J's globs matches
("forward"), nor one running a unit whose own Conflicts match J's name ("reverse").
Replaces=X is treated as a two-way Conflicts=X: the replacing unit and the replaced one are
never placed on the same machine (fleet moves the replaced unit away; here the scheduler just
keeps them apart, and the replaced unit stays where it is).

`Rejection.shared` says the verdict depends only on the job's signature (metadata, globs,
template key), not on its exact name: during placement machines only gain units, so a shared
rejection stays true for every later job with that signature and the load index may drop the
machine from that signature's candidate heap for good.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from fleetd.job import Job
from fleetd.machine import Machine
from fleetd.unit.names import is_template_name
from fleetd.unit.xfleet import FrozenMetadata, matches_metadata

TemplateKey = tuple[str, str]
_GLOB_META = frozenset("*?[")


def short(machine_id: str) -> str:
    return machine_id[:8]


def template_key(name: str) -> TemplateKey | None:
    """`("web", "service")` for `web@1.service`: text before the first '@', after the last '.'."""
    at = name.find("@")
    dot = name.rfind(".")
    if at < 0 or dot < 0:
        return None
    return name[:at], name[dot + 1:]


def glob_template_key(pattern: str) -> TemplateKey | None:
    """The template key every name matching `pattern` has, when the pattern is `X@*.Y`.

    Exact when X has no '@' and Y has neither '.' nor '@' (and neither has glob characters):
    then a name matches iff it starts with `X@` and ends with `.Y`, i.e. iff its first '@'
    closes X and its last '.' opens Y.
    """
    head, star, tail = pattern.partition("*")
    if not star or not _GLOB_META.isdisjoint(head + tail):
        return None
    if not head.endswith("@") or "@" in head[:-1]:
        return None
    if not tail.startswith(".") or "." in tail[1:] or "@" in tail:
        return None
    return head[:-1], tail[1:]


def format_metadata(constraint: Mapping[str, Iterable[str]]) -> str:
    return ", ".join(f"{key}={'|'.join(sorted(values))}" for key, values in constraint.items())


Classified = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, TemplateKey], ...],
                   tuple[tuple[str, str], ...], tuple[str, ...]]


def classify_globs(conflicts: tuple[str, ...], replaces: tuple[str, ...]) -> Classified:
    """(literals, templates, others, labels): each glob with its label, by shape."""
    literals: list[tuple[str, str]] = []
    templates: list[tuple[str, TemplateKey]] = []
    others: list[tuple[str, str]] = []
    globs = [(f"Conflicts={g}", g) for g in conflicts]
    globs += [(f"Replaces={n}", n) for n in replaces]  # unit names: always literal
    for label, pattern in globs:
        if _GLOB_META.isdisjoint(pattern):
            literals.append((label, pattern))
        elif (key := glob_template_key(pattern)) is not None:
            templates.append((label, key))
        else:
            others.append((label, pattern))
    return tuple(literals), tuple(templates), tuple(others), tuple(lb for lb, _ in globs)


class TraitsCache:
    """Metadata constraints interned to small ints (0 = none), globs classified once per
    distinct (Conflicts, Replaces) pair; instances of one template share both. Made for one
    pass, or kept across passes (the engine's cache does) to digest each job once for as
    long as its Job object lives: the same object always gets the same Traits (a job
    changes only by being replaced), so a pass given a kept cache plans exactly what it
    would plan with a fresh one. Interned ids only ever grow, so they stay stable."""

    def __init__(self) -> None:
        self.metadata_ids: dict[FrozenMetadata, int] = {}
        self.metadata_texts: list[str] = [""]
        self.globs: dict[tuple[tuple[str, ...], tuple[str, ...]], Classified] = {}
        self.signatures: dict[tuple, int] = {}
        # name -> (the Job digested, its Traits; None: global or a template, never placed)
        self._digested: dict[str, tuple[Job, Traits | None]] = {}

    def traits_of(self, jobs: Mapping[str, Job]) -> dict[str, Traits]:
        """The Traits of every job the scheduler places (neither global nor a template),
        digesting only jobs not seen before as this very object. Remembers just `jobs`."""
        seen = self._digested
        digested: dict[str, tuple[Job, Traits | None]] = {}
        found: dict[str, Traits] = {}
        for name, job in jobs.items():
            entry = seen.get(name)
            if entry is None or entry[0] is not job:
                entry = (job, None if job.options.global_ or is_template_name(name)
                         else Traits(job, self))
            digested[name] = entry
            if entry[1] is not None:
                found[name] = entry[1]
        self._digested = digested
        return found

    def metadata_id(self, constraint: FrozenMetadata) -> int:
        if not constraint:
            return 0
        found = self.metadata_ids.get(constraint)
        if found is None:
            found = self.metadata_ids[constraint] = len(self.metadata_texts)
            self.metadata_texts.append(format_metadata(constraint))
        return found

    def signature_id(self, signature: tuple) -> int:
        """A small int per distinct signature: the scheduler looks one up per placement, and
        a nested tuple is hashed anew each time."""
        found = self.signatures.get(signature)
        if found is None:
            found = self.signatures[signature] = len(self.signatures) + 1
        return found

    def classified(self, conflicts: tuple[str, ...], replaces: tuple[str, ...]) -> Classified:
        if not conflicts and not replaces:
            return (), (), (), ()
        found = self.globs.get((conflicts, replaces))
        if found is None:
            found = self.globs[(conflicts, replaces)] = classify_globs(conflicts, replaces)
        return found


class Traits:
    """One job's constraints, digested once per pass."""

    __slots__ = ("name", "key", "literals", "templates", "others", "machine_id", "machine_of",
                 "options", "metadata", "metadata_id", "metadata_text", "signature",
                 "has_globs")

    def __init__(self, job: Job, cache: TraitsCache) -> None:
        self.options = opts = job.options
        self.name = job.name
        self.key = template_key(job.name)
        self.machine_id = opts.machine_id
        self.machine_of = tuple(dict.fromkeys(opts.machine_of)) if opts.machine_of else ()
        self.metadata: FrozenMetadata = opts.machine_metadata
        self.metadata_id = cache.metadata_id(self.metadata)
        self.metadata_text = cache.metadata_texts[self.metadata_id]  # "region=eu|us, disk=ssd"
        self.literals, self.templates, self.others, labels = cache.classified(
            tuple(opts.conflicts), tuple(opts.replaces))
        self.has_globs = bool(labels)
        # Jobs with equal signatures get equal "shared" verdicts on every machine.
        self.signature = (cache.signature_id((self.metadata_id, labels, self.key))
                          if labels or self.key is not None else None)


@dataclass(frozen=True)
class Rejection:
    constraint: str       # the constraint that failed, e.g. "Conflicts=web@*.service"
    reason: str           # why, on this machine, e.g. "web@2.service runs there"
    shared: bool = False  # same verdict for every job with the same Traits.signature
    other: str | None = None  # the unit on the machine that caused it, if any


Checker = Callable[[Traits, str], "Rejection | None"]


class MachineClasses:
    """Machines grouped by identical metadata; MachineMetadata verdicts memoised per class."""

    def __init__(self, machines: Mapping[str, Machine]) -> None:
        ids: dict[tuple[tuple[str, str], ...], int] = {}
        self.class_of: dict[str, int] = {}
        self.meta: list[Mapping[str, str]] = []
        self.members: list[list[str]] = []
        self._posting: dict[tuple[str, str], list[int]] = {}
        for mid in sorted(machines):
            metadata = machines[mid].metadata
            shape = tuple(sorted(metadata.items()))
            cid = ids.get(shape)
            if cid is None:
                cid = ids[shape] = len(self.meta)
                self.meta.append(dict(shape))
                self.members.append([])
                for pair in shape:
                    self._posting.setdefault(pair, []).append(cid)
            self.class_of[mid] = cid
            self.members[cid].append(mid)
        self._verdicts: dict[tuple[int, int], bool] = {}
        self.evaluations = 0  # metadata verdicts computed, for the scaling tests

    def allows(self, t: Traits, machine_id: str) -> bool:
        return not t.metadata_id or self._allows(t, self.class_of[machine_id])

    def _allows(self, t: Traits, cid: int) -> bool:
        verdict = self._verdicts.get((t.metadata_id, cid))
        if verdict is None:
            self.evaluations += 1
            verdict = matches_metadata(t.options, self.meta[cid])
            self._verdicts[(t.metadata_id, cid)] = verdict
        return verdict

    def machines_matching(self, t: Traits) -> list[str]:
        """Every machine whose metadata satisfies the job's, without visiting the others."""
        constraint = t.metadata
        if not t.metadata_id:
            return list(self.class_of)
        best: set[int] | None = None
        for key, values in constraint.items():
            cids = {cid for value in values for cid in self._posting.get((key, value), ())}
            if best is None or len(cids) < len(best):
                best = cids
        return [mid for cid in sorted(best or ()) if self._allows(t, cid)
                for mid in self.members[cid]]


class Occupancy:
    """The units planned on one machine, indexed for O(1) conflict checks."""

    __slots__ = ("names", "by_key", "rev_literal", "rev_template", "rev_other", "excludes")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.by_key: dict[TemplateKey, set[str]] = {}      # template key -> residents
        self.rev_literal: dict[str, set[str]] = {}         # name a resident excludes -> residents
        self.rev_template: dict[TemplateKey, set[str]] = {}  # key a resident excludes -> residents
        self.rev_other: set[str] = set()                   # residents with other globs
        self.excludes = False                              # does any resident have globs?

    def add(self, t: Traits) -> None:
        self.names.add(t.name)
        if t.key is not None:
            residents = self.by_key.get(t.key)
            if residents is None:
                residents = self.by_key[t.key] = set()
            residents.add(t.name)
        if not t.has_globs:  # (literals, templates and others are all empty)
            return
        for _, name in t.literals:
            self.rev_literal.setdefault(name, set()).add(t.name)
        for _, key in t.templates:
            self.rev_template.setdefault(key, set()).add(t.name)
        if t.others:
            self.rev_other.add(t.name)
        self.excludes = True


class MachineIDCheck:
    """MachineID=X: only the machine whose full or short (8-character) id is X."""

    name = "MachineID"

    def __call__(self, t: Traits, machine_id: str) -> Rejection | None:
        want = t.machine_id
        if want is None or machine_id == want or short(machine_id) == want:
            return None
        return Rejection(f"MachineID={want}",
                         f"MachineID={want} does not name machine {short(machine_id)}", True)


class MachineOfCheck:
    """MachineOf=U: only the machine where U is (planned to be) scheduled."""

    name = "MachineOf"

    def __init__(self, location: Mapping[str, str], known: Mapping[str, object]) -> None:
        self.location = location
        self.known = known

    def __call__(self, t: Traits, machine_id: str) -> Rejection | None:
        for target in t.machine_of:
            where = self.location.get(target)
            if where == machine_id:
                continue
            label = f"MachineOf={target}"
            if target not in self.known:
                return Rejection(label, f"MachineOf names unknown unit {target}", other=target)
            if where is None:
                return Rejection(label, f"MachineOf={target} but {target} is not scheduled",
                                 other=target)
            return Rejection(label, f"MachineOf={target} but {target} runs on machine "
                                    f"{short(where)}", other=target)
        return None


class MetadataCheck:
    """MachineMetadata: every key must match, the values of one key are alternatives."""

    name = "MachineMetadata"

    def __init__(self, classes: MachineClasses) -> None:
        self.classes = classes

    def __call__(self, t: Traits, machine_id: str) -> Rejection | None:
        if self.classes.allows(t, machine_id):
            return None
        text = t.metadata_text
        return Rejection(f"MachineMetadata={text}",
                         f"machine {short(machine_id)} does not have metadata {text}", True)


class ConflictsCheck:
    """Conflicts (and Replaces), both directions, against the candidate's residents only."""

    name = "Conflicts"

    def __init__(self, occupancy: Mapping[str, Occupancy], traits: Mapping[str, Traits]) -> None:
        self.occupancy = occupancy
        self.traits = traits

    def __call__(self, t: Traits, machine_id: str) -> Rejection | None:
        occ = self.occupancy.get(machine_id)
        if occ is None or not (t.has_globs or occ.excludes):
            return None
        # Forward: this job's globs against the residents (shared: the name plays no part).
        # `t` itself is never a resident: only uncommitted units are checked.
        for label, name in t.literals:
            if name in occ.names:
                return self._forward(label, name)
        for label, key in t.templates:
            if residents := occ.by_key.get(key):
                return self._forward(label, min(residents))
        for label, pattern in t.others:
            hit = min((n for n in occ.names if fnmatchcase(n, pattern)), default=None)
            if hit is not None:
                return self._forward(label, hit)
        # Reverse: residents whose globs match this job's name.
        if t.key is not None and (owners := occ.rev_template.get(t.key)):
            owner = min(owners)
            label = next(lb for lb, k in self.traits[owner].templates if k == t.key)
            return self._reverse(label, owner, shared=True)
        if owners := occ.rev_literal.get(t.name):
            owner = min(owners)
            label = next(lb for lb, n in self.traits[owner].literals if n == t.name)
            return self._reverse(label, owner, shared=False)
        if occ.rev_other:
            hits = sorted((owner, label) for owner in occ.rev_other
                          for label, pattern in self.traits[owner].others
                          if fnmatchcase(t.name, pattern))
            if hits:
                return self._reverse(hits[0][1], hits[0][0], shared=False)
        return None

    @staticmethod
    def _forward(label: str, other: str) -> Rejection:
        return Rejection(label, f"{other} runs there ({label})", True, other)

    @staticmethod
    def _reverse(label: str, owner: str, shared: bool) -> Rejection:
        return Rejection(f"{label} of units running there",
                         f"{owner} runs there with {label}", shared, owner)


class Feasibility:
    """Runs checkers in order (cheap first) and counts every invocation."""

    def __init__(self) -> None:
        self.checks = 0

    def first_rejection(self, checkers: Iterable[Checker], t: Traits,
                        machine_id: str) -> Rejection | None:
        for check in checkers:
            self.checks += 1
            rejection = check(t, machine_id)
            if rejection is not None:
                return rejection
        return None
