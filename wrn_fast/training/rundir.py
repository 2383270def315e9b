"""The run directory: where a run writes, who owns it (an exclusive lock), and what it may overwrite."""
import contextlib
import errno
import hashlib
import json
import os
import socket
import time
from datetime import datetime
from typing import Any, Dict, Optional

from ..data import InputError
from ..checkpoint import is_train_checkpoint, load_checkpoint

try:
    import fcntl
except ImportError:  # not POSIX: the lock falls back to a pid file (see RunLock)
    fcntl = None

LOCK_NAME = ".wrn_fast.lock"


def default_run_dir(dataset: str, model: str, seed: int, settings: Dict[str, Any], root: str = "runs") -> str:
    """``runs/DATASET-MODEL-YYYYmmdd-HHMMSS-micro-seedS-HASH``: two launches (same second, other seed or
    settings) never share a name; :func:`create_run_dir` makes even identical ones distinct."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return os.path.join(root, f"{dataset}-{model}-{stamp}-seed{seed}-{digest}")


def check_out_dir(out: str, flag: str = "--out") -> None:
    """Fail before any work when ``out`` cannot be a writable directory (a file, below a file, read-only)."""
    path = os.path.abspath(out)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(f"{flag} {out}: is a file; expected a directory (new or holding a run)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {out}: the directory is not writable (permission denied)")
        return
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            break
        ancestor = parent
    if not os.path.isdir(ancestor):
        raise InputError(f"{flag} {out}: cannot create the directory: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: cannot create the directory: {ancestor} is not writable (permission denied)")


def create_run_dir(out: str, exclusive: bool) -> str:
    """Make ``out`` (with ``exclusive``: a directory nobody else made, suffixing -2, -3, ... on a clash)."""
    if not exclusive:
        os.makedirs(out, exist_ok=True)
        return out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    candidate, n = out, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{out}-{n}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe_holder(info: Dict[str, Any]) -> str:
    if not info:
        return "holder unknown"
    text = f"pid {info.get('pid')} on host {info.get('host')}"
    if info.get("started"):
        text += f", started {info['started']}"
    return text


class RunLock:
    """An exclusive lock on a run directory for the whole run.

    ``flock`` on ``DIR/.wrn_fast.lock``: the kernel releases it when the
    process dies however it dies (SIGKILL included), so a lock file left
    behind is recognisably stale (it can be locked again; the pid and host
    recorded in it say who left it). On file systems without flock the
    recorded pid is checked instead (same host: is it alive?). The file is
    removed on release.
    """

    def __init__(self, directory: str, flag: str = "--out"):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.flag = flag
        self.stale: Optional[Dict[str, Any]] = None  # what a dead holder left, if anything
        self._fd: Optional[int] = None

    def _refuse(self, holder: Dict[str, Any]) -> None:
        raise InputError(f"{self.flag} {self.directory}: in use by another wrn_fast run ({_describe_holder(holder)}); "
                         f"wait for it to finish or choose another {self.flag}")

    def _read(self, fd: Optional[int] = None) -> Dict[str, Any]:
        try:
            if fd is not None:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            else:
                with open(self.path) as f:
                    text = f.read(4096)
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    raise OSError(errno.ENOLCK, "no flock")
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                self._refuse(holder)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                holder = self._read(fd)  # no flock here: trust a live pid on this host
                if holder and holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() \
                        and _pid_alive(int(holder.get("pid", 0))):
                    os.close(fd)
                    self._refuse(holder)
            # The previous holder unlinks the file on release: make sure we locked the file now at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        previous = self._read(fd)
        self.stale = previous or None
        record = dict(pid=os.getpid(), host=socket.gethostname(),
                      started=time.strftime("%Y-%m-%d %H:%M:%S %z"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # while still holding it: a waiting process re-checks the inode
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def check_existing_run(out: str, checkpoint_name: str, flag: str, ckpt: Optional[Dict[str, Any]],
                       resume_path: Optional[str]) -> None:
    """Never overwrite another run, nor a checkpoint further along than the one resumed (``ckpt``, from
    ``resume_path``; None for a new run). ``flag`` names the directory in messages."""
    target = os.path.join(out, checkpoint_name)
    if not os.path.exists(target):
        return
    if ckpt is None:
        raise InputError(f"{flag} {out}: already holds {checkpoint_name} from an earlier run; continue "
                         f"it with --resume {target}, or choose another --out")
    if os.path.samefile(target, resume_path):
        return
    try:
        theirs = load_checkpoint(target, flag=flag)
        if not is_train_checkpoint(theirs):
            raise InputError(f"{target}: not a wrn_fast training checkpoint")
    except InputError as e:
        raise InputError(f"{flag} {out}: holds a {checkpoint_name} that resuming {resume_path} would replace, and "
                         f"it cannot be read ({e}); move it away or choose another --out") from e
    if ckpt.get("run_id") and theirs.get("run_id") and ckpt["run_id"] != theirs["run_id"]:
        raise InputError(f"{flag} {out}: holds {checkpoint_name} of another run (epoch {theirs.get('epoch')}, step "
                         f"{theirs.get('step')}); resuming {resume_path} there would overwrite it. "
                         f"Choose another --out")
    if theirs.get("step", 0) > ckpt["step"]:
        raise InputError(f"{flag} {out}: holds a newer checkpoint of this run (epoch {theirs.get('epoch')}, step "
                         f"{theirs.get('step')}) than {resume_path} (epoch {ckpt['epoch']}, step "
                         f"{ckpt['step']}); resuming would roll it back. Continue the newer one with --resume "
                         f"{target}, or branch off with --out NEW_DIR")
