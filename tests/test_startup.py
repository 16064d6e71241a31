"""Start-up with real ``twistd sdcc`` processes: one server per data folder,
and every start-up error as one line that names the key or path."""

from __future__ import annotations

import os
import socket
import subprocess

from twisted.trial.unittest import TestCase

from sdcc_twisted.core import conformance as c

from . import corpus
from .server_support import (
    REPO,
    TwistdServer,
    free_port,
    ini_text,
    limit_descriptors,
    twistd_command,
    twistd_env,
)
from .test_interop_echo import pynetdicom_echo
from .test_interop_store import pynetdicom_store

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = c.EXPLICIT_VR_LITTLE_ENDIAN

#: A failing start must end by itself well within this.
EXIT_TIMEOUT = 60


def folder_state(directory: str) -> dict[str, tuple[int, int]]:
    """Every file under ``directory``: (size, mtime in ns), by relative path."""
    state = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            info = os.stat(path)
            state[os.path.relpath(path, directory)] = (info.st_size, info.st_mtime_ns)
    return state


class StartupTests(TestCase):
    """What ``twistd sdcc`` says and leaves behind when it cannot start."""

    timeout = 240

    def write_ini(self, text: str) -> str:
        """An INI file in a temp folder; its path."""
        path = os.path.abspath(self.mktemp()) + ".ini"
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def run_twistd(self, ini: str, nofile: int | None = None) -> tuple[int, str]:
        """Run ``twistd -n sdcc`` to its end (``nofile``: its RLIMIT_NOFILE);
        (exit status, all it printed)."""
        done = subprocess.run(twistd_command(ini), cwd=REPO, env=twistd_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, timeout=EXIT_TIMEOUT,
                              preexec_fn=limit_descriptors(nofile) if nofile else None)
        return done.returncode, done.stdout

    def assert_one_line(self, status: int, output: str, *names: str) -> None:
        """Non-zero exit, no traceback or usage text, and one line that says
        it cannot start and names each of ``names``."""
        self.assertNotEqual(status, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Usage:", output)
        lines = [line for line in output.splitlines() if "cannot start" in line]
        self.assertEqual(len(lines), 1, output)
        for name in names:
            self.assertIn(name, lines[0])

    def test_second_server_on_the_same_data_dir(self) -> None:
        """A second server on a running server's data_dir stops at once with
        one line naming the folder and the holder's pid; the running server's
        files (its open index-log segment, store, Redis) are untouched and it
        still answers."""
        data_dir = os.path.abspath(self.mktemp())
        first_port, second_port = free_port(), free_port()
        first_ini = self.write_ini(ini_text(data_dir, "embedded", port=first_port))
        first = TwistdServer(self, first_ini)
        first.start(first_port)
        path = os.path.abspath(self.mktemp()) + ".dcm"
        corpus.write_small(path, CT)
        stored = pynetdicom_store(first_port, [path], [(CT, [EXPLICIT])])
        self.assertEqual(stored["statuses"], [(0x0000, "")])
        before = folder_state(data_dir)
        self.assertTrue(any(os.path.basename(name).startswith("index.wal.") for name in before),
                        before)

        status, output = self.run_twistd(
            self.write_ini(ini_text(data_dir, "embedded", port=second_port)))
        self.assert_one_line(status, output, "[server] data_dir", data_dir,
                             f"pid {first.process.pid}")
        self.assertEqual(folder_state(data_dir), before)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", second_port), timeout=1).close()
        self.assertEqual(pynetdicom_echo(first_port)["status"], 0x0000)

    def test_errors_are_one_line(self) -> None:
        """A bad value, an endpoint that cannot listen (port 99999, a port in
        use), a data_dir that cannot be made and a log file that cannot be
        opened: each is one line naming key and path, exit status 1, and no
        index-log segment is left behind."""
        data_dir = os.path.abspath(self.mktemp())
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as handle:
            handle.write("a file, not a folder\n")
        cases = [
            (f"[server]\ndata_dir = {data_dir}\nmax_pdu_length = 0\n",
             ("[server] max_pdu_length", "got '0'")),
            (f"[server]\ndata_dir = {data_dir}\nlisten = tcp:99999\n",
             ("[server] listen = tcp:99999", "port must be 0-65535")),
            (ini_text(data_dir, "embedded", port=busy_port),
             ("[server] listen", f":{busy_port}", "Address already in use")),
            (f"[server]\ndata_dir = {blocker}/sdcc\nlisten = tcp:0\n",
             ("[server] data_dir", blocker, "Not a directory")),
            (ini_text(data_dir, "embedded", logging={"file": f"{blocker}/sdcc.log"}),
             ("[logging] file", f"{blocker}/sdcc.log")),
        ]
        for text, names in cases:
            ini = self.write_ini(text)
            status, output = self.run_twistd(ini)
            self.assert_one_line(status, output, *names)
            if os.path.isdir(data_dir):
                self.assertEqual([name for name in os.listdir(data_dir)
                                  if name.startswith("index.wal")], [], ini)

    def test_caps_above_the_descriptor_limit(self) -> None:
        """With RLIMIT_NOFILE at 256 (soft and hard), the default caps
        (max_connections 256, max_associations 64) cannot be carried: one line
        naming [server] max_connections and the limit; with max_connections 16
        and max_associations 8 the same limit is enough and it answers."""
        data_dir = os.path.abspath(self.mktemp())
        status, output = self.run_twistd(
            self.write_ini(ini_text(data_dir, "embedded", port=free_port())), nofile=256)
        self.assert_one_line(status, output, "[server] max_connections = 256",
                             "RLIMIT_NOFILE allows 256")
        port = free_port()
        ini = self.write_ini(ini_text(data_dir, "embedded", port=port, server={
            "max_connections": "16", "max_associations": "8"}))
        server = TwistdServer(self, ini, nofile=256)
        server.start(port)
        self.assertEqual(pynetdicom_echo(port)["status"], 0x0000)

    def test_missing_config_file(self) -> None:
        """A config file that does not exist is one line naming it, without
        the usage text first."""
        missing = os.path.abspath(self.mktemp()) + ".ini"
        status, output = self.run_twistd(missing)
        self.assert_one_line(status, output, missing, "No such file")
        self.assertEqual(len(output.strip().splitlines()), 1, output)
