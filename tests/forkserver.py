"""Run console scripts and Python scripts in a fork of a pre-imported interpreter.

Every fairseq CLI run of the tests spends about 3 CPU seconds importing torch, fairseq (and,
through fairseq, scikit-learn and scipy) before it reads its first argument; the suite makes
hundreds of such runs. A server process imports those libraries once; each command then runs in
a fork of it: its own process, argv, working directory, environment, stdin/stdout/stderr files,
exit status and atexit handlers, calling the same entry point as the console script
(``fairseq_cli.train:cli_main`` for ``fairseq-train``) or ``runpy`` for ``python script.py``.
The command-line interfaces and the code they run are unchanged; only the interpreter start is
shared. ``NAR_REFINE_TEST_FORK=0`` runs every command as a plain subprocess instead.

Shell scripts (``bash examples/multi30k/run_pipeline.sh``, the README's Quick start) reach the
same forks through exported bash functions named after the console scripts (and ``python`` for
``python script.py``): each calls tests/fork_client.py, which hands the command, its
environment, working directory and its stdin/stdout/stderr descriptors to a server listening on
a Unix socket and exits with the command's status. Functions take precedence over ``PATH``, so
``source .venv/bin/activate`` does not bypass them; ``exec``, ``nice``, ``timeout`` and
``nohup`` do (those commands run as plain processes).

Commands whose import-time environment differs from the server's (hash seed, thread counts,
``PYTHONPATH``) run as plain subprocesses, as do the ones this module does not recognise.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
from multiprocessing.connection import Connection, wait
from pathlib import Path


def _cuda_build():
    """Whether torch was built with CUDA (only then does CUDA_VISIBLE_DEVICES, read once when
    CUDA starts, change what a command does)."""
    try:
        import torch
    except ImportError:
        return True
    return torch.version.cuda is not None


# read when the interpreter (or torch) starts: a fork cannot change them. CUDA_VISIBLE_DEVICES
# only counts for a CUDA build of torch: a CPU build reads it never, so commands that set it
# (run_pipeline.sh --gpu pins one GPU) still run in forks here
IMPORT_TIME_ENV = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONPATH",
                   "LD_PRELOAD", "PYTHONWARNINGS") + (("CUDA_VISIBLE_DEVICES",) if _cuda_build() else ())
_ENTRY = re.compile(r"^from ([\w.]+) import (\w+)$", re.M)


def entry_point(cmd0):
    """(module, function) of a Python console script (``fairseq-train``), else None."""
    path = Path(cmd0)
    if path.parent != Path(sys.executable).parent or not path.is_file():
        return None
    try:
        head = path.read_text()[:2000]
    except (OSError, UnicodeDecodeError):
        return None
    m = _ENTRY.search(head)
    return (m.group(1), m.group(2)) if m and head.startswith("#!") else None


def target_of(cmd):
    """What to run in the fork: ("entry", module, func, argv) or ("script", path, argv), or
    None for a command that needs a fresh interpreter."""
    cmd = [str(c) for c in cmd]
    if cmd[0] == sys.executable:
        if len(cmd) > 1 and cmd[1].endswith(".py") and Path(cmd[1]).is_file():
            return ("script", cmd[1], cmd[1:])
        return None
    ep = entry_point(cmd[0])
    return ("entry", ep[0], ep[1], cmd) if ep else None


# sys.path of a fresh interpreter, less its first entry (the script's folder): set by serve()
_LIBRARY_PATH = []


# the root logger's set-up that importing fairseq leaves (some of its modules call
# logging.basicConfig at import): recorded by the server
_FAIRSEQ_LOGGING = None


def _fresh_logging():
    """Give the fork the logging state of a fresh interpreter: no handlers, and the set-up that
    fairseq's import leaves applied at the first import of fairseq (or of anything that imports
    it), as in a new process. So a CLI that configures logging before importing fairseq
    (fairseq-train: stdout) keeps its own, and one that imports fairseq first (fairseq-generate)
    gets fairseq's (stderr)."""
    import builtins
    import logging

    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.WARNING)
    original = builtins.__import__

    def hooked(name, globals=None, locals=None, fromlist=(), level=0):
        module = original(name, globals, locals, fromlist, level)
        if level == 0 and name.split(".")[0] in ("fairseq", "nar_refine", "fairseq_cli"):
            builtins.__import__ = original
            if _FAIRSEQ_LOGGING is not None:
                logging.basicConfig(**_FAIRSEQ_LOGGING)
        return module

    builtins.__import__ = hooked


