"""Run untrusted Python (a model's completion plus its unit tests) in throwaway sandboxes, several at once.

Each program gets its own interpreter process with a wall-clock deadline, CPU-time, address-space, process-count,
file-size and open-file limits, an empty working directory, an environment of PATH/HOME/LANG only, capped stdout
and stderr, and its whole process tree killed when it ends or overruns. `isolation` adds real walls where the
machine allows (see `protections`): "bwrap" (bubblewrap namespaces and a read-only root), "unshare" (util-linux
namespaces), or "process" (limits alone); "auto" takes the first that starts here. Cost: one interpreter start
per program (~40 ms inside bwrap), `workers` programs at a time.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .config import _f
from .errors import LayerscoutError

ISOLATIONS = ("auto", "bwrap", "unshare", "process")
# Slot uids for sandboxes started by root (root is exempt from RLIMIT_NPROC, and a uid of its own lets a
# program's files and signals be kept off everyone else's): base + (pid % 10**6) * 100 + slot.
UID_BASE = 1_500_000_000
MAX_WORKERS = 100
REPORT_CAP = 1 << 20  # bytes of harness report kept; more means the program is writing to it
_READ = 65536

# Runs inside the sandbox, before and around the untrusted code. It reads its job on stdin, then writes one JSON line
# per event (start, syntax, crash, missing, test, done) to the pipe whose fd the job names, each tagged with the
# job's nonce. Its state lives in main()'s locals, bound before the program runs, so rebinding exec, json or
# os.write does not reach it; a program that reads main()'s frame could still forge lines (see README). The marker
# comment names sandbox processes in /proc (tests look for leftovers by it).
HARNESS = r'''# layerscout-sandbox-harness
import json, os, resource, sys
from _json import encode_basestring_ascii as quote
def main(exec=exec, compile=compile, enumerate=enumerate, write=os.write, exit=os._exit, quote=quote,
         BaseException=BaseException):
    job = json.loads(sys.stdin.read())
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    fd, head = job["report_fd"], '{"nonce": "%s", "event": ' % job["nonce"]
    def send(event, i=-1, ok=False, e=None, name=""):
        error = "" if e is None else ', "error": %s, "message": %s' % (quote(type(e).__name__), quote(str(e)[:300]))
        write(fd, (head + '"%s", "i": %d, "ok": %s, "name": %s%s}\n'
                   % (event, i, "true" if ok else "false", quote(name), error)).encode())
    def finish():
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except BaseException:
                pass
        exit(0)
    for name, (soft, hard) in job["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if job["uid"] is not None:
        os.setgroups([]); os.setgid(job["uid"]); os.setuid(job["uid"])
    os.umask(0o077)
    send("start")
    try:
        code = compile(job["source"], "<completion>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        send("syntax", e=e); finish()
    tests = [compile(t, f"<test {i}>", "exec") for i, t in enumerate(job["tests"])]
    setup, entry = compile(job["setup"], "<setup>", "exec"), job["entry_point"]
    env = {"__name__": "__solution__"}
    del job
    try:
        exec(code, env)
        if entry and entry not in env:
            send("missing", name=entry); finish()
        if entry:
            env["candidate"] = env[entry]
        exec(setup, env)
    except BaseException as e:
        send("crash", e=e); finish()
    for i, t in enumerate(tests):
        try:
            exec(t, env)
            send("test", i, True)
        except BaseException as e:
            send("test", i, False, e)
    send("done")
    finish()
if os.getpid() == 1:  # init of unshare's pid namespace ignores its own signals: run the job in a child
    child = os.fork()
    while child:
        pid, status = os.wait()
        if pid == child:
            os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
main()
'''


@dataclass
class SandboxConfig:
    """Limits of one sandboxed program and how many run at once. The defaults fit HumanEval-sized programs."""

    isolation: str = _f("auto", "auto | bwrap | unshare | process (see layerscout.sandbox.protections)")
    timeout_s: float = _f(5.0, "wall-clock limit per program, interpreter start included")
    cpu_s: int | None = _f(None, "CPU-seconds per process (RLIMIT_CPU); None = ceil(timeout_s)")
    memory_mb: int = _f(1024, "address space per process (RLIMIT_AS), MiB")
    max_processes: int = _f(8, "processes per sandbox, the interpreter included (RLIMIT_NPROC)")
    max_output_bytes: int = _f(65536, "stdout + stderr kept; a program printing more is killed ('output capped')")
    disk_mb: int = _f(16, "largest file (RLIMIT_FSIZE); with bwrap also the size of its whole tmpfs")
    workers: int = _f(0, "programs run at once; 0 = one per CPU core")
    python: str | None = _f(None, "interpreter inside the sandbox (standard library only); None = this one")

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise LayerscoutError(f"sandbox isolation must be one of {', '.join(ISOLATIONS)}; got {self.isolation!r}")
        for name in ("timeout_s", "memory_mb", "max_processes", "max_output_bytes", "disk_mb"):
            if getattr(self, name) <= 0:
                raise LayerscoutError(f"sandbox {name} must be > 0; got {getattr(self, name)}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise LayerscoutError(f"sandbox cpu_s must be >= 1; got {self.cpu_s}")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise LayerscoutError(f"sandbox workers must be in 0..{MAX_WORKERS}; got {self.workers}")

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass
class Program:
    """`source` (untrusted) runs first, then `setup`, then each of `tests` in the same namespace; a test passes if
    it raises nothing. With `entry_point`, the source must define it and `candidate` names it (HumanEval)."""

    source: str
    tests: list[str]
    setup: str = ""
    entry_point: str | None = None


@dataclass
class Outcome:
    """What happened to one program. status: passed | failed | syntax_error | missing_entry_point | crashed |
    memory | exited_early | timeout | cpu_time | killed | output_capped."""

    status: str
    passed: int
    total: int
    detail: str
    seconds: float
    stdout: str = ""
    stderr: str = ""

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


# ---------------------------------------------------------------- public API

def run_programs(programs: list[Program], config: SandboxConfig | None = None) -> list[Outcome]:
    """Run each program in its own sandbox, `config.workers` at a time; outcomes in input order.

    Example: `run_programs([Program("def f(): return 1", ["assert f() == 1"])])[0].status == "passed"`.
    """
    config = config or SandboxConfig()
    mode = resolve_isolation(config)
    if not programs:
        return []
    with ThreadPoolExecutor(min(config.num_workers, len(programs)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda p: _run_in_slot(p, config, mode), programs))


def resolve_isolation(config: SandboxConfig) -> str:
    """The isolation mode `config` gets here: its own if that starts, else (auto) the best one that does."""
    wanted = ("bwrap", "unshare", "process") if config.isolation == "auto" else (config.isolation,)
    problems = []
    for mode in wanted:
        problem = _check_mode(mode, _python(config))
        if problem is None:
            if problems:
                warnings.warn(f"code sandbox: using {mode!r} isolation ({'; '.join(problems)})", stacklevel=2)
            return mode
        problems.append(f"{mode}: {problem}")
    raise LayerscoutError(f"sandbox isolation {config.isolation!r} does not work here: {'; '.join(problems)}")


def protections(config: SandboxConfig | None = None) -> dict:
    """What the sandbox stops on this machine with `config`, attack by attack (True = stopped), and why.

    Always in force: the deadline, CPU-time, address-space, file-size and open-file limits, a fresh working dir,
    an environment without the parent's variables, the output cap, and killing the process group at the end.
    """
    config = config or SandboxConfig()
    mode = resolve_isolation(config)
    drop = _drops_uid(mode, _python(config))
    ns = mode in ("bwrap", "unshare")
    return {
        "isolation": mode,
        "uid_drop": drop,
        # a private /proc (namespaces) or another uid hides the parent's /proc/PID/environ; variables are cleared
        "environment": ns or drop,
        # host files: bwrap shows only read-only system dirs; elsewhere only a foreign uid's permissions protect
        "host_files": mode == "bwrap" or drop,
        "network": ns,
        # signals reach only processes in the pid namespace, or (uid drop) the program's own uid
        "signals": ns or drop,
        # RLIMIT_NPROC binds a slot uid, a user namespace, or (not root) all of the user's processes; root is exempt
        "processes": drop or os.geteuid() != 0,
        # every process dies with the sandbox: pid namespace, or the slot uid swept
        "leftover_processes": ns or drop,
        # bwrap's tmpfs is size-capped; elsewhere RLIMIT_FSIZE caps each file but not how many
        "disk": mode == "bwrap",
    }


# ---------------------------------------------------------------- one program

_slot_lock = threading.Lock()
_free_slots: set[int] = set(range(MAX_WORKERS))


def _run_in_slot(program: Program, config: SandboxConfig, mode: str) -> Outcome:
    """Slots give concurrent sandboxes of this process distinct uids (when dropping from root)."""
    with _slot_lock:
        slot = min(_free_slots)
        _free_slots.discard(slot)
    try:
        return run_program(program, config, mode, slot)
    finally:
        with _slot_lock:
            _free_slots.add(slot)


def run_program(program: Program, config: SandboxConfig, mode: str, slot: int = 0) -> Outcome:
    """Run one program under `mode` (already resolved) and classify what happened."""
    python = _python(config)
    uid = _slot_uid(slot) if _drops_uid(mode, python) else None
    nonce = secrets.token_hex(16)
    job = {"nonce": nonce, "source": program.source, "tests": program.tests, "setup": program.setup,
           "entry_point": program.entry_point, "uid": uid, "limits": _limits(config)}
    workdir = None if mode == "bwrap" else tempfile.mkdtemp(prefix="layerscout-sandbox-")
    try:
        if workdir and uid is not None:
            os.chown(workdir, uid, uid)
        cmd = _command(mode, python, config, workdir)
        start = time.perf_counter()
        streams, ended = _execute(cmd, workdir, job, config)
        seconds = time.perf_counter() - start
    finally:
        if uid is not None:
            _kill_uid(uid)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    events = _events(streams["report"], nonce)
    if not any(e["event"] == "start" for e in events) and ended not in ("timeout", "output_capped"):
        err = streams["stderr"].decode(errors="replace").strip()[-500:]
        raise LayerscoutError(f"the code sandbox ({mode}) failed to start: {err or 'no output'}")
    return _classify(events, len(program.tests), ended, seconds, streams, config)


def _execute(cmd: list[str], workdir: str | None, job: dict, config: SandboxConfig) -> tuple[dict, str]:
    """Start `cmd` in a new session, feed it the job, collect stdout/stderr (capped) and the report pipe until the
    main process exits, overruns or floods; then kill its process group. Returns (streams, how it ended)."""
    report_r, report_w = os.pipe()
    data = json.dumps({**job, "report_fd": report_w}).encode()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir or "/tmp", "TMPDIR": workdir or "/tmp"}
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir or "/", env=env, start_new_session=True, pass_fds=(report_w,))
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    streams = {"stdout": bytearray(), "stderr": bytearray(), "report": bytearray(), "seen": 0}
    caps = {"stdout": config.max_output_bytes, "stderr": config.max_output_bytes, "report": REPORT_CAP}
    sel = selectors.DefaultSelector()
    pidfd = os.pidfd_open(proc.pid)
    ended = "exited"
    try:
        for fd, name in ((proc.stdout.fileno(), "stdout"), (proc.stderr.fileno(), "stderr"), (report_r, "report")):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, name)
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        pending = memoryview(data)
        deadline = time.monotonic() + config.timeout_s
        while ended == "exited":
            left = deadline - time.monotonic()
            if left <= 0:
                ended = "timeout"
                break
            events = sel.select(left)
            for key, _ in events:
                if key.data == "stdin":
                    try:
                        pending = pending[os.write(key.fd, pending):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(key.fd)
                        proc.stdin.close()
                elif key.data != "exit":
                    _drain(key.fd, key.data, streams, caps, sel)
            if streams["seen"] > config.max_output_bytes or len(streams["report"]) >= REPORT_CAP:
                ended = "output_capped"
            elif any(key.data == "exit" for key, _ in events):
                break
    finally:
        _kill_group(proc)
        proc.wait()
        for key in list(sel.get_map().values()):  # what the program wrote before it ended
            if key.data in caps:
                _drain(key.fd, key.data, streams, caps, None)
        sel.close()
        os.close(pidfd)
        os.close(report_r)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    if ended == "exited" and streams["seen"] > config.max_output_bytes:
        ended = "output_capped"
    streams["returncode"] = proc.returncode
    return streams, ended


def _drain(fd: int, name: str, streams: dict, caps: dict, sel) -> None:
    """Read what `fd` has now; keep up to its cap, count stdout+stderr bytes seen; unregister at EOF."""
    while True:
        try:
            chunk = os.read(fd, _READ)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            if sel is not None:
                sel.unregister(fd)
            return
        buf = streams[name]
        buf += chunk[:max(0, caps[name] - len(buf))]
        if name != "report":
            streams["seen"] += len(chunk)
            if streams["seen"] > caps[name]:
                return


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's process group (its session: start_new_session). With namespaces, the rest of its
    processes die with the namespace's init; with a slot uid, `_kill_uid` sweeps any that left the group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of a slot uid (only sandboxes run under it) until none is left."""
    for _ in range(100):
        pids = [p for p in _pids() if _owner(p) == uid]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


