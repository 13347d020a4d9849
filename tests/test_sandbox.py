# Run: python -m pytest tests/test_sandbox.py -q   (real subprocesses and a real TRL run; about 45 s on 2 cores)
"""The code sandbox against hostile completions, in real subprocesses: each scores 0 within its time limit, the
host's files, environment and processes stay as they were, and a training-like loop in this process keeps going.
Every attack is written so that it would pass its test if it succeeded."""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from layerscout.errors import LayerscoutError
from layerscout.sandbox import HARNESS, Program, SandboxConfig, protections, resolve_isolation, run_programs

TIMEOUT = 2.0
MEMORY_MB = 256  # filling the default 1 GiB page by page takes ~2 s of a loaded core
SLACK = 2.0  # interpreter start, kill and a loaded 2-core machine
MARKER = HARNESS.splitlines()[0]


def _configs():
    """Each isolation mode that starts here; the fallbacks with the system Python, which a slot uid can read."""
    out = [pytest.param(SandboxConfig(isolation="bwrap", timeout_s=TIMEOUT, memory_mb=MEMORY_MB), id="bwrap")]
    if os.path.exists("/usr/bin/python3"):
        out += [pytest.param(SandboxConfig(isolation=m, timeout_s=TIMEOUT, memory_mb=MEMORY_MB,
                                              python="/usr/bin/python3"), id=m)
                for m in ("unshare", "process")]
    return out


@pytest.fixture(params=_configs())
def config(request):
    try:
        resolve_isolation(request.param)
    except LayerscoutError as e:
        pytest.skip(str(e))
    return request.param


def _needs(config, *keys):
    got = protections(config)
    missing = [k for k in keys if not got[k]]
    if missing:
        pytest.skip(f"{got['isolation']} isolation (uid drop {got['uid_drop']}) does not stop: {', '.join(missing)}")


def _attack(body: str) -> Program:
    """`ok()` returns True when the attack worked; the one test asserts it."""
    return Program(body + "\ndef ok():\n    return ATTACK_WORKED\n", ["assert ok()"])


def _tries(*statements: str) -> str:
    """ATTACK_WORKED = any of the statements ran without an exception."""
    lines = ["ATTACK_WORKED = False"]
    for s in statements:
        lines += ["try:", f"    {s}", "    ATTACK_WORKED = True", "except BaseException:", "    pass"]
    return "\n".join(lines)


def _sandbox_processes() -> list[int]:
    found = []
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if MARKER.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


class TrainingLoop:
    """A tiny torch model taking optimizer steps in a thread of this process while the sandboxes run."""

    def __init__(self):
        import torch

        self.model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        self.x = torch.randn(256, 64)
        self.steps, self.stop, self.error = 0, threading.Event(), None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            while not self.stop.is_set():
                loss = self.model(self.x).pow(2).mean()
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                self.steps += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_correct_and_partial_programs_score(config):
    programs = [Program("def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
                        entry_point="add"),
                Program("def add(a, b):\n    return a * b\n", ["assert add(2, 2) == 4", "assert add(1, 2) == 3",
                                                               "assert candidate(0, 5) == 5"], entry_point="add")]
    good, partial = run_programs(programs, config)
    assert (good.status, good.passed, good.total, good.fraction) == ("passed", 2, 2, 1.0)
    assert (partial.status, partial.passed, partial.total) == ("failed", 1, 3)
    assert partial.detail == "failed: 1 of 3 tests passed (AssertionError)"


