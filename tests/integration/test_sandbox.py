"""Attacks on the sandbox that runs submitted programs (``mechwork.challenges._sandbox``).

Each attack is a ``label(a, b)`` written to *win* if the isolation gives way: it reads the hidden table
and returns it (an exact score), or it simply returns labels after doing what it must not. So each
sandboxed attack must end in a :class:`SubmissionError`, and the same file run unisolated (trusted)
must cheat — which shows each test can fail. The organiser's pack is hashed before and after every
test. On a machine where the sandbox does not work these tests fail with the reason; they never skip.
"""

import hashlib
import json
import os
import pwd
import socket
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mechwork.challenges import SubmissionError, create_program_challenge, score_submission
from mechwork.challenges._sandbox import OVERRIDE, SandboxUnavailable, isolation
from mechwork.challenges._submissions import execute_program, read_json, run_program
from mechwork.cli._main import EXIT_USAGE, main
from mechwork.models.zoo._training import Architecture, TrainingRecipe

SECRET = [[int((7 * a + 3 * b) % 5 < 2) for b in range(113)] for a in range(113)]
FAIR = "def label(a, b):\n    return int((7 * a + 3 * b) % 5 < 2)\n"

# Shared by the attacks: find the 113 x 113 grid in whatever JSON an answer file holds, and cheat with it.
CHEAT = '''
import json, os
def grid_in(data):
    if isinstance(data, list) and len(data) == 113 and all(isinstance(r, list) and len(r) == 113 for r in data):
        return data
    for v in (data.values() if isinstance(data, dict) else data if isinstance(data, list) else []):
        if (found := grid_in(v)) is not None:
            return found
def cheat_with(path):
    with open(path) as f:
        grid = grid_in(json.load(f))
    global label
    label = lambda a, b: grid[a][b]
'''


@pytest.fixture(scope="module", autouse=True)
def sandbox_works():
    found = isolation()
    if not found.available:
        pytest.fail(f"the challenge sandbox does not work on this machine: {found.reason}")


@pytest.fixture(scope="module")
def organiser(tmp_path_factory):
    """An organiser's folder holding a posed pack (``pack/``, with ``answer.json``) and submissions."""
    folder = tmp_path_factory.mktemp("organiser")
    tiny = Architecture(d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=3, activation="relu")
    create_program_challenge("secret", torch.tensor(SECRET), folder / "pack", arch=tiny,
                             recipe=TrainingRecipe(epochs=1, lr=1e-3), answer_text="7a + 3b mod 5 below 2")
    assert (folder / "pack" / "answer.json").is_file()
    return folder


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(autouse=True)
def pack_untouched(request):
    if "organiser" not in request.fixturenames:
        yield
        return
    pack = request.getfixturevalue("organiser") / "pack"
    before = tree_hash(pack)
    yield
    assert tree_hash(pack) == before, "the organiser's pack changed"


def submit(organiser: Path, name: str, code: str, *, timeout: float = 10):
    path = organiser / f"{name}.py"
    path.write_text(CHEAT + textwrap.dedent(code))
    return score_submission(organiser / "pack", path, timeout=timeout)