# ---------------------------------------------------------------- outcome

def _events(report: bytes, nonce: str) -> list[dict]:
    """The harness's report lines; lines without the job's nonce (written by the program) are ignored."""
    out = []
    for line in bytes(report).decode(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(e, dict) and e.get("nonce") == nonce:
            out.append(e)
    return out


def _classify(events: list[dict], total: int, ended: str, seconds: float, streams: dict,
              config: SandboxConfig) -> Outcome:
    """One Outcome from the report events and how the process ended; tests that did not report count as failed."""
    results = {e["i"]: e for e in events if e["event"] == "test"}
    passed = sum(1 for e in results.values() if e["ok"])
    kinds = {e["event"]: e for e in events}
    errors = sorted({e["error"] for e in results.values() if not e["ok"]})
    progress = f"{passed} of {total} tests passed"
    rc = streams["returncode"]
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0

    def out(status: str, detail: str) -> Outcome:
        return Outcome(status, passed, total, detail, round(seconds, 4),
                       streams["stdout"].decode(errors="replace"), streams["stderr"].decode(errors="replace"))

    if ended == "output_capped":
        return out("output_capped", f"output capped: printed more than {config.max_output_bytes} bytes ({progress})")
    if ended == "timeout":
        return out("timeout", f"timeout after {config.timeout_s:g} s ({progress})")
    if "syntax" in kinds:
        e = kinds["syntax"]
        return out("syntax_error", f"syntax error ({e['error']}: {e['message']})")
    if "missing" in kinds:
        return out("missing_entry_point", f"does not define {kinds['missing']['name']!r}")
    if "crash" in kinds:
        e = kinds["crash"]
        if e["error"] == "MemoryError":
            return out("memory", f"out of memory (over {config.memory_mb} MiB) before the tests")
        if e["error"] == "SystemExit":
            return out("exited_early", f"exited early (SystemExit: {e['message'] or 0}) before the tests")
        return out("crashed", f"crashed ({e['error']}: {e['message']}) before the tests")
    if "done" in kinds:
        if passed == total:
            return out("passed", f"passed ({progress})")
        if "MemoryError" in errors:
            return out("memory", f"out of memory in a test ({progress})")
        return out("failed", f"failed: {progress} ({', '.join(errors)})")
    if sig == signal.SIGXCPU:
        return out("cpu_time", f"CPU time limit of {_cpu_s(config)} s ({progress})")
    if sig:
        return out("killed", f"killed by {signal.Signals(sig).name} ({progress})" if sig in _SIGNALS
                   else f"killed by signal {sig} ({progress})")
    return out("exited_early", f"exited early with code {rc} before the tests finished ({progress})")


_SIGNALS = {s.value for s in signal.Signals}


# ---------------------------------------------------------------- isolation

def _python(config: SandboxConfig) -> str:
    return os.path.realpath(config.python or sys.executable)


def _prefix(python: str) -> str:
    """The installation dir of `python` (for /root/.pyenv/versions/3.11.7/bin/python3.11: .../3.11.7)."""
    return str(Path(python).parent.parent)


def _limits(config: SandboxConfig) -> dict[str, tuple[int, int]]:
    cpu = _cpu_s(config)
    disk = config.disk_mb << 20
    return {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": ((config.memory_mb << 20),) * 2,
            "RLIMIT_NPROC": (config.max_processes,) * 2, "RLIMIT_FSIZE": (disk, disk),
            "RLIMIT_NOFILE": (64, 64), "RLIMIT_CORE": (0, 0)}


def _cpu_s(config: SandboxConfig) -> int:
    return config.cpu_s or max(1, int(-(-config.timeout_s // 1)))


def _slot_uid(slot: int) -> int:
    return UID_BASE + (os.getpid() % 10**6) * MAX_WORKERS + slot


def _drops_uid(mode: str, python: str) -> bool:
    """Root hands each program a slot uid: inside bwrap always (it mounts the interpreter readable); elsewhere
    only if that uid can reach the interpreter's files on the host (a Python under /root cannot)."""
    if os.geteuid() != 0:
        return False
    return mode == "bwrap" or _world_readable(_prefix(python))


def _world_readable(path: str) -> bool:
    p = Path(path).resolve()
    for d in [p, *p.parents]:
        if not os.stat(d).st_mode & 0o001:
            return False
    return bool(os.stat(p).st_mode & 0o004)


def _command(mode: str, python: str, config: SandboxConfig, workdir: str | None) -> list[str]:
    run = [python, "-I", "-S", "-B", "-c", HARNESS]
    root = os.geteuid() == 0
    if mode == "process":
        return run
    if mode == "unshare":
        return ["unshare", "--fork", "--kill-child", "--pid", "--mount-proc", "--net", "--ipc", "--uts",
                *([] if root else ["--map-root-user"]), *run]
    return [*_bwrap_args(python, config, root), *run]


def _bwrap_args(python: str, config: SandboxConfig, root: bool) -> list[str]:
    """bubblewrap: new pid/net/ipc/uts/cgroup namespaces; a root of read-only system dirs, the interpreter's
    install dir, a private /proc, a minimal /dev and a size-capped tmpfs as cwd; no capabilities. As root it
    keeps no user namespace but lets the harness switch to the slot uid (CAP_SETUID/SETGID only); otherwise a
    user namespace, where RLIMIT_NPROC counts this sandbox's processes alone."""
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try"]
    args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if root else ["--unshare-user", "--disable-userns"]
    args += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefix = Path(_prefix(python))
    if prefix != Path("/usr") and Path("/usr") not in prefix.parents:
        for parent in reversed(prefix.parents[:-1]):
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(prefix), str(prefix)]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(config.disk_mb << 20), "--perms", "1777",
             "--tmpfs", "/tmp", "--chdir", "/tmp", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
             "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8"]
    return args


_checked: dict[tuple[str, str], str | None] = {}
_check_lock = threading.Lock()


def _check_mode(mode: str, python: str) -> str | None:
    """None if `mode` runs a trivial program here, else why not (cached per process)."""
    with _check_lock:
        if (mode, python) not in _checked:
            _checked[mode, python] = _try_mode(mode, python)
        return _checked[mode, python]


def _try_mode(mode: str, python: str) -> str | None:
    tool = {"bwrap": "bwrap", "unshare": "unshare"}.get(mode)
    if tool and shutil.which(tool) is None:
        return f"{tool} is not installed"
    try:
        outcome = run_program(Program("x = 1", ["assert x == 1"]), SandboxConfig(timeout_s=20), mode)
    except LayerscoutError as e:
        return str(e).split(": ", 1)[-1][:300]
    return None if outcome.status == "passed" else f"a trivial program ended {outcome.status}: {outcome.detail}"
