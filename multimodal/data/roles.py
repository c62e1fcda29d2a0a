"""Which column of a manifest plays which role (text, image path, audio path, label, group, split), inferred
from the values, so that ``multimodal-train --data train.csv --label label`` needs no YAML.

Rules, in order, for every column but the label: a column named ``split`` whose values are split names
(train/validation/test and their aliases) holds the split; one named ``group``/``group_id``/``groups`` keeps
rows together; a column whose every value is a file name with an image extension (Pillow's) or an audio
extension (libsndfile's) holds paths, checked to exist relative to the manifest's folder; free text (three
words or more on average) is text; identifiers (every value distinct, no spaces), numbers and categories (few
distinct short values) are ignored. When a role has more than one candidate the inference refuses and names
the option that settles it (``--text-column`` ...). The label's values choose the task: text or at most
`MAX_CLASSES` distinct integers are classes (single_label), other numbers a regression target.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from multimodal.data.manifest import SPLIT_ALIASES, DataError, is_missing
from multimodal.data.media import resolve_path

MODALITIES = ("text", "image", "audio")
GROUP_NAMES = ("group", "group_id", "groups")
SPLIT_NAMES = ("split",)
MAX_CLASSES = 20  # integer labels with more distinct values are a regression target
TEXT_WORDS = 3.0  # mean words per value from which a column is free text
MAX_CHECKED_FILES = 200  # path cells whose files are looked up while inferring (the dataset checks every one)


@dataclass
class ColumnRole:
    """The role inferred (or given) for one column, and why."""

    column: str
    role: str  # text, image, audio, label, group, split or ignored
    reason: str


@dataclass
class ColumnInference:
    """The roles of a manifest's columns and the task its label implies."""

    source: str
    task: str  # single_label or regression
    task_reason: str
    roles: list[ColumnRole] = field(default_factory=list)

    def column(self, role: str) -> Optional[str]:
        """The column playing `role`, or None."""
        return next((r.column for r in self.roles if r.role == role), None)

    @property
    def modalities(self) -> list[str]:
        """The modalities a column was found for, in the order text, image, audio."""
        return [m for m in MODALITIES if self.column(m)]

    def data_config(self) -> dict[str, Any]:
        """The ``data`` config values the inference sets (every modality column, null where absent)."""
        values: dict[str, Any] = {f"{m}_column": self.column(m) for m in MODALITIES}
        values["label_column"] = self.column("label")
        for role in ("group", "split"):
            if self.column(role):
                values[f"{role}_column"] = self.column(role)
        return values

    def lines(self) -> list[str]:
        """The inference as printable lines, one per column."""
        width = max(len(r.column) for r in self.roles)
        out = [f"columns of {self.source}:"]
        out += [f"  {r.column:<{width}}  {r.role:<7}  {r.reason}" for r in self.roles]
        out.append(f"task: {self.task} ({self.task_reason})")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written next to the run's outputs)."""
        return asdict(self)