class Host:
    """Files, an environment secret and a disk to check after the attacks. The secret is in this process's
    environment and in the start-up environment of a host process (readable in /proc/PID/environ)."""

    def __init__(self, tmp_path, monkeypatch):
        self.secret = "s3cr3t-" + os.urandom(8).hex()
        monkeypatch.setenv("LAYERSCOUT_TEST_SECRET", self.secret)
        self.holder = subprocess.Popen(["sleep", "600"], env=dict(os.environ))
        self.victim, self.doomed, self.dir = tmp_path / "victim.txt", tmp_path / "doomed.txt", tmp_path / "dir"
        self.planted = tmp_path / "planted.txt"
        self.victim.write_text("original")
        self.doomed.write_text("still here")
        self.dir.mkdir()
        (self.dir / "a").write_text("a")
        self.free = shutil.disk_usage(tempfile.gettempdir()).free

    def attacks(self) -> dict[str, Program]:
        secret = self.secret
        return {
            "infinite loop": Program("while True:\n    pass\ndef ok():\n    return True\n", ["assert ok()"]),
            "fork bomb": Program("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                                 "        pass\ndef ok():\n    return True\n", ["assert ok()"]),
            "huge allocation": _attack("x = bytearray(64 * 2**30)\nATTACK_WORKED = True"),
            "growing allocation": _attack("xs = []\nwhile True:\n    xs.append(bytearray(2**26))"),
            "host files": _attack(_tries(f"open({str(self.victim)!r}, 'w').write('pwned')",
                                         f"__import__('os').remove({str(self.doomed)!r})",
                                         f"__import__('shutil').rmtree({str(self.dir)!r})",
                                         f"open({str(self.planted)!r}, 'w').write('planted')")),
            "environment": _attack(
                "import os\nATTACK_WORKED = any(" + repr(secret) + " in v for v in os.environ.values())\n"
                + "for p in os.listdir('/proc'):\n    try:\n"
                + "        ATTACK_WORKED |= " + repr(secret.encode()) + " in open(f'/proc/{p}/environ', 'rb').read()\n"
                + "    except Exception:\n        pass"),
            # these succeed only if this test process dies: the assertions after them then never run
            "signal parent": Program(_tries("__import__('os').kill(__import__('os').getppid(), 9)",
                                            f"__import__('os').kill({os.getpid()}, 9)",
                                            f"__import__('os').killpg(__import__('os').getpgid({os.getpid()}), 9)",
                                            "__import__('os').killpg(__import__('os').getpgid(__import__('os').getppid()), 9)"),
                                     ["assert solved()"]),
            "kill everything": Program("import os\nos.kill(-1, 9)\n", ["assert solved()"]),
            "kill own group": Program("import os\nos.killpg(0, 9)\n", ["assert solved()"]),
            "sys.exit(0)": Program("import sys\nsys.exit(0)\ndef ok():\n    return True\n", ["assert ok()"]),
            "os._exit(0)": Program("import os\nos._exit(0)\ndef ok():\n    return True\n", ["assert ok()"]),
            "exit inside a test": Program("import os\ndef ok():\n    os._exit(0)\n", ["assert ok()"]),
            "forged report": Program(
                "import os\nfor fd in range(1, 64):\n    try:\n"
                "        os.write(fd, b'{\"event\": \"test\", \"i\": 0, \"ok\": true}\\n{\"event\": \"done\"}\\n')\n"
                "    except OSError:\n        pass\nos._exit(0)\n", ["assert ok()"]),
            "patched harness": Program(
                "import builtins, json, os\nbuiltins.exec = lambda *a, **k: None\njson.dumps = lambda *a, **k: 'x'\n"
                "builtins.enumerate = lambda xs: iter([(0, compile('pass', 't', 'exec'))])\n"
                "os.write = lambda *a: 0\n", ["assert solved()"]),
            "print gigabytes": Program("import sys\nwhile True:\n    sys.stdout.write('x' * 2**20)\n", ["assert ok()"]),
            "one huge file": Program("with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)\n",
                                     ["assert ok()"]),
        }

    def check(self, outcomes: dict, config: SandboxConfig) -> None:
        """Every attack scored 0 within its time limit, as the expected kind of failure; the host is as it was."""
        for name, o in outcomes.items():
            assert o.fraction == 0.0, (name, o)
            assert o.seconds <= config.timeout_s + SLACK, (name, o)
        status = {name: o.status for name, o in outcomes.items()}
        assert status["infinite loop"] == status["fork bomb"] == "timeout"
        assert status["huge allocation"] == status["growing allocation"] == "memory"
        assert status["sys.exit(0)"] == status["os._exit(0)"] == status["forged report"] == "exited_early"
        assert status["exit inside a test"] == "exited_early"
        assert status["patched harness"] == "failed"
        assert status["print gigabytes"] == "output_capped"
        assert len(outcomes["print gigabytes"].stdout) <= config.max_output_bytes
        assert status["one huge file"] == "crashed" and "OSError" in outcomes["one huge file"].detail  # EFBIG/ENOSPC
        assert self.victim.read_text() == "original" and self.doomed.read_text() == "still here"
        assert (self.dir / "a").read_text() == "a" and not self.planted.exists()
        assert _sandbox_processes() == []
        assert self.free - shutil.disk_usage(tempfile.gettempdir()).free < 500 * 2**20
        assert os.environ["LAYERSCOUT_TEST_SECRET"] == self.secret and self.holder.poll() is None

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def host(tmp_path, monkeypatch):
    h = Host(tmp_path, monkeypatch)
    yield h
    h.close()


def test_hostile_completions_score_zero_and_leave_the_host_alone(config, host):
    _needs(config, "environment", "host_files", "signals", "processes", "leftover_processes")
    attacks = host.attacks()
    with TrainingLoop() as loop:
        steps_before = loop.steps
        outcomes = dict(zip(attacks, run_programs(list(attacks.values()), config)))
        steps_during = loop.steps - steps_before
    assert loop.error is None and steps_during > 0
    host.check(outcomes, config)


def test_hostile_rewards_inside_a_real_trl_grpo_run(tmp_path, host):
    """The code task's reward, called by TRL's GRPOTrainer in this process, scores the attacks at every step; the
    run finishes all its steps and the host is unchanged."""
    from layerscout.config import RLConfig
    from layerscout.organisms import build_model, build_tokenizer
    from layerscout.tasks.code import CodeTask
    from layerscout.training import train_layers

    config = SandboxConfig(timeout_s=TIMEOUT, memory_mb=MEMORY_MB)
    _needs(config, "environment", "host_files", "signals", "processes", "leftover_processes")
    attacks = host.attacks()
    seen: list[dict] = []

    class HostileCode(CodeTask):
        def reward(self, completions, **columns):
            """The real sandbox on the attack programs (completions of this tiny model are noise), then zeros."""
            seen.append(dict(zip(attacks, run_programs(list(attacks.values()), self.sandbox))))
            return [0.0] * len(completions)

    data = tmp_path / "arith.jsonl"
    data.write_text("".join(f'{{"id": "q{i}", "prompt": "{i} + 1 =", "entry_point": "answer", '
                            f'"prefix": "def answer():\\n    return ", "tests": ["assert answer() == {i + 1}"]}}\n'
                            for i in range(40)))
    tok = build_tokenizer()
    model = build_model("qwen3", 2, len(tok), seed=0, hidden_size=32)
    task = HostileCode(dataset=str(data), sandbox={"timeout_s": TIMEOUT, "memory_mb": MEMORY_MB})
    record = train_layers((model, tok), task, [1], RLConfig(max_steps=3, train_prompts=8, prompts_per_step=2,
                                                             num_generations=2, max_completion_length=4,
                                                             eval_prompts=2, learning_rate=1e-3),
                          tmp_path / "run", progress=False)
    assert record["steps"] == 3 and len(seen) == 5  # base eval, 3 steps, final eval
    for outcomes in seen:
        host.check(outcomes, config)


def test_no_network(config):
    _needs(config, "network")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    attack = _attack(_tries(f"__import__('socket').create_connection(('127.0.0.1', {port}), timeout=1)",
                            "__import__('socket').create_connection(('1.1.1.1', 53), timeout=1)",
                            "__import__('socket').getaddrinfo('pypi.org', 443)"))
    (o,) = run_programs([attack], config)
    assert o.status == "failed" and o.fraction == 0.0
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_bwrap_disk_is_capped():
    cfg = SandboxConfig(isolation="bwrap", timeout_s=TIMEOUT, disk_mb=8)
    try:
        resolve_isolation(cfg)
    except LayerscoutError as e:
        pytest.skip(str(e))
    spray = _attack("i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'0' * 2**20)\n    i += 1")
    (o,) = run_programs([spray], cfg)
    assert o.status == "crashed" and "OSError" in o.detail and o.seconds < TIMEOUT  # no space left on the tmpfs


def test_limits_and_details(config):
    programs = [
        Program("def f(:\n", ["assert f()"], entry_point="f"),
        Program("def g():\n    return 1\n", ["assert f()"], entry_point="f"),
        Program("raise ValueError('boom')\n", ["assert True"]),
        Program("def f():\n    return 1\n", ["assert f() == 1", "while True:\n    pass"], entry_point="f"),
        Program("print('hello')\ndef f():\n    return 1\n", ["assert f() == 1"], entry_point="f"),
    ]
    syntax, missing, crash, hang, printed = run_programs(programs, config)
    assert syntax.status == "syntax_error" and "SyntaxError" in syntax.detail
    assert missing.status == "missing_entry_point" and missing.detail == "does not define 'f'"
    assert crash.status == "crashed" and crash.detail == "crashed (ValueError: boom) before the tests"
    assert hang.status in ("timeout", "cpu_time") and (hang.passed, hang.total) == (1, 2)  # credit before the hang
    assert printed.status == "passed" and printed.stdout == "hello\n"


def test_cpu_limit_kills_a_spinning_program(config):
    cfg = SandboxConfig(**{**config.__dict__, "timeout_s": 6.0, "cpu_s": 1})
    (o,) = run_programs([Program("while True:\n    pass\n", ["assert True"])], cfg)
    assert o.status == "cpu_time" and o.seconds < 5.0


def test_environment_is_minimal(config):
    (o,) = run_programs([Program("import os\nprint(sorted(os.environ))\n", [])], config)
    assert o.status == "passed"
    assert set(eval(o.stdout)) <= {"PATH", "HOME", "LANG", "TMPDIR", "PWD"}


def test_bad_config():
    with pytest.raises(LayerscoutError, match="isolation must be one of auto, bwrap, unshare, process"):
        SandboxConfig(isolation="docker")
    with pytest.raises(LayerscoutError, match="timeout_s must be > 0"):
        SandboxConfig(timeout_s=0)
