"""Real development sets rebuilt from public GitHub snapshots: real recordings, real photos, human captions.

Each set is rebuilt from a snapshot of a public repository (a bare git directory, as the project's
repository-snapshot tool brings them: ``/work/.mirror/<owner>+<name>/repo``) into a cache folder outside the
repository: ``--root``, else ``$MULTIMODAL_DEVSETS``, else ``~/.cache/multimodal-devsets``. Nothing here is
committed; the data stays where it was built.

    # 1. bring the snapshots (once): fetch github:<repository> for each set below, e.g. with the search tool's
    #    `fetch`, or `git clone --mirror https://github.com/<repository> <mirror>/<owner>+<name>/repo`
    # 2. build
    PYTHONPATH=$PWD python benchmarks/devsets_real.py --list
    PYTHONPATH=$PWD python benchmarks/devsets_real.py urbansound speech_commands ...   # or no name: all

Snapshots are looked for under ``--mirror``, else ``$MULTIMODAL_MIRROR``, else ``/work/.mirror``; a missing one
stops the build with a line naming the repository to fetch. Every set writes ``<root>/<name>/manifest.csv``
(columns from text, image, audio, label, group, split; paths relative to the manifest), ``SOURCE.json``
(repository, commit, licence, citation, what was kept) and the shared ``<root>/INDEX.md``.

The sets and their sources are listed in `SOURCES` (``--list`` prints them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator

from benchmarks.devsets_io import SnapshotMissing, Source, cache_root, finish, mirror_root, open_snapshot
from benchmarks.devsets_sources import SOURCES


def iter_sources(names: list[str]) -> Iterator[tuple[str, Source]]:
    """(name, Source) for the requested names, refusing unknown ones with the list of known sets."""
    for name in names or list(SOURCES):
        if name not in SOURCES:
            raise SystemExit(f"unknown dev set {name!r}; known: {', '.join(SOURCES)}")
        yield name, SOURCES[name]


def build(name: str, root: str | None = None, mirror: str | None = None, force: bool = False) -> str:
    """Build (or reuse) real dev set `name`; returns its manifest path."""
    (name, source), = list(iter_sources([name]))
    folder = os.path.join(cache_root(root), name)
    manifest = os.path.join(folder, "manifest.csv")
    if os.path.exists(manifest) and not force:
        return manifest
    snapshot = open_snapshot(source, mirror_root(mirror))
    os.makedirs(folder, exist_ok=True)
    try:
        rows, notes = source.build(snapshot, folder)
    finally:
        snapshot.close()
    finish(folder, rows, source, name, notes)
    write_index(cache_root(root))
    return manifest


def write_index(root: str) -> str:
    """(Re)write <root>/INDEX.md from every built set's SOURCE.json."""
    lines = ["# Real development sets", "",
             "Built by `benchmarks/devsets_real.py` (see its docstring); one folder per set with manifest.csv "
             "(paths relative to it) and SOURCE.json.", "",
             "| set | rows | columns | splits | groups | classes | licence | source |", "|---|---|---|---|---|---|---|---|"]
    for name in SOURCES:
        path = os.path.join(root, name, "SOURCE.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            rec = json.load(f)
        s = rec["summary"]
        classes = ", ".join(s["classes"]) if len(s["classes"]) <= 25 else f"{len(s['classes'])} classes"
        splits = ", ".join(f"{k} {v}" for k, v in sorted(s["splits"].items()))
        lines.append(f"| `{name}` | {s['rows']} | {', '.join(s['columns'])} | {splits} | {s['groups']} | "
                     f"{classes} | {rec['licence']} | {rec['repository']} @ {rec['commit'][:10]} |")
    lines += ["", "Split rules (full descriptions and citations: each set's SOURCE.json):", ""]
    for name in SOURCES:
        path = os.path.join(root, name, "SOURCE.json")
        if os.path.exists(path):
            with open(path) as f:
                rec = json.load(f)
            lines.append(f"- `{name}`: {rec['description']}. {rec.get('kept', '')}")
    lines += ["", "Also here: `features/<set>/*.npz`, frozen features cached by benchmarks/features.py (keyed by the "
                  "manifest, encoder spec and options); `frontend_subset_500_0.csv` in the audio sets, the fixed "
                  "500-clip subsets of BENCHMARKS.md section 10."]
    built = {"+".join(SOURCES[n].modalities) for n in SOURCES if os.path.exists(os.path.join(root, n, "SOURCE.json"))}
    absent = [pair for pair in ("text+image", "text+audio") if pair not in built]
    if absent:
        lines += ["", f"No real paired {' or '.join(absent)} set is built here (what was searched: BENCHMARKS.md, "
                      "section \"Real development sets\")."]
    out = os.path.join(root, "INDEX.md")
    os.makedirs(root, exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the real dev sets from repository snapshots.")
    parser.add_argument("names", nargs="*", help="sets to build (default: all)")
    parser.add_argument("--list", action="store_true", help="list the sets and their sources, build nothing")
    parser.add_argument("--root", default=None, help="cache folder (default $MULTIMODAL_DEVSETS or "
                                                     "~/.cache/multimodal-devsets)")
    parser.add_argument("--mirror", default=None, help="snapshot folder (default $MULTIMODAL_MIRROR or /work/.mirror)")
    parser.add_argument("--force", action="store_true", help="rebuild sets that exist")
    args = parser.parse_args(argv)
    if args.list:
        for name, src in iter_sources(args.names):
            print(f"{name:18s} {'+'.join(src.modalities):12s} github:{src.repository} @ {src.commit[:10]}  "
                  f"[{src.licence}]  {src.description}")
        return 0
    failed = 0
    for name, _ in iter_sources(args.names):
        try:
            print(name, build(name, args.root, args.mirror, args.force), flush=True)
        except SnapshotMissing as err:
            print(f"error: dev set {name!r}: {err}", file=sys.stderr)
            failed += 1
    print("index", write_index(cache_root(args.root)))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
