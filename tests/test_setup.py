"""The README's two commands on a fresh copy of the repository, with Debian's
own Python (externally managed, PEP 668) and no venv to start from."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest, TestCase

from .server_support import DCMTK_ENV, REPO, free_port
from .support import in_ci, require_tool

SYSTEM_PYTHON = "/usr/bin/python3"
#: Bounds for each step: a cold venv with the [test] extras takes ~20 s here.
INSTALL_TIMEOUT = 600
START_TIMEOUT = 30


def system_python() -> str:
    """Debian's python3 with its venv module, installed with apt when root."""
    probe = [SYSTEM_PYTHON, "-c", "import ensurepip, venv"]
    if os.path.exists(SYSTEM_PYTHON) and subprocess.run(probe, capture_output=True).returncode == 0:
        return SYSTEM_PYTHON
    if os.getuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=INSTALL_TIMEOUT)
        subprocess.run(["apt-get", "install", "-y", "-qq", "python3", "python3-venv"],
                       check=True, env=env, timeout=INSTALL_TIMEOUT)
        return SYSTEM_PYTHON
    message = "Debian's python3 and python3-venv are needed (apt-get install python3-venv)"
    if in_ci():
        raise AssertionError(message + " -- required under CI")
    raise SkipTest(message)


def fresh_copy(destination: str) -> str:
    """The repository's files as a fresh clone has them (no .venv, no var/)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = os.path.join(REPO, name)
        if os.path.isfile(source):
            target = os.path.join(destination, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)
    return destination


class ReadmeCommandsTests(TestCase):
    """``scripts/test.sh`` and ``scripts/serve.sh`` set themselves up."""

    timeout = 3 * INSTALL_TIMEOUT

    def setUp(self) -> None:
        self.python = system_python()
        self.repo = fresh_copy(os.path.abspath(self.mktemp()))
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("PYTHONPATH", "VIRTUAL_ENV", "CI")}
        self.env["PYTHON"] = self.python
        self.as_user: list[str] = []

    def run_script(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a script of the copy to its end; return what it printed."""
        return subprocess.run([*self.as_user, "bash", *args], cwd=self.repo, env=self.env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT)

    def echo_ini(self) -> tuple[str, int]:
        """An INI in the copy: a free port, data under the copy's var/."""
        port = free_port()
        data_dir = os.path.join(self.repo, "var", "echo")
        with open(os.path.join(self.repo, "echo.ini"), "w") as handle:
            handle.write(f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\n"
                         f"data_dir = {data_dir}\n[storage]\nfsync = no\n")
        return "echo.ini", port

    def echo(self, port: int) -> None:
        """DCMTK echoscu gets an answer."""
        echo = subprocess.run([require_tool(self, "echoscu"), "-aec", "SDCC", "127.0.0.1",
                               str(port)], env=DCMTK_ENV, capture_output=True, text=True,
                              timeout=START_TIMEOUT)
        self.assertEqual(echo.returncode, 0, echo.stdout + echo.stderr)

    def serve(self, ini: str, port: int) -> tuple[subprocess.Popen[str], str]:
        """Start ``scripts/serve.sh ini``; wait for its port; return it and its log."""
        log_path = os.path.join(self.repo, "serve.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen([*self.as_user, "bash", "scripts/serve.sh", ini],
                                       cwd=self.repo,
                                       env=self.env, text=True, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(self.stop, process)
        deadline = time.monotonic() + INSTALL_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    with open(log_path) as log:
                        self.fail(f"serve.sh did not start:\n{log.read()}")
                time.sleep(0.1)
        with open(log_path) as log:
            return process, log.read()

    def stop(self, process: subprocess.Popen[str]) -> None:
        """SIGTERM the server (serve.sh execs twistd, so it is that PID)."""
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()

    def test_the_readme_commands_on_debian_python(self) -> None:
        """From no venv, on the externally managed system Python: test.sh makes
        .venv, installs, runs tests and prints its summary line; serve.sh then
        starts at once (no second install) and answers a DCMTK C-ECHO; a changed
        setup.cfg is installed again, and a failed install stops with the reason."""
        marker = subprocess.run(
            [self.python, "-c", "import os, sysconfig; "
             "print(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED'))"],
            capture_output=True, text=True, check=True).stdout.strip()
        self.assertTrue(os.path.exists(marker), f"{self.python} is not externally managed")
        self.assertFalse(os.path.exists(os.path.join(self.repo, ".venv")))

        tested = self.run_script("scripts/test.sh", "tests.test_config")
        self.assertEqual(tested.returncode, 0, tested.stdout)
        self.assertIn("setup: making the project venv", tested.stdout)
        self.assertRegex(tested.stdout, r"\n[1-9][0-9]* passed, 0 failed\n")
        venv_python = os.path.join(self.repo, ".venv", "bin", "python")
        base = subprocess.run([venv_python, "-c", "import sys; print(sys.base_prefix)"],
                              capture_output=True, text=True, check=True).stdout.strip()
        self.assertEqual(base, "/usr")

        ini, port = self.echo_ini()
        process, log = self.serve(ini, port)
        self.assertNotIn("pip install", log)
        self.echo(port)
        self.stop(process)

        setup_cfg = os.path.join(self.repo, "setup.cfg")
        with open(setup_cfg) as handle:
            text = handle.read()
        with open(setup_cfg, "w") as handle:
            handle.write(text.replace("python_requires = >=3.10", "python_requires = >=9.0"))
        failed = self.run_script("scripts/serve.sh", "echo.ini")
        self.assertNotEqual(failed.returncode, 0, failed.stdout)
        self.assertIn("setup: pip install", failed.stdout)
        self.assertIn("requires a different Python", failed.stdout)
        self.assertIn("setup: pip install failed", failed.stdout)
        self.assertNotIn("starting up", failed.stdout)

    def test_serve_as_a_plain_user(self) -> None:
        """serve.sh as a user who is not root (nobody, when the tests run as
        root): it makes its venv, installs, starts and answers a C-ECHO,
        without trying apt-get."""
        if os.getuid() == 0:
            # trial's temp folders are root's alone: a copy nobody can enter
            base = tempfile.mkdtemp(prefix="sdcc-setup-")
            self.addCleanup(shutil.rmtree, base, True)
            self.repo = fresh_copy(os.path.join(base, "repo"))
            os.chown(base, 65534, 65534)
            for directory, _, files in os.walk(self.repo):
                for name in [directory, *(os.path.join(directory, f) for f in files)]:
                    os.chown(name, 65534, 65534)
            self.as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            self.env["HOME"] = self.repo
        ini, port = self.echo_ini()
        if os.getuid() == 0:
            os.chown(os.path.join(self.repo, ini), 65534, 65534)
        process, log = self.serve(ini, port)
        self.assertIn("setup: making the project venv", log)
        self.assertNotIn("apt-get", log)
        self.echo(port)
        self.stop(process)
