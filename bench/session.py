"""The commit record and the archive of a GPU session (standard library only: runs with any python3).

    python3 -m bench.session prepare              # here, before the device call: writes bench/.session_commit
    python3 -m bench.session verify               # prints the record and whether the tree still matches it
    python3 -m bench.session pack SRC_DIR TAR_GZ  # (on the device) SRC_DIR -> TAR_GZ, atomically
    python3 -m bench.session summary WORK_DIR     # (on the device) markdown summary of a phase's folder
    python3 -m bench.session unpack TAR_GZ [DEST] # here: extract into bench/results/<archive name>/

The device machine gets a copy of the working tree without ``.git``, so the commit is
recorded before the call, in ``bench/.session_commit`` (JSON, untracked and not ignored: it
travels with the tree). Besides the commit and the dirty flag it holds a SHA-256 over the
contents of every file that travels (tracked and untracked-not-ignored), so the device side
can tell whether the tree it runs is the one that was recorded (``tree_matches``): results
are tagged with the commit only when it is.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join("bench", ".session_commit")


def _git(args: List[str], repo: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, cwd=repo)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def tree_sha256(repo: str, files: List[str]) -> str:
    """SHA-256 over (path, content SHA-256) of ``files`` as they are on disk ('-' for a missing file)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        path = os.path.join(repo, rel)
        if os.path.islink(path):
            digest = "link:" + os.readlink(path)
        elif os.path.isfile(path):
            fh = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    fh.update(block)
            digest = fh.hexdigest()
        else:
            digest = "-"
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def prepare(repo: str = REPO) -> Dict[str, object]:
    """Write bench/.session_commit for the tree as it is now; returns the record."""
    commit = _git(["rev-parse", "HEAD"], repo)
    if commit is None:
        raise SystemExit("bench.session prepare: not a git checkout (run it where .git is, before the device call)")
    tracked = [f for f in (_git(["ls-files", "-z"], repo) or "").split("\0") if f]
    untracked = [f for f in (_git(["ls-files", "-z", "--others", "--exclude-standard"], repo) or "").split("\0")
                 if f and f != RECORD]
    modified = [ln[3:] for ln in (_git(["status", "--porcelain", "--untracked-files=no"], repo) or "").splitlines()
                if ln.strip()]
    files = sorted(set(tracked) | set(untracked))
    rec = {
        "commit": commit.strip(),
        "dirty": bool(modified or untracked),
        "modified": modified,
        "untracked": untracked,
        "branch": (_git(["rev-parse", "--abbrev-ref", "HEAD"], repo) or "").strip() or None,
        "prepared_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "tree_sha256": tree_sha256(repo, files),
    }
    with open(os.path.join(repo, RECORD), "w") as f:
        json.dump(rec, f, indent=1)
    return rec