@pytest.fixture
def secrets(tmp_path, monkeypatch):
    """A home folder and a cache folder, each with a marker file the submission must not read."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    for folder in (home, cache):
        folder.mkdir()
        (folder / "marker.json").write_text(json.dumps({"table": SECRET}))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MECHWORK_CACHE", str(cache))
    return {"home": home, "cache": cache, "real home": Path(pwd.getpwuid(os.getuid()).pw_dir)}


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def cheat(what: str, organiser: Path, secrets: dict, listener: socket.socket) -> str:
    """The code of one attack; it ends with ``label`` returning the hidden table if the attack worked."""
    answer, real_home = organiser / "pack" / "answer.json", secrets["real home"]
    return {
        "answer by absolute path": f"cheat_with({str(answer)!r})",
        "answer relative to the submission": """
            from pathlib import Path
            cheat_with(Path(__file__).parent / "pack" / "answer.json")""",
        "answer relative to the working folder": f"""
            for up in range(12):
                try:
                    cheat_with("../" * up + {str(answer.relative_to('/'))!r})
                    break
                except OSError:
                    pass
            else:
                raise FileNotFoundError("no answer.json up from " + os.getcwd())""",
        "answer by glob": f"""
            import glob
            found = glob.glob({str(organiser)!r} + "/**/answer.json", recursive=True)
            found += glob.glob(os.path.dirname(__file__) + "/**/answer.json", recursive=True)
            cheat_with(found[0])""",
        "hidden table from mechwork": f"""
            from mechwork.challenges import get_challenge
            grid = get_challenge({str(organiser / 'pack')!r}).hidden("program").table.tolist()
            label = lambda a, b: grid[a][b]""",
        "torch": f"""
            import torch
            cheat_with({str(answer)!r})""",
        "cache folder ($MECHWORK_CACHE)": f"cheat_with({str(secrets['cache'] / 'marker.json')!r})",
        "home folder (~)": f"""
            home = os.path.expanduser("~/marker.json")
            cheat_with(home if os.path.isfile(home) else {str(secrets['home'] / 'marker.json')!r})""",
        "the real home and its .cache": f"""
            found = [os.path.join(d, n) for d in ({str(real_home)!r}, {str(real_home / '.cache')!r})
                     if os.path.isdir(d) for n in os.listdir(d) if os.path.isfile(os.path.join(d, n))]
            open(found[0], "rb").close()
            cheat_with({str(answer)!r})""",
        "TCP to 127.0.0.1": f"""
            import socket
            socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}), timeout=3).close()
            cheat_with({str(answer)!r})""",
        "DNS lookup": f"""
            import socket
            socket.getaddrinfo("localhost", 80)
            cheat_with({str(answer)!r})""",
        "fork many processes": f"""
            for _ in range(50):
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)
            cheat_with({str(answer)!r})""",
    }[what]


ATTACKS = ["answer by absolute path", "answer relative to the submission", "answer relative to the working folder",
           "answer by glob", "hidden table from mechwork", "torch", "cache folder ($MECHWORK_CACHE)",
           "home folder (~)", "the real home and its .cache", "TCP to 127.0.0.1", "DNS lookup",
           "fork many processes"]
# The control runs each attack unisolated; the real home's files are whatever this machine has.
CONTROLS = [a for a in ATTACKS if a != "the real home and its .cache"]


@pytest.mark.parametrize("what", ATTACKS)
def test_the_attack_fails_in_the_sandbox(what, organiser, secrets, listener):
    with pytest.raises(SubmissionError, match="importing the file raised"):
        submit(organiser, "cheat", cheat(what, organiser, secrets, listener))
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected


@pytest.mark.parametrize("what", CONTROLS)
def test_the_same_attack_cheats_unisolated(what, organiser, secrets, listener, monkeypatch):
    """The control: with no sandbox (trusted), the same file does cheat."""
    monkeypatch.setenv(OVERRIDE, "none")
    path = organiser / "cheat.py"
    path.write_text(CHEAT + textwrap.dedent(cheat(what, organiser, secrets, listener)))
    run = execute_program(path, timeout=300, trust=True)
    assert run.isolation == "unisolated" and run.table.tolist() == SECRET
    if what == "TCP to 127.0.0.1":
        listener.accept()[0].close()


def test_a_fair_program_scores_in_the_sandbox(organiser):
    (organiser / "fair.py").write_text(FAIR)
    run = execute_program(organiser / "fair.py")
    assert run.isolation == "bubblewrap" and run.table.tolist() == SECRET
    assert score_submission(organiser / "pack", organiser / "fair.py").numbers["exact"]


def test_the_sandbox_sees_only_the_standard_library_and_the_submission(organiser):
    code = """
        import importlib.util, json, os, sys, sysconfig
        std = sysconfig.get_path("stdlib")
        seen = [os.path.join(r, n) for r, _, names in os.walk("/") if not r.startswith((std, "/dev"))
                for n in names]
        other = [f for f in seen if not (".so" in os.path.basename(f) or f == os.path.realpath(sys.executable)
                                         or "/locale/" in f or "/gconv/" in f)]
        site = [n for d in ("site-packages", "dist-packages") if os.path.isdir(os.path.join(std, d))
                for n in os.listdir(os.path.join(std, d))]
        raise SystemExit("REPORT" + json.dumps({
            "other": other, "site": site, "top": sorted(os.listdir("/")), "cwd": os.getcwd(),
            "modules": [m for m in ("mechwork", "torch", "numpy", "pytest") if importlib.util.find_spec(m)]}))
    """
    (organiser / "look.py").write_text(textwrap.dedent(code))
    with pytest.raises(SubmissionError, match="REPORT") as e:
        run_program(organiser / "look.py")
    seen = json.loads(str(e.value).split("REPORT", 1)[1])
    assert seen["other"] == ["/submission/look.py"]
    assert seen["site"] == [] and seen["modules"] == []
    assert not {"proc", "etc", "sys", "run", "var"} & set(seen["top"]) and seen["cwd"] == "/tmp"


def test_no_writes_reach_the_organisers_files(organiser, secrets):
    code = f"""
        import shutil
        done = []
        for attempt in (lambda: open({str(organiser / 'pack' / 'answer.json')!r}, "w").write("{{}}"),
                        lambda: os.remove({str(organiser / 'pack' / 'challenge.json')!r}),
                        lambda: shutil.rmtree({str(organiser / 'pack' / 'model')!r}),
                        lambda: open({str(secrets['cache'] / 'planted')!r}, "w").write("x"),
                        lambda: open({str(secrets['home'] / '.bashrc')!r}, "a").write("x"),
                        lambda: open(__file__, "a").write("x")):
            try:
                attempt()
                done.append(attempt)
            except OSError:
                pass
        if not done:
            raise PermissionError("no write reached the organiser")
        label = lambda a, b: 0
    """
    with pytest.raises(SubmissionError, match="PermissionError: no write reached"):
        submit(organiser, "vandal", code)
    assert not (secrets["cache"] / "planted").exists() and not (secrets["home"] / ".bashrc").exists()
    assert (organiser / "vandal.py").read_text().endswith("label = lambda a, b: 0\n")


def test_memory_past_the_limit_fails(organiser):
    with pytest.raises(SubmissionError, match="MemoryError"):
        submit(organiser, "hog", "block = bytearray(3 * 1024**3)\nlabel = lambda a, b: 0\n")


def live_processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_a_program_that_never_ends_is_stopped_and_leaves_nothing(organiser):
    code = """
        import signal
        for s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
    """
    start = time.monotonic()
    with pytest.raises(SubmissionError, match="did not finish all 12769 inputs within 2 s"):
        submit(organiser, "spin_7f3a", code, timeout=2)
    assert time.monotonic() - start < 10
    deadline = time.monotonic() + 5  # killed with bwrap (SIGKILL on its death): gone within moments
    while live_processes_with("spin_7f3a") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_processes_with("spin_7f3a") == []


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_printing_megabytes_is_stopped(organiser, stream):
    code = f"import sys\nsys.{stream}.write('x' * 5 * 1024**2)\nsys.{stream}.flush()\nlabel = lambda a, b: 0\n"
    with pytest.raises(SubmissionError, match="printed more than 1 MiB"):
        submit(organiser, "chatty", code)


@pytest.mark.parametrize("value", ["2", "-1", "0.5", "'1'", "None", "float('nan')", "10**100", "[1]", "Weird()"])
def test_labels_other_than_0_and_1_fail(organiser, value):
    code = f"""
        class Weird:
            def __eq__(self, other): return True
            def __hash__(self): return 0
            def __int__(self): return 5
        def label(a, b):
            return {value}
    """
    with pytest.raises(SubmissionError, match=r"label\(0, 0\) returned .*labels must be 0 or 1"):
        submit(organiser, "odd", code)


@pytest.mark.parametrize("forged, message", [
    ('{"table": [[7] * 113] * 113}', r"row 0, column 0 is 7"),
    ('{"table": "all right"}', r"113 x 113"),
    ('{"score": 1.0}', r"not a label table"),
])
def test_a_forged_answer_is_checked_like_a_table(organiser, forged, message):
    code = f"""
        for fd in range(1, 32):
            try:
                os.write(fd, (json.dumps({forged}) + "\\n").encode())
            except OSError:
                pass
        os._exit(0)
    """
    with pytest.raises(SubmissionError, match=message):
        submit(organiser, "forger", code)


def test_without_isolation_untrusted_code_is_refused(organiser, monkeypatch, capsys):
    monkeypatch.setenv(OVERRIDE, "none")
    assert not isolation().available and "MECHWORK_SANDBOX=none" in isolation().reason
    (organiser / "fair.py").write_text(FAIR)
    with pytest.raises(SandboxUnavailable) as e:
        run_program(organiser / "fair.py")
    assert "\n" not in str(e.value) and "--trust" in str(e.value) and "without isolation" in str(e.value)
    with pytest.raises(SandboxUnavailable):
        score_submission(organiser / "pack", organiser / "fair.py")
    assert main(["challenge", "score", str(organiser / "pack"), str(organiser / "fair.py")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to run untrusted code" in err
    (organiser / "table.json").write_text(json.dumps({"labels": SECRET}))  # data needs no sandbox
    assert score_submission(organiser / "pack", organiser / "table.json").numbers["exact"]


def test_trusted_without_isolation_runs_and_says_unisolated(organiser, monkeypatch, tmp_path):
    monkeypatch.setenv(OVERRIDE, "none")
    (organiser / "fair.py").write_text(FAIR)
    run = execute_program(organiser / "fair.py", trust=True)
    assert run.isolation == "unisolated" and run.table.tolist() == SECRET
    # the same choice from the CLI, recorded in the score
    out = tmp_path / "score.json"
    assert main(["challenge", "score", str(organiser / "pack"), str(organiser / "fair.py"), "--trust",
                 "--out", str(out)]) == 0
    numbers = json.loads(out.read_text())["numbers"]
    assert numbers["isolation"] == "unisolated" and numbers["exact"]
    monkeypatch.setenv(OVERRIDE, "auto")
    assert execute_program(organiser / "fair.py", trust=True).isolation == "bubblewrap"  # sandboxed where it can


def test_data_submissions_are_size_limited_and_parsed_as_data(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(40 * 1024**2)  # sparse: nothing is read
    with pytest.raises(SubmissionError, match="larger than submissions may be"):
        score_submission("pairs", big)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(SubmissionError, match="nested too deeply"):
        read_json(deep)
    code = tmp_path / "code.json"
    code.write_text(json.dumps({"labels": "__import__('os').system('touch pwned')"}))
    with pytest.raises(SubmissionError, match="113 x 113"):
        score_submission("pairs", code)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_the_builtin_pairs_hidden_function_is_out_of_reach(tmp_path):
    (tmp_path / "cheat.py").write_text("from mechwork.models.zoo.pairs import hidden_label as label\n")
    with pytest.raises(SubmissionError, match="ModuleNotFoundError: No module named 'mechwork'"):
        score_submission("pairs", tmp_path / "cheat.py")
