"""The gallery's rows and the next image to review.

state: "not predicted" (the active model has not predicted it), "predicted", "corrected" (a correction is saved),
"approved". present: the attributes found, from the saved correction where there is one, else from the prediction;
corrected: the attributes with a saved correction; draft: whether unsaved edits wait.

Sorts: "name"; "uncertainty" (most uncertain first: `tatl select`'s uncertainty score, as
tatl.serving.predictions computes it; unpredicted last); "state" (in the order above, then by name). The next
image to review is the most uncertain predicted image nobody corrected or approved, else an unpredicted one, else
a corrected one not approved.
"""

from __future__ import annotations

from tatl.errors import DataError
from tatl.serving import predictions
from tatl.serving.store import Store

STATES = ("not predicted", "predicted", "corrected", "approved")
SORTS = ("name", "uncertainty", "state")


def row(store: Store, model: str, image_id: str, corrected: list[str], drafted: bool = False) -> dict:
    record = predictions.record(store.folder, model, image_id)
    state = store.state(image_id)
    name = ("approved" if state.get("approved") else "corrected" if corrected
            else "predicted" if record is not None else "not predicted")
    predicted = {a: d["present"] for a, d in (record or {}).get("attributes", {}).items()}
    saved = state.get("present", {})
    found = predicted | {a: saved.get(a, True) for a in corrected}  # a state without "present": an older save
    return {"id": image_id, "state": name, "present": [a for a, on in found.items() if on], "corrected": corrected,
            "draft": drafted, "uncertainty": None if record is None else record.get("uncertainty"),
            "version": state["version"]}


def gallery(store: Store, model: str, sort: str = "name") -> list[dict]:
    if sort not in SORTS:
        raise DataError(f"sort {sort!r}: use {', '.join(SORTS)}")
    corrected, drafted = store.corrected_index(), store.drafted()
    rows = [row(store, model, image_id, corrected.get(image_id, []), image_id in drafted)
            for image_id in store.image_ids()]
    if sort == "uncertainty":
        rows.sort(key=lambda r: (r["uncertainty"] is None, -(r["uncertainty"] or 0.0), r["id"]))
    elif sort == "state":
        rows.sort(key=lambda r: (STATES.index(r["state"]), r["id"]))
    return rows


def next_image(store: Store, model: str, after: str | None = None) -> str | None:
    rows = [r for r in gallery(store, model, "uncertainty") if r["id"] != after]
    for state in ("predicted", "not predicted", "corrected"):
        for r in rows:
            if r["state"] == state:
                return r["id"]
    return None
