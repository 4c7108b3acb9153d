"""`fer` drops TensorFlow's C++ start-up notices from stderr (fer_tasks/lib/quiet.py).

`-v` or FER_TF_LOGS=1 shows them again; every other byte on fd 2 (C++ or
Python), tracebacks and the exit status are unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fer_tasks.lib import quiet

ROOT = Path(__file__).resolve().parents[1]
NOISY = re.compile(r"cuinit|cuda|onednn", re.IGNORECASE)  # the acceptance test

# One CPU-only TensorFlow 2.21 process's start-up lines (the oneDNN one where it is on)
NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796151980.276796   26806 cudart_stub.cc:31] Could not find cuda drivers on"
    b" your machine, GPU will not be used.\n"
    b"E0000 00:00:1796151988.705641   26806 cuda_platform.cc:52] failed call to cuInit: INTERNAL:"
    b" CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
    b"I0000 00:00:1796151988.7 26806 port.cc:153] oneDNN custom operations are on. You may see"
    b" slightly different numerical results due to floating-point round-off errors from"
    b" different computation orders. To turn them off, set the environment variable"
    b" `TF_ENABLE_ONEDNN_OPTS=0`.\n"
)
KEEP = (
    b"E0000 00:00:1796151990.1 26806 some_kernel.cc:7] a real TensorFlow error\n"
    b"progress 1\rprogress 2\r"  # \r-terminated pieces pass as they come
    b"\xff not utf-8\n"
    b"no newline at the end"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FER_TF_LOGS", "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def _noisy_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISY.search(line)]


def _noise_shown(text: str) -> int:
    """How many of the four NOISE lines `text` holds."""
    lines = set(text.splitlines())
    return sum(line in lines for line in NOISE.decode().splitlines())


def test_every_noise_line_is_dropped_and_the_rest_passes_byte_for_byte():
    assert len(_noisy_lines(NOISE.decode())) == 3 and not _noisy_lines(KEEP.decode("latin-1"))
    cut = KEEP.index(b"\n") + 1
    mixed = b"first\n" + NOISE + KEEP[:cut] + NOISE + KEEP[cut:]
    r = subprocess.run(
        [sys.executable, "-I", "-S", quiet.__file__], input=mixed, capture_output=True, timeout=60
    )
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout == b"first\n" + KEEP


# a fake `fer validate` writes TensorFlow's lines and a real one to fd 2, then fails
_FAKE_STAGE = textwrap.dedent("""\
    import os, sys
    import fer_tasks.cli as cli
    import fer_tasks.lib.params as params
    from fer_tasks.lib.errors import FerError

    def stage(p):
        os.write(2, {noise!r} + b"a C++ line to keep\\n")
        print("a Python line to keep", file=sys.stderr)
        raise {exc}("the stage failed")

    params.report_valid = stage  # what `fer validate` calls
    sys.exit(cli.main(sys.argv[1:]))
