"""Dry run of the GPU session protocol (bench/gpu_session.sh) on this CPU.

The phases run end to end with WRN_FAST_SESSION_DRY_RUN=1: no pip build, the GPU test
selection collected (not run), the table at toy sizes through the Triton interpreter. Checked:
what a device call would return ($OUT: at most 8 files, one archive holding the commit record,
the logs, the streamed JSONL rows and the run JSON), every row kind of the table, and the
time-out path: a table killed by `timeout` (SIGTERM) still returns the rows it measured, and
its JSON, inside the archive.
"""
import json
import os
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu_session.sh")


def _session(phase, tmp_path, on_start=None, **env):
    """Run a dry-run phase; ``on_start(popen, work_dir)`` runs while it does. Phase budgets are
    generous: on a loaded CI machine the toy run takes minutes, and no step may time out by accident."""
    out, work = tmp_path / f"out_{phase}", tmp_path / f"work_{phase}"
    e = dict(os.environ, WRN_FAST_SESSION_DRY_RUN="1", PYTHON=sys.executable, OUT=str(out), SESSION_WORK=str(work),
             TRITON_CACHE_DIR=str(tmp_path / "triton"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
             PHASE_S="900", SMOKE_S="400")
    e.update({k: str(v) for k, v in env.items()})
    proc = subprocess.Popen(["bash", SCRIPT, phase], cwd=REPO, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        if on_start is not None:
            on_start(proc, work / phase)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out


def _children(pid):
    """(pid, argv) of the live child processes of ``pid`` (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0") if a]
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append((int(d), argv))
    return out


def _archive(out):
    files = sorted(os.listdir(out))
    assert len(files) <= 8, files  # the device tool returns at most 8 files per command
    tars = [f for f in files if f.endswith(".tar.gz")]
    assert len(tars) == 1, files
    assert not [f for f in files if ".part" in f], files
    with tarfile.open(out / tars[0]) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        read = {n: tar.extractfile(m).read().decode() for n, m in members.items()}
    return files, read


def _one(read, suffix):
    hits = [n for n in read if n.endswith(suffix)]
    assert len(hits) == 1, (suffix, sorted(read))
    return read[hits[0]]


@pytest.fixture(scope="module")
def check_phase(tmp_path_factory):
    return _session("check", tmp_path_factory.mktemp("check"))


def test_check_phase_archive_and_every_row_kind(check_phase):
    proc, out = check_phase
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files, read = _archive(out)
    assert "summary_check.md" in files
    commit = json.loads(_one(read, "/commit.json"))
    assert commit["commit"] and commit["short_commit"] in [f for f in files if f.endswith(".tar.gz")][0]
    steps = _one(read, "/steps.tsv")
    for name in ("env", "build", "tests_quick", "table_smoke"):
        assert f"{name}\t0\t" in steps, steps
    assert "[warm] wrn-10-1 b4 train" in _one(read, "/warm_0.log")  # the compile warm-up ran beside the tests
    assert "dry run: would run:" in _one(read, "/build.log") and "--no-index" in _one(read, "/build.log")
    # the GPU test selection: a covering subset, the exhaustive tile-config sweep left out
    tests_log = _one(read, "/tests_quick.log")
    assert "deselected" in tests_log and "test_every_gpu_tile_config" not in tests_log
    rows = [json.loads(ln) for ln in _one(read, ".rows.jsonl").splitlines()]
    run = json.loads(_one(read, "_quick.json"))
    assert len(run["records"]) == len(rows) and run["terminated"] is None
    assert len(run["environment"]["git_commit"]) == 40  # (dry run: git's HEAD, which other commits may move)
    ok = {(r["section"], r.get("pass") or r.get("mode"), r.get("impl")) for r in rows if r["status"] == "OK"}
    for q in ("fwd", "dgrad", "wgrad"):
        assert ("layer", q, "wrn_fast") in ok and ("layer", q, "cudnn") in ok, q
    for mode in ("train", "infer"):
        for impl in ("reference-eager", "wrn_fast", "reference-compile-max-autotune"):
            assert ("model", mode, impl) in ok, (mode, impl)
    assert ("mfu", "train", "wrn_fast") in ok and ("peak", None, None) in ok
    for r in rows:
        if r["section"] == "layer" and r["status"] == "OK":  # validated before timed
            assert r["max_rel_err"] <= r["tol"] and r["median_ms"] > 0 and "roofline_ms" in r
        if r["section"] == "mfu":
            assert 0 < r["mfu"] and r["step_flops"] > 0
    assert "commit" in _one(read, "/summary.md")


def test_table_killed_by_timeout_still_returns_its_rows(tmp_path):
    """The table stalls after its 2 peak rows (test hook); then its step's `timeout` gets SIGTERM,
    which it passes on as it does when its limit expires (sent here, not at a fixed time, so
    machine load cannot move it before the rows). The run writes its JSON, marked terminated;
    the phase goes on, and the archive holds the rows and the JSON."""
    import signal
    import time

    def kill_table_when_stalled(proc, work):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            rows = [os.path.join(r, f) for r, _, fs in os.walk(work) for f in fs if f.endswith(".rows.jsonl")]
            if rows and len(open(rows[0]).read().splitlines()) >= 2:
                time.sleep(1)
                for pid, argv in _children(proc.pid):  # the step's `timeout ... bash -c "$@" table table ...`
                    if argv[:1] == ["timeout"] and "table" in argv[argv.index("-c") + 2:argv.index("-c") + 3]:
                        os.kill(pid, signal.SIGTERM)
                        return
            time.sleep(0.5)

    proc, out = _session("table", tmp_path, on_start=kill_table_when_stalled, WRN_FAST_BENCH_STALL_AFTER=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files, read = _archive(out)
    steps = _one(read, "/steps.tsv")
    assert "warm\t0\t" in steps and "table\t143\t" in steps, steps  # the table was terminated
    rows = [json.loads(ln) for ln in _one(read, ".rows.jsonl").splitlines()]
    assert len(rows) == 2 and rows[0]["section"] == "peak"
    run = json.loads(_one(read, "_quick.json"))
    assert run["terminated"] and "SIGTERM" in run["terminated"] and len(run["records"]) == 2
    assert "Partial run" in _one(read, "_quick.md")
    assert "table | 143" in open(out / "summary_table.md").read()


def test_pack_is_atomic_and_unpack_stays_inside(tmp_path):
    from bench import session

    src = tmp_path / "phase"
    src.mkdir()
    (src / "a.log").write_text("x")
    tar = tmp_path / "out" / "wrn_fast_phase_abc.tar.gz"
    session.pack(str(src), str(tar))
    assert os.listdir(tmp_path / "out") == ["wrn_fast_phase_abc.tar.gz"]
    dest = session.unpack(str(tar), str(tmp_path / "results"))
    assert open(os.path.join(dest, "a.log")).read() == "x"
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as t:
        t.add(src / "a.log", arcname="../escape.log")
    with pytest.raises(SystemExit):
        session.unpack(str(evil), str(tmp_path / "results"))


def test_commit_record_without_git(tmp_path):
    """On the device (no .git) the commit comes from bench/.session_commit, and an edit after
    `prepare` is reported (tree_matches False, dirty)."""
    from bench import session

    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    (repo / "f.py").write_text("a = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "f.py"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=repo, check=True)
    rec = session.prepare(str(repo))
    assert rec["dirty"] is False and rec["files"] == ["f.py"]
    os.rename(repo / ".git", tmp_path / "git_away")  # what the device machine sees
    info = session.commit_info(str(repo))
    assert info["commit"] == rec["commit"] and info["dirty"] is False and info["tree_matches"] is True
    (repo / "f.py").write_text("a = 2\n")
    info = session.commit_info(str(repo))
    assert info["tree_matches"] is False and info["dirty"] is True
    os.remove(repo / "bench" / ".session_commit")
    assert session.commit_info(str(repo))["short_commit"] == "unknown-commit"