def _child(request):
    """In the fork: become the command, then exit as an interpreter would."""
    import atexit
    import logging
    import runpy
    import traceback

    target, env, cwd, files = request
    code = 1
    try:
        if not isinstance(files[0], int):  # a command of helpers.run: its own process group
            os.setpgid(0, 0)                 # (killed on timeout)
        for fd, spec in enumerate(files):
            if isinstance(spec, int):  # a descriptor received from a shell's client
                if spec != fd:
                    os.dup2(spec, fd)
                    os.close(spec)
                continue
            name, flags = spec
            f = os.open(name, flags, 0o644)
            os.dup2(f, fd)
            os.close(f)
        os.environ.clear()
        os.environ.update(env)
        if cwd:
            os.chdir(cwd)
        _fresh_logging()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            if target[0] == "entry":
                _, module, func, argv = target
                sys.argv = list(argv)
                sys.path[:] = [str(Path(argv[0]).parent)] + _LIBRARY_PATH
                mod = __import__(module, fromlist=[func])
                code = getattr(mod, func)()
            else:
                _, path, argv = target
                sys.argv = list(argv)
                sys.path[:] = [str(Path(path).resolve().parent)] + _LIBRARY_PATH
                runpy.run_path(path, run_name="__main__")
                code = 0
        except SystemExit as e:
            code = e.code
        except BaseException:  # noqa: B902 - report as the interpreter would, then exit 1
            sys.excepthook(*sys.exc_info())
            code = 1
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: B902
            traceback.print_exc()
        logging.shutdown()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def _preload():
    """Import torch and fairseq once; record what a fresh interpreter would start from."""
    global _LIBRARY_PATH, _FAIRSEQ_LOGGING
    import logging

    import fairseq  # noqa: F401 - the point of the server: torch and fairseq imported once
    import fairseq.options  # noqa: F401
    import fairseq.checkpoint_utils  # noqa: F401
    import fairseq.sequence_generator  # noqa: F401

    root = logging.getLogger()
    if root.handlers and root.handlers[0].formatter is not None:
        fmt = root.handlers[0].formatter
        _FAIRSEQ_LOGGING = dict(format=fmt._fmt, datefmt=fmt.datefmt, level=root.level)
    _LIBRARY_PATH = [p for p in sys.path if p and p != str(Path(__file__).parent)]


def serve(fd):
    """The server loop: import once, then fork one child per request."""
    _preload()
    conn = Connection(fd)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            conn.close()
            _child(request)
        conn.send(pid)
        _, status = os.waitpid(pid, 0)
        conn.send(os.waitstatus_to_exitcode(status))


