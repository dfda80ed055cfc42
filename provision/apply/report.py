"""A plan as people and scripts read it: colored diff lines, a summary, JSON (pure)."""

from __future__ import annotations

from provision.apply.planner import Action, Change, Plan

SIGNS = {Action.CREATE: ("+", "green"), Action.REPLACE: ("~", "yellow"),
         Action.STATE: ("~", "cyan"), Action.DESTROY: ("-", "red")}


def _short(digest: str | None) -> str:
    return digest[:7] if digest else "-"


def describe(change: Change) -> str:
    """What happens to the unit, in words: `launched, 1a2b3c4`, `3f00aa1 → 9c2d4e0`, …"""
    where = f" on {change.machine[:8]}" if change.machine else ""
    if change.action is Action.CREATE:
        return f"{change.new_state.value}, {_short(change.new_hash)}"
    if change.action is Action.REPLACE:
        state = (f", {change.old_state.value} → {change.new_state.value}"
                 if change.old_state is not change.new_state else "")
        adopted = " (adopted: not created by apply)" if change.adopted else ""
        return f"{_short(change.old_hash)} → {_short(change.new_hash)}{state}{where}{adopted}"
    if change.action is Action.STATE:
        return f"{change.old_state.value} → {change.new_state.value}{where}"
    return f"{_short(change.old_hash)}, {change.old_state.value}{where}"


def lines(plan: Plan) -> list[tuple[str, str]]:
    """(rich style, text) per line; the caller prints them plain or colored."""
    rows: list[tuple[str, str]] = []
    width = max([len(c.name) for c in plan.changes] + [len(n) for n in plan.kept_back],
                default=0)
    for number, step in enumerate(plan.steps, 1):
        if step.rolling:
            rows.append(("bold", f"rolling replace of {step.rolling}, step {number}: "
                                 f"{', '.join(step.wait_for)} (the next waits until these "
                                 "are active and announced)"))
        for change in step.changes:
            sign, style = SIGNS[change.action]
            rows.append((style, f"{sign} {change.action.value:<8} {change.name:<{width}}  "
                                f"{describe(change)}"))
    for name in plan.kept_back:
        rows.append(("dim", f"  {'keep':<8} {name:<{width}}  no longer declared; "
                            "`--prune` destroys it"))
    rows.append(("bold", summary(plan)))
    return rows


def summary(plan: Plan) -> str:
    kept = (f" {len(plan.kept_back)} unit{'s' if len(plan.kept_back) != 1 else ''} no longer "
            "declared kept (`--prune` destroys them)." if plan.kept_back else "")
    if plan.empty:
        if kept:
            return "No changes to apply;" + kept
        return "No changes: the cluster matches its declaration."
    return (f"Plan: {plan.count(Action.CREATE)} to create, {plan.count(Action.REPLACE)} to "
            f"replace, {plan.count(Action.STATE)} to change state, "
            f"{plan.count(Action.DESTROY)} to destroy.{kept}")


def as_json(plan: Plan) -> dict:
    return {
        "changes": [{
            "action": c.action.value, "unit": c.name, "step": number,
            "rolling": step.rolling,
            "old_hash": c.old_hash, "new_hash": c.new_hash,
            "old_state": c.old_state.value if c.old_state else None,
            "new_state": c.new_state.value if c.new_state else None,
            "machine": c.machine, "adopted": c.adopted,
        } for number, step in enumerate(plan.steps, 1) for c in step.changes],
        "kept_back": list(plan.kept_back),
        "summary": {a.value: plan.count(a) for a in Action},
    }
