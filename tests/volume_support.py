"""Real small volumes for the fault tests: a tmpfs the test mounts.

``small_volume(self, size)`` mounts a tmpfs of ``size`` bytes on a fresh
directory and unmounts it in the test's cleanup; ``fill(path)`` writes a
filler file until the volume is full (ENOSPC); ``read_only(self, path)``
bind-mounts a directory read-only over itself.  Mounting needs root: without
it the test is skipped, except under CI (``CI=true``), where that is a
failure.
"""

from __future__ import annotations

import errno
import os
import subprocess
from twisted.trial import unittest

from .support import in_ci

FILLER = "filler"


def _mount(testcase: unittest.TestCase, *args: str) -> None:
    """Run mount(8); skip (fail under CI) when this process may not mount."""
    result = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        reason = f"cannot mount ({result.stderr.strip()}); these tests need root"
        if in_ci():
            testcase.fail(reason + "; under CI=true this is a failure")
        raise unittest.SkipTest(reason)


def unmount(path: str) -> None:
    """Unmount ``path`` (lazily; a second call is harmless)."""
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


def small_volume(testcase: unittest.TestCase, size: int) -> str:
    """A tmpfs of ``size`` bytes mounted on a fresh directory; its path."""
    path = os.path.abspath(testcase.mktemp())
    os.makedirs(path)
    _mount(testcase, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path)
    testcase.addCleanup(unmount, path)
    return path


def read_only(testcase: unittest.TestCase, path: str) -> None:
    """Make the directory ``path`` read-only (EROFS) until the cleanup."""
    _mount(testcase, "--bind", path, path)
    testcase.addCleanup(unmount, path)
    _mount(testcase, "-o", "remount,ro,bind", path)


def fill(volume: str, leave: int = 0) -> int:
    """Write ``{volume}/filler`` until ENOSPC, or until about ``leave``
    bytes stay free; the bytes written."""
    written = 0
    block = b"\0" * 4096
    fd = os.open(os.path.join(volume, FILLER), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if leave:
            st = os.statvfs(volume)
            target = st.f_bavail * st.f_frsize - leave
            while written < target:
                written += os.write(fd, block[:min(len(block), target - written)])
            return written
        for size in (4096, 512, 64, 1):      # down to the last partial page
            while True:
                try:
                    written += os.write(fd, block[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def free(volume: str) -> None:
    """Remove the filler: the volume has room again."""
    os.unlink(os.path.join(volume, FILLER))