def read_record(repo: str = REPO, verify: bool = True) -> Optional[Dict[str, object]]:
    """The prepared record (without the file list), with ``tree_matches`` when ``verify``; None if absent."""
    path = os.path.join(repo, RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rec = json.load(f)
    files = rec.pop("files", [])
    if verify:
        rec["tree_matches"] = tree_sha256(repo, files) == rec.get("tree_sha256")
    return rec


def commit_info(repo: str = REPO) -> Dict[str, object]:
    """git_commit / short / dirty of the tree: from git where .git is, else from the prepared record.

    A record whose tree no longer matches is reported as dirty (the commit is then only the base)."""
    commit = _git(["rev-parse", "HEAD"], repo)
    if commit is not None:
        status = _git(["status", "--porcelain", "--untracked-files=no"], repo)
        return {"commit": commit.strip(), "short_commit": commit.strip()[:8],
                "dirty": bool(status.strip()) if status is not None else None,
                "branch": (_git(["rev-parse", "--abbrev-ref", "HEAD"], repo) or "").strip() or None,
                "source": "git"}
    rec = read_record(repo)
    if rec is None:
        return {"commit": None, "short_commit": "unknown-commit", "dirty": None, "branch": None,
                "source": f"none: no .git and no {RECORD} (run `bash bench/gpu_session.sh prepare` before the call)"}
    return {"commit": rec["commit"], "short_commit": str(rec["commit"])[:8],
            "dirty": bool(rec.get("dirty")) or not rec.get("tree_matches", False),
            "branch": rec.get("branch"), "source": RECORD, "tree_matches": rec.get("tree_matches"),
            "prepared_at": rec.get("prepared_at")}


def pack(src_dir: str, tar_path: str) -> str:
    """Everything under ``src_dir`` into ``tar_path`` (gzip), written to a temp name then renamed, so
    a kill mid-way leaves the previous archive intact. Packs of one ``src_dir`` are serialised (the
    session's background packer and its steps pack the same folder)."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(tar_path)), exist_ok=True)
    tmp = f"{tar_path}.part{os.getpid()}"
    lock = os.open(src_dir, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(src_dir, arcname=os.path.basename(os.path.normpath(tar_path)).split(".tar")[0])
            os.replace(tmp, tar_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        os.close(lock)
    return tar_path


def _rows(path: str) -> List[Dict[str, object]]:
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a kill
                pass
    return out


def summarize(work_dir: str) -> str:
    """Markdown summary of a phase's folder: steps (rc, seconds, limit), the test tally, and the
    bench rows by section and status, with the key figures of the table rows."""
    lines = [f"# GPU session phase `{os.path.basename(os.path.normpath(work_dir))}`", ""]
    cpath = os.path.join(work_dir, "commit.json")
    if os.path.isfile(cpath):
        with open(cpath) as f:
            c = json.load(f)
        lines.append(f"commit {c.get('commit')} dirty={c.get('dirty')} tree_matches={c.get('tree_matches')} "
                     f"(source: {c.get('source')})")
        lines.append("")
    spath = os.path.join(work_dir, "steps.tsv")
    failed_steps = []
    if os.path.isfile(spath):
        lines += ["| step | rc | seconds | limit s | note |", "|---|---|---|---|---|"]
        with open(spath) as f:
            for ln in f:
                parts = (ln.rstrip("\n").split("\t") + [""] * 5)[:5]
                lines.append("| " + " | ".join(parts) + " |")
                if parts[1] not in ("0", "-", "") and not parts[0].startswith("phase "):
                    failed_steps.append(parts[0])
        lines.append("")
    for name in failed_steps:  # the end of a failed step's log, so the command's output shows why
        log = os.path.join(work_dir, f"{name}.log")
        if os.path.isfile(log):
            with open(log, errors="replace") as f:
                tail = f.read().splitlines()[-25:]
            lines += [f"end of {name}.log:", "```"] + [ln[:240] for ln in tail] + ["```", ""]
    for name in sorted(os.listdir(work_dir)):
        if name.startswith("tests") and name.endswith(".log"):
            with open(os.path.join(work_dir, name), errors="replace") as f:
                tail = [ln.strip() for ln in f if ln.strip()]
            tally = next((ln for ln in reversed(tail) if (" passed" in ln or " failed" in ln or " error" in ln
                                                          or "deselected" in ln or "collected" in ln)), None)
            failed = [ln for ln in tail if ln.startswith(("FAILED", "ERROR"))][:15]
            lines.append(f"{name}: {tally or (tail[-1] if tail else 'empty')}")
            lines += [f"    {ln[:200]}" for ln in failed]
    rows = []
    for root, _, files in os.walk(work_dir):
        for fn in sorted(files):
            if fn.endswith(".rows.jsonl"):
                rows += _rows(os.path.join(root, fn))
    if rows:
        from collections import Counter

        tally = Counter((str(r.get("section")), str(r.get("status"))) for r in rows)
        lines += ["", "bench rows: " + ", ".join(f"{k[0]} {k[1]}: {v}" for k, v in sorted(tally.items())), ""]
        lines += ["| section | what | pass/mode | impl | status | median ms | figures | note |",
                  "|---|---|---|---|---|---|---|---|"]
        labels = (("speedup_vs_eager", "{:.2f}x eager speed"), ("ratio_vs_cudnn", "{:.2f}x cuDNN time"),
                  ("ratio_vs_roofline", "{:.2f}x roofline time"), ("mfu", "MFU {:.3f}"),
                  ("peak_mem_bytes", "{:.3g} B peak"), ("tflops", "{:.1f} TFLOP/s"), ("gbs", "{:.0f} GB/s"))
        for r in rows:
            what = r.get("what") or (f"{r.get('model')} b{r.get('batch')}" if r.get("model") else r.get("shape_label"))
            if r.get("route") not in (None, "fused"):  # a layer row timed on its pass route
                what = f"{what} [{r['route']}]"
            figs = ", ".join(fmt.format(r[k]) for k, fmt in labels if isinstance(r.get(k), (int, float)))
            med = r.get("median_ms")
            lines.append(f"| {r.get('section')} | {what} | {r.get('pass') or r.get('mode') or ''} | "
                         f"{r.get('impl') or ''} | {r.get('status')} | {'' if med is None else f'{med:.4g}'} | "
                         f"{figs} | {str(r.get('reason') or '')[:80]} |")
    return "\n".join(lines) + "\n"


def unpack(tar_path: str, dest: Optional[str] = None) -> str:
    """Extract a session archive into ``dest`` (default bench/results/); returns the folder it made."""
    dest = dest or os.path.join(REPO, "bench", "results")
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(tar_path, "r:gz") as tar:
        names = tar.getnames()
        for n in names:  # nothing may land outside dest
            if n.startswith("/") or ".." in n.split("/"):
                raise SystemExit(f"bench.session unpack: refusing member {n!r}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: no links, devices or odd modes
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    top = sorted({n.split("/")[0] for n in names})
    return os.path.join(dest, top[0]) if len(top) == 1 else dest


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.session", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    sub.add_parser("verify")
    sp = sub.add_parser("pack")
    sp.add_argument("src_dir")
    sp.add_argument("tar_path")
    ss = sub.add_parser("summary")
    ss.add_argument("work_dir")
    ss.add_argument("--out", action="append", default=[], help="also write the summary to this file")
    su = sub.add_parser("unpack")
    su.add_argument("tar_path")
    su.add_argument("dest", nargs="?")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        rec = prepare()
        print(f"{RECORD}: commit {rec['commit']} dirty={rec['dirty']} ({len(rec['files'])} files, "
              f"tree {rec['tree_sha256'][:12]})")
        if rec["dirty"]:
            print(f"  modified: {rec['modified'][:10]}  untracked: {rec['untracked'][:10]}")
    elif a.cmd == "verify":
        print(json.dumps(commit_info(), indent=1))
    elif a.cmd == "pack":
        print(pack(a.src_dir, a.tar_path))
    elif a.cmd == "summary":
        text = summarize(a.work_dir)
        for path in a.out:
            with open(path, "w") as f:
                f.write(text)
        print(text)
    else:
        print(unpack(a.tar_path, a.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