def _extensions() -> dict[str, str]:
    """File extension -> modality, from the decoders themselves (Pillow's and libsndfile's formats)."""
    import soundfile
    from PIL import Image

    table = {ext.lower(): "image" for ext in Image.registered_extensions()}
    table.update({f".{fmt.lower()}": "audio" for fmt in soundfile.available_formats()})
    return table


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def suggest(name: str, columns: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the column most like `name`, or ''."""
    folded = {c.casefold(): c for c in columns}
    hint = [folded[name.casefold()]] if name.casefold() in folded else difflib.get_close_matches(name, columns, n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def require_column(name: str, columns: Sequence[str], option: str, source: str) -> str:
    """`name` if it is a column; else a `DataError` naming the option, a did-you-mean and the columns."""
    if name not in columns:
        raise DataError(f"{option} {name!r} is not a column of {source}{suggest(name, columns)} "
                        f"(columns: {', '.join(columns)})")
    return name


def _media_role(column: str, values: list[Any], base_dir: str) -> Optional[tuple[str, str]]:
    """('image'|'audio', reason) when every value is a file name of one media kind; `DataError` for a mix or
    for paths of which none exists; None for anything else."""
    table = _extensions()
    kinds = [table.get(os.path.splitext(v)[1].lower()) if isinstance(v, str) else None for v in values]
    found = {k for k in kinds if k}
    if not found:
        return None
    share = sum(k is not None for k in kinds) / len(kinds)
    if len(found) > 1 or share < 1.0:
        if share < 0.5:
            return None  # text that mentions a file now and then
        raise DataError(f"column {column!r} mixes {' and '.join(sorted(found))} file names with other values "
                        f"({share:.0%} are file names); name its role with --image-column, --audio-column or "
                        "--text-column")
    kind = found.pop()
    checked = [v for v in values[:MAX_CHECKED_FILES]]
    exist = sum(os.path.isfile(resolve_path(v, base_dir)) for v in checked)
    if not exist:
        raise DataError(f"column {column!r} holds {kind} file names, but none of the first {len(checked)} exists "
                        f"relative to {base_dir} (e.g. {checked[0]!r}); paths in a manifest are relative to its folder")
    return kind, f"{kind} paths ({exist} of {len(checked)} checked exist)"


def _profile(column: str, values: list[Any], base_dir: str) -> tuple[str, str]:
    """(role or candidate kind, reason) for one non-label column from its non-missing values."""
    if not values:
        return "ignored", "empty"
    name = column.strip().casefold()
    if name in SPLIT_NAMES:
        names = {str(v).strip().casefold() for v in values}
        if names <= set(SPLIT_ALIASES):
            return "split", f"named so; values {sorted(names)}"
        return "ignored", f"named {column!r} but holds values other than split names ({sorted(names)[:5]})"
    if name in GROUP_NAMES:
        return "group", f"named so; {len(set(map(str, values)))} groups"
    media = _media_role(column, values, base_dir)
    if media is not None:
        return media
    distinct = len({str(v) for v in values})
    if all(_is_number(v) for v in values):
        return "ignored", f"numbers ({distinct} distinct); no encoder reads numeric columns"
    words = sum(len(str(v).split()) for v in values) / len(values)
    if words >= TEXT_WORDS:
        return "text", f"free text ({words:.1f} words on average, {distinct} distinct values)"
    if distinct == len(values) and not any(" " in str(v).strip() for v in values):
        return "ignored", "an identifier (every value distinct, no spaces); --text-column reads it as text"
    if distinct <= MAX_CLASSES and distinct < 0.5 * len(values):
        return "ignored", (f"a category ({distinct} distinct short values); --text-column reads it as text")
    return "text?", f"short text ({words:.1f} words on average, {distinct} distinct values)"


def infer_task(column: str, values: list[Any], given: Optional[str] = None) -> tuple[str, str]:
    """(task, reason) from the label values: classes for text or few distinct integers, else regression."""
    if given:
        return given, "given with --task"
    distinct = {str(v).strip() for v in values}
    if not values:
        raise DataError(f"label column {column!r} is empty in every row")
    if not all(_is_number(v) for v in values):
        return "single_label", f"{len(distinct)} distinct text labels"
    numbers = [float(v) for v in values]
    if all(n.is_integer() for n in numbers) and len(distinct) <= MAX_CLASSES:
        return "single_label", f"{len(distinct)} distinct integer labels, taken as classes (--task regression to fit them as numbers)"
    return "regression", (f"numeric with {len(distinct)} distinct values (--task single_label to treat them as classes)")


def infer_columns(rows: Sequence[dict], source: str, label: str, given: Optional[dict[str, Optional[str]]] = None,
                  task: Optional[str] = None) -> ColumnInference:
    """The role of every column of the manifest rows `rows` (read from `source`); `given` maps a role (text,
    image, audio, group) to a column the user named (or "none" to leave that modality out)."""
    if not rows:
        raise DataError(f"{source} has no rows")
    columns = list(rows[0].keys())
    base_dir = os.path.dirname(os.path.abspath(source))
    require_column(label, columns, "--label", source)
    given = {k: v for k, v in (given or {}).items() if v is not None}
    for role, col in given.items():
        if col != "none":
            require_column(col, columns, f"--{role}-column", source)
    taken = {col: role for role, col in given.items() if col != "none"}
    values = {c: [r.get(c) for r in rows if not is_missing(r.get(c))] for c in columns}
    roles = [ColumnRole(label, "label", "--label")]
    task_name, task_reason = infer_task(label, values[label], task)
    candidates: dict[str, list[ColumnRole]] = {}
    for col in columns:
        if col == label:
            continue
        if col in taken:
            roles.append(ColumnRole(col, taken[col], f"--{taken[col]}-column"))
            continue
        role, reason = _profile(col, values[col], base_dir)
        base = role.rstrip("?")
        if base in given:  # the user settled this role: every other candidate is left out
            why = "none" if given[base] == "none" else f"names {given[base]!r}"
            role, reason = "ignored", f"{reason}; --{base}-column {why}"
        entry = ColumnRole(col, role, reason)
        roles.append(entry)
        candidates.setdefault(role, []).append(entry)
    _settle(candidates, source)
    inference = ColumnInference(source, task_name, task_reason, roles)
    if not inference.modalities:
        raise DataError(f"no column of {source} looks like text, image paths or audio paths "
                        f"({'; '.join(f'{r.column}: {r.reason}' for r in roles if r.role == 'ignored')}); name one "
                        "with --text-column, --image-column or --audio-column")
    return inference


def _settle(candidates: dict[str, list[ColumnRole]], source: str) -> None:
    """Refuse a role with several candidate columns; promote short text when there is no free text."""
    weak = candidates.pop("text?", [])
    if "text" not in candidates and weak:
        candidates["text"] = weak
        for entry in weak:
            entry.role = "text"
    else:
        for entry in weak:
            entry.role, entry.reason = "ignored", f"{entry.reason}; a longer text column was found"
    for role in ("text", "image", "audio", "group"):  # a split column has one possible name
        found = candidates.get(role, [])
        if len(found) > 1:
            names = ", ".join(repr(e.column) for e in found)
            raise DataError(f"{source}: columns {names} could each be the {role} column; choose one with "
                            f"--{role}-column NAME (the others are then ignored)")
