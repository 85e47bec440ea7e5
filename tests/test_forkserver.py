"""The test harness's fork server (tests/forkserver.py) runs a command as a fresh interpreter
would: same exit status, stdout, stderr, stdin, environment, atexit handlers and logging set-up."""

import re
import subprocess
import sys
import textwrap

import pytest

import forkserver
from helpers import BIN, USER_DIR, assert_user_error, cli, run

SCRIPT = textwrap.dedent("""\
    import atexit, os, sys
    atexit.register(lambda: print("atexit ran"))
    print("in:", sys.stdin.read().strip(), "env:", os.environ.get("FORK_TEST"), "path0:",
          os.path.basename(sys.path[0]), "argv:", sys.argv[1:], "name:", __name__)
    print("to stderr", file=sys.stderr)
    sys.exit(int(sys.argv[1]))
    """)


def both(cmd, **kw):
    """The command run through the fork server and as a plain subprocess."""
    assert forkserver.target_of(cmd) is not None, cmd
    forked = run(cmd, check=False, **kw)
    forkserver.ENABLED = False
    try:
        plain = run(cmd, check=False, **kw)
    finally:
        forkserver.ENABLED = True
    return forked, plain


@pytest.mark.parametrize("status", [0, 3])
def test_script_runs_as_in_a_fresh_interpreter(tmp_path, status):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    forked, plain = both([sys.executable, script, str(status), "x y"], input="hello\n",
                         env={"FORK_TEST": "seen"})
    assert forked.returncode == plain.returncode == status
    assert forked.stdout == plain.stdout
    assert "in: hello env: seen path0: " + tmp_path.name in forked.stdout
    assert "argv: ['%d', 'x y'] name: __main__\natexit ran\n" % status in forked.stdout
    assert forked.stderr == plain.stderr == "to stderr\n"


def test_traceback_and_exit_1_on_an_uncaught_error(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("raise ValueError('boom')\n")
    forked, plain = both([sys.executable, script])
    assert forked.returncode == plain.returncode == 1
    assert forked.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1] == "ValueError: boom"
    assert "Traceback" in forked.stderr


def test_plugin_usage_error_is_the_same_one_line(toy_data):
    """nar_refine's excepthook (one line, exit 2) works in the fork as in a console script."""
    cmd = [cli("fairseq-train"), toy_data, "--user-dir", USER_DIR, "--task", "nar_translation",
           "--arch", "transformer", "--max-tokens", "100", "--max-update", "1", "--save-dir", "/nonexistent/never"]
    forked, plain = both(cmd)
    assert assert_user_error(forked, "nar_translation") == assert_user_error(plain, "nar_translation")


def _log_lines(text, name):
    """The lines of one logger, without their timestamp and with wall-clock durations ("done
    training in 0.3 seconds") masked: two runs differ in those only."""
    return [re.sub(r"\d+(\.\d+)? seconds", "N seconds", re.sub(r"^[\d-]+ [\d:]+ ", "", l))
            for l in text.splitlines() if name in l]


def test_fairseq_logging_goes_where_the_cli_sends_it(toy_data, tmp_path):
    """fairseq-train logs to stdout in fairseq's format (it configures logging before it imports
    fairseq); fairseq-generate's logging is set up by the fairseq import itself (stderr)."""
    cmd = [cli("fairseq-train"), toy_data, "--user-dir", USER_DIR, "--task", "nar_translation",
           "--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss", "--max-tokens", "500",
           "--max-update", "1", "--optimizer", "adam", "--lr", "1e-3", "--save-dir", str(tmp_path),
           "--no-save", "--disable-validation"]
    forked, plain = both(cmd)
    assert forked.returncode == plain.returncode == 0, forked.stderr[-2000:]
    train = _log_lines(forked.stdout, "| fairseq_cli.train |")
    assert train and train[-1] == _log_lines(plain.stdout, "| fairseq_cli.train |")[-1]
    assert not _log_lines(forked.stderr, "fairseq_cli.train")
    forked, plain = both([cli("fairseq-generate"), toy_data, "--user-dir", USER_DIR, "--path",
                          "/nonexistent/model.pt", "--task", "nar_translation"])
    assert forked.returncode == plain.returncode == 2
    generate = _log_lines(forked.stderr, "fairseq_cli.generate")
    assert generate and generate == _log_lines(plain.stderr, "fairseq_cli.generate")
    assert not forked.stdout and not plain.stdout


def test_timeout_kills_the_command(tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, script], timeout=2)
    script.write_text("print(1)\n")
    assert run([sys.executable, script]).stdout == "1\n"  # the server still serves


def test_import_time_environment_gets_a_fresh_interpreter(tmp_path):
    """A thread count or hash seed other than the server's cannot be set after the fork: such a
    command runs as a plain subprocess."""
    script = tmp_path / "threads.py"
    script.write_text("import os, torch\nprint(os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), os.getppid())\n")
    one = run([sys.executable, script]).stdout.split()
    assert one[:2] == ["1", "1"] and int(one[2]) == forkserver.SERVER.proc.pid  # a fork of the server
    assert not forkserver.SERVER.usable_for({**forkserver.SERVER.env, "OMP_NUM_THREADS": "2"})
    two = run([sys.executable, script], env={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}).stdout.split()
    assert two[:2] == ["2", "2"] and int(two[2]) != forkserver.SERVER.proc.pid


def test_shell_scripts_reach_the_forks(tmp_path):
    """A bash command's fairseq console scripts and `python script.py` run in forks (torch is
    already imported there) with the shell's pipes, arguments and exit statuses; `python -c`
    and commands the server does not know run as plain processes."""
    script = tmp_path / "script.py"
    script.write_text("import sys\n" + SCRIPT.replace('print("to stderr"', 'print("preloaded:", "torch" in sys.modules)\nprint("to stderr"'))
    block = (f'printf "hello\\n" | python {script} 3 "x y" || echo "status $?"\n'
             'python -c "import sys; print(\'-c preloaded:\', \'torch\' in sys.modules)"\n'
             'fairseq-preprocess --help | head -1\n'
             'fairseq-train --no-such-option >/dev/null 2>&1 || echo "train status $?"\n'
             'echo "kind: $(type -t fairseq-train)"\n')
    env = {"FORK_TEST": "seen", "PATH": f"{BIN}:/usr/bin:/bin"}
    forked = run(["bash", "-c", block], env=env)
    forkserver.ENABLED = False
    try:
        plain = run(["bash", "-c", block], env=env)
    finally:
        forkserver.ENABLED = True
    assert "preloaded: True" in forked.stdout and "preloaded: False" in plain.stdout
    assert "kind: function" in forked.stdout and "kind: file" in plain.stdout
    mask = lambda out: out.replace("preloaded: True", "preloaded: -").replace(
        "preloaded: False", "preloaded: -").replace("kind: function", "kind: -").replace("kind: file", "kind: -")
    assert mask(forked.stdout) == mask(plain.stdout)
    for out in (forked.stdout, plain.stdout):
        assert "in: hello env: seen" in out and "argv: ['3', 'x y']" in out and "status 3" in out
        assert "-c preloaded: False" in out and "usage: fairseq-preprocess" in out
        assert "train status 1" in out  # fairseq's parser raises on an unknown option