""")


def _fake_fer(tmp_path: Path, exc: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    code = _FAKE_STAGE.format(noise=NOISE, exc=exc)
    argv = [sys.executable, "-c", code, "validate", "--params", str(ROOT / "params.yaml"), *args]
    return subprocess.run(
        argv, cwd=tmp_path, env=_env(**env), capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [((), {}, False), (("-v",), {}, True), ((), {"FER_TF_LOGS": "1"}, True),
     ((), {"FER_TF_LOGS": "0"}, False)],
)  # fmt: skip
def test_cli_drops_the_notices_unless_asked(tmp_path, args, env, shown):
    r = _fake_fer(tmp_path, "FerError", *args, **env)
    assert r.returncode == 1
    assert "a C++ line to keep\n" in r.stderr and "a Python line to keep\n" in r.stderr
    assert _noise_shown(r.stderr) == (4 if shown else 0), r.stderr
    assert bool(_noisy_lines(r.stderr)) == shown
    if args:  # -v re-raises: the traceback
        assert "Traceback (most recent call last)" in r.stderr
        assert "FerError: the stage failed" in r.stderr
    else:
        assert "fer validate: error: the stage failed" in r.stderr
    # the order of what is kept is the order it was written
    at = [r.stderr.index(s) for s in ("a C++ line", "a Python line", "the stage failed")]
    assert at == sorted(at)


def test_an_unexpected_exception_is_a_bug_report_not_bad_input(tmp_path):
    r = _fake_fer(tmp_path, "KeyError")
    assert r.returncode == 2 and not _noise_shown(r.stderr)
    assert "fer validate: internal error: KeyError: 'the stage failed'" in r.stderr
    assert "rerun with -v for the traceback" in r.stderr and "error: the stage" not in r.stderr
    r = _fake_fer(tmp_path, "KeyError", "-v")
    assert "Traceback (most recent call last)" in r.stderr
    assert "KeyError: 'the stage failed'" in r.stderr.splitlines()[-1]
    assert r.stderr.index("a Python line to keep") < r.stderr.index("Traceback")


def test_a_line_written_just_before_a_crash_still_comes_out(tmp_path):
    code = textwrap.dedent(f"""\
        import os
        from fer_tasks.lib.quiet import filtered_stderr
        with filtered_stderr():
            os.write(2, {NOISE!r} + b"F0000 last words before the abort\\n")
            os.abort()
    """)
    r = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert r.returncode < 0  # killed by SIGABRT, as without the filter
    assert "F0000 last words before the abort" in r.stderr and not _noise_shown(r.stderr)


def test_filter_off_and_fd2_restored_in_process(capfd):
    with quiet.filtered_stderr(enabled=False):
        os.write(2, NOISE)
    assert capfd.readouterr().err.encode() == NOISE
    before = os.fstat(2)
    with quiet.filtered_stderr():
        os.write(2, NOISE + b"kept\n")
    assert capfd.readouterr().err == "kept\n"
    after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)


def test_a_terminal_stays_a_terminal():
    """On a terminal, fd 2 inside the filter is a pseudo-terminal of the same width
    (tqdm draws its bars as before), in raw mode (no \\n -> \\r\\n), and nothing is lost."""
    import fcntl
    import select
    import struct
    import termios
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 123, 0, 0))
    code = textwrap.dedent(f"""\
        import os
        from fer_tasks.lib.quiet import filtered_stderr
        with filtered_stderr():
            os.write(2, b"tty %d %d\\n" % (os.isatty(2), os.get_terminal_size(2).columns))
            for i in range(5000):
                os.write(2, {NOISE!r} + b"line %d\\n" % i)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, env=_env())
    os.close(slave)
    out = b""
    while select.select([master], [], [], 60)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer is gone
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0
    assert out == b"tty 1 123\n" + b"".join(b"line %d\n" % i for i in range(5000))


@pytest.mark.slow
def test_real_tensorflow_stage_is_quiet_and_opt_in_brings_the_lines_back(
    tmp_path, splits, tiny_backbone
):
    """`fer features` (imports TensorFlow, runs the tiny backbone) in a subprocess."""
    params = tmp_path / "params.yaml"
    params.write_text(
        "prepare:\n  source: data.csv\nmodel:\n  weights: none\n"
        "features:\n  batch_size: 64\n  layer: null\n"
        "finetune:\n  phases:\n    head: {after: base, epochs: 1}\n  final: head\n"
    )

    def fer(**env: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "fer_tasks", "features", "--params", str(params),
                "--backbone", str(tiny_backbone), "--data", str(splits["train"].parent),
                "--out", str(tmp_path / f"features{len(env)}")]  # fmt: skip
        return subprocess.run(
            argv, cwd=tmp_path, env=_env(**env), capture_output=True, text=True, timeout=600
        )

    quiet_run, loud_run = fer(), fer(FER_TF_LOGS="1")
    assert quiet_run.returncode == 0 == loud_run.returncode, quiet_run.stderr + loud_run.stderr
    assert not _noisy_lines(quiet_run.stderr), quiet_run.stderr
    assert "INFO fer_tasks.stages.features" in quiet_run.stderr  # the project's own logging
    # the same run with the opt-in shows them (where this machine's TensorFlow prints any)
    if not _noisy_lines(loud_run.stderr):  # the CLI tests above cover the opt-in then
        pytest.skip("this machine's TensorFlow prints no cuInit/CUDA/oneDNN lines")
