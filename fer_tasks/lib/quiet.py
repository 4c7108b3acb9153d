"""Drop TensorFlow's C++ start-up notices from stderr; forward everything else.

On a machine without a GPU every TensorFlow process prints a handful of
notices (no CUDA driver, failed cuInit, ...). Several are written by C++
before absl logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot hide them,
and TF_CPP_MIN_LOG_LEVEL=3 would hide real errors too. `filtered_stderr()`
therefore points file descriptor 2 at a pipe read by a small filter process
(this file run as a script, standard library only) that drops the lines
matching NOISE and passes every other byte through unchanged, in order, to the
real stderr. A process rather than a thread: a line written just before a
crash (a C++ abort) still comes out. Where stderr is a terminal, the pipe is a
pseudo-terminal, so tqdm's progress bars and other isatty() checks behave as
without the filter. The `fer` CLI uses it unless `-v` or FER_TF_LOGS=1 is given.
"""

from __future__ import annotations

import os
import re
import select
import sys

# Substrings of the lines dropped: only TensorFlow/XLA start-up notices.
NOISE = (
    b"All log messages before absl::InitializeLog() is called",  # absl's preamble
    b"Could not find cuda drivers on your machine",  # cudart_stub.cc, no CUDA driver
    b"failed call to cuInit",  # cuda_platform.cc / cuda_diagnostics, no GPU
    b"oneDNN custom operations are on",  # numerics notice (TF_ENABLE_ONEDNN_OPTS is left alone)
    b"TF-TRT Warning: Could not find TensorRT",
    b"Unable to register cuDNN factory",
    b"Unable to register cuFFT factory",
    b"Unable to register cuBLAS factory",
    b"computation placer already registered",
    b"This TensorFlow binary is optimized to use available CPU instructions",
    b"rebuild TensorFlow with the appropriate compiler flags",  # the line after it
)
_NOISE_RE = re.compile(b"|".join(re.escape(p) for p in NOISE))
_PARTIAL_WAIT_S = 0.2  # an unterminated line (a prompt, a progress bar) waits no longer


def is_noise(line: bytes) -> bool:
    return _NOISE_RE.search(line) is not None


def show_tf_logs(verbose: bool = False) -> bool:
    """True when TensorFlow's start-up lines should be shown: -v or FER_TF_LOGS set (not 0)."""
    return verbose or os.environ.get("FER_TF_LOGS", "") not in ("", "0")


class filtered_stderr:  # noqa: N801 - used like a function: `with filtered_stderr(on):`
    """Within the block, fd 2 (C++ and Python writes alike) goes through the NOISE filter.

    On exit fd 2 is the real stderr again and everything written in the block has been
    forwarded, so a traceback raised out of the block prints after it, unfiltered.
    Does nothing when disabled or where fd 2 or a pipe cannot be had.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and os.name == "posix"
        self._real: int | None = None
        self._proc = None

    def __enter__(self) -> filtered_stderr:
        if not self.enabled:
            return self
        import subprocess  # here, not at the top: the filter script starts faster

        _flush()
        try:
            real = os.dup(2)
        except OSError:  # no stderr at all
            return self
        try:
            r, w = _tty_pair(real) if os.isatty(real) else os.pipe()
        except OSError:
            os.close(real)
            return self
        try:
            # own session: a Ctrl-C to the terminal's process group does not kill the
            # filter before the CLI's last lines are through; it ends at EOF instead,
            # once every writer (this process and its children) has closed the pipe
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                stdin=r,
                stdout=real,
                stderr=real,
                start_new_session=True,
            )
        except OSError:
            for fd in (r, w, real):
                os.close(fd)
            return self
        os.close(r)
        os.dup2(w, 2)  # inheritable: subprocesses write through the filter too
        os.close(w)
        self._real = real
        return self

    def __exit__(self, *exc: object) -> None:
        if self._real is None:
            return
        import subprocess
        from contextlib import suppress

        _flush()
        os.dup2(self._real, 2)  # closes our write end of the pipe (or terminal)
        os.close(self._real)
        self._real = None
        with suppress(subprocess.TimeoutExpired):  # a child still holds the pipe: it forwards on
            self._proc.wait(timeout=5)


def _tty_pair(real: int) -> tuple[int, int]:
    """A pseudo-terminal (read end, write end) standing in for the terminal `real`.

    Whoever asks whether stderr is a terminal (tqdm's progress bars, colour
    output) gets the same answer as without the filter, and the same width.
    Raw mode: the bytes reach the filter exactly as written.
    """
    import fcntl
    import termios
    import tty
    from contextlib import suppress

    master, slave = os.openpty()
    tty.setraw(slave)
    with suppress(OSError):
        size = fcntl.ioctl(real, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    return master, slave


def _flush() -> None:
    from contextlib import suppress

    for stream in (sys.stdout, sys.stderr):
        with suppress(AttributeError, OSError, ValueError):  # None, closed or broken
            stream.flush()


def run_filter(src: int = 0, dst: int = 1) -> None:
    """Copy `src` to `dst` line by line (\\n or \\r ends a line), dropping NOISE lines."""
    out_ok = True

    def emit(data: bytes) -> None:
        nonlocal out_ok
        while data and out_ok:
            try:
                data = data[os.write(dst, data) :]
            except InterruptedError:
                continue
            except OSError:  # the real stderr is gone: keep draining so writers never block
                out_ok = False

    buf = b""
    while True:
        if buf and not select.select([src], [], [], _PARTIAL_WAIT_S)[0]:
            if not is_noise(buf):
                emit(buf)
                buf = b""
            continue
        try:
            chunk = os.read(src, 65536)
        except InterruptedError:
            continue
        except OSError:  # EIO: a pseudo-terminal's last writer is gone (EOF)
            break
        if not chunk:
            break
        lines = (buf + chunk).splitlines(keepends=True)
        buf = lines.pop() if not lines[-1].endswith((b"\n", b"\r")) else b""
        emit(b"".join(line for line in lines if not is_noise(line)))
    if buf and not is_noise(buf):
        emit(buf)


if __name__ == "__main__":
    run_filter()