def _server_command(call):
    """The command line of a server process: this module imported, then ``forkserver.CALL``."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                                  f"import forkserver; forkserver.{call}"]


class ForkServer:
    """One server per test process, started on first use."""

    def __init__(self):
        self.proc = self.conn = None
        self.env = None

    def start(self, env):
        import socket

        parent, child = socket.socketpair()
        self.proc = subprocess.Popen(
            _server_command(f"serve({child.fileno()})"),
            pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        child.close()
        self.conn = Connection(os.dup(parent.fileno()))
        parent.close()
        self.env = {k: env.get(k) for k in IMPORT_TIME_ENV}

    def usable_for(self, env):
        return self.proc is None or ({k: env.get(k) for k in IMPORT_TIME_ENV} == self.env
                                     and self.proc.poll() is None)

    def run(self, target, env, timeout, input, tmpdir):
        """subprocess.run(..., capture_output=True, text=True) for a target of target_of."""
        if self.proc is None or self.proc.poll() is not None:
            self.start(env)
        tmpdir = Path(tmpdir)
        tmpdir.mkdir(parents=True, exist_ok=True)
        stdin, out, err = (tmpdir / n for n in ("stdin", "stdout", "stderr"))
        stdin.write_text(input or "")
        trunc = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.conn.send((target, dict(env), os.getcwd(),
                        [(str(stdin), os.O_RDONLY), (str(out), trunc), (str(err), trunc)]))
        pid = self.conn.recv()
        if not wait([self.conn], timeout):
            os.killpg(pid, signal.SIGKILL)
            self.conn.recv()
            raise subprocess.TimeoutExpired(target[-1], timeout)
        rc = self.conn.recv()
        result = subprocess.CompletedProcess(target[-1], rc, out.read_text(errors="replace"),
                                             err.read_text(errors="replace"))
        for f in (stdin, out, err):
            f.unlink()
        return result


# --- commands of shell scripts ---------------------------------------------------------------
SHELL_COMMANDS = ("fairseq-train", "fairseq-generate", "fairseq-interactive", "fairseq-preprocess")
CLIENT = Path(__file__).with_name("fork_client.py")
REFUSED = -1000  # the client's cue to run the command itself (exec)


def _as_local(cmd):
    """A command found through another path to this interpreter's bin folder (a linked .venv),
    spelled as target_of expects it."""
    cmd = list(cmd)
    here = Path(sys.executable).parent
    if cmd and cmd[0] and Path(cmd[0]).parent.resolve() == here.resolve():
        name = Path(cmd[0]).name
        cmd[0] = sys.executable if re.fullmatch(r"python[\d.]*", name) else str(here / name)
    return cmd


def _recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _handle(sock, import_env):
    """In a fork of the socket server: one client's command, run in a grandchild; its exit
    status goes back to the client."""
    import socket

    code = 1
    try:
        head, fds, _, _ = socket.recv_fds(sock, 8, 3)
        argv, env, cwd = json.loads(_recv_exactly(sock, struct.unpack("!Q", head)[0]))
        target = None
        if {k: env.get(k) for k in IMPORT_TIME_ENV} == import_env:
            try:
                os.chdir(cwd)  # target_of reads a script's path relative to it
                target = target_of(_as_local(argv))
            except OSError:
                target = None
        if target is None:
            sock.sendall(struct.pack("!i", REFUSED))
            code = 0
            return
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child((target, env, cwd, list(fds)))
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        sock.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
        code = 0
    finally:
        os._exit(code)


def serve_socket(path):
    """The shell server: import once, then one fork per connection on the Unix socket ``path``,
    until stdin (a pipe from the test process) closes."""
    import select
    import socket

    _preload()
    import_env = {k: os.environ.get(k) for k in IMPORT_TIME_ENV}
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    os.write(1, b"ready\n")  # shell_env waits for this: a client never finds no server
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    try:
        while True:
            ready, _, _ = select.select([listener, 0], [], [])
            if 0 in ready:
                return
            sock, _ = listener.accept()
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _handle(sock, import_env)
            sock.close()
    finally:
        listener.close()
        os.unlink(path)
        os.rmdir(os.path.dirname(path))  # shell_env's own temporary folder


class ShellServer:
    """One socket server per import-time environment, started on first use."""

    def __init__(self, env):
        import tempfile

        self.path = os.path.join(tempfile.mkdtemp(prefix="nar_refine_fork_"), "server.sock")
        self.proc = subprocess.Popen(
            _server_command(f"serve_socket({self.path!r})"),
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.proc.stdout.readline()  # "ready" once it listens (EOF if it failed to start)
        self.proc.stdout.close()

    def functions(self):
        """Environment entries that define the exported bash functions (bash reads them at start
        and passes them on to the scripts it runs)."""
        client = f'"{sys.executable}" -S -I "{CLIENT}"'
        env = {"NAR_REFINE_FORK_SOCKET": self.path}
        # not on PATH: `command NAME` fails as bash would (note: `command -v NAME` now finds
        # the function whether or not NAME is on PATH)
        for name in SHELL_COMMANDS:
            env[f"BASH_FUNC_{name}%%"] = (
                f'() {{ local p; p=$(type -P {name}) || {{ command {name} "$@"; return; }}; '
                f'{client} {name} "$p" "$@"; }}')
        env["BASH_FUNC_python%%"] = (
            '() { local p; case "${1-}" in *.py) p=$(type -P python) || { command python "$@"; '
            f'return; }}; {client} python "$p" "$@" ;; *) command python "$@" ;; esac; }}')
        return env


_SHELL_SERVERS = {}


def shell_env(env):
    """``env`` for a ``bash`` command whose console scripts and Python scripts run in forks."""
    if not ENABLED:
        return dict(env)
    key = tuple(env.get(k) for k in IMPORT_TIME_ENV)
    server = _SHELL_SERVERS.get(key)
    if server is None or server.proc.poll() is not None:
        server = _SHELL_SERVERS[key] = ShellServer(env)
    return {**env, **server.functions()}


SERVER = ForkServer()
ENABLED = os.environ.get("NAR_REFINE_TEST_FORK", "1") != "0"
