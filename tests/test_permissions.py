"""PHI owner-only on disk (issue 11, finding 8): stored files 0600, their
directories and data_dir 0700, the embedded Redis's append-only file too;
``[storage] file_mode`` / ``dir_mode`` open the images to a group."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import TestCase

from sdcc_twisted.core import conformance as c

from . import corpus
from .server_support import in_thread, start_server
from .test_interop_store import expected_path, pynetdicom_store

CT = "1.2.840.10008.5.1.4.1.1.2"


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class PermissionTests(TestCase):
    """The running server with the embedded Redis, under umask 022."""

    timeout = 60

    def setUp(self) -> None:
        old = os.umask(0o022)           # what most services start with
        self.addCleanup(os.umask, old)

    async def store_one(self, **sections: dict[str, str]) -> tuple[str, str]:
        """Store one instance; (data_dir, its path)."""
        server = await start_server(self, embedded=True, **sections)
        sample = corpus.write_small(os.path.join(self.mktemp(), "a.dcm"), CT)
        result = await in_thread(pynetdicom_store, server.port, [sample.path],
                                 [(CT, [c.EXPLICIT_VR_LITTLE_ENDIAN])], "PHI")
        self.assertEqual([s for s, _ in result["statuses"]], [0])
        return server.data_dir, expected_path(server.root, sample)

    async def test_owner_only_by_default(self) -> None:
        """data_dir, the storage root, the study and series directories, the
        journal and the Redis append-only files are 0700/0600; the stored
        file is 0600."""
        data_dir, path = await self.store_one()
        series = os.path.dirname(path)
        study = os.path.dirname(series)
        root = os.path.dirname(study)
        for directory in (data_dir, root, study, series, os.path.join(root, ".tmp")):
            self.assertEqual(oct(mode(directory)), oct(0o700), directory)
        for parent, directories, _ in os.walk(data_dir):    # node folder, journal...
            for name in directories:
                directory = os.path.join(parent, name)
                self.assertEqual(oct(mode(directory)), oct(0o700), directory)
        self.assertEqual(oct(mode(path)), oct(0o600))
        aof_dir = os.path.join(data_dir, "appendonlydir")     # Redis 7
        self.assertEqual(oct(mode(aof_dir)), oct(0o700))
        aof = os.listdir(aof_dir)
        self.assertTrue(any(name.endswith(".aof") for name in aof), aof)
        for name in aof:
            self.assertEqual(oct(mode(os.path.join(aof_dir, name))), oct(0o600), name)

    async def test_group_modes_from_config(self) -> None:
        """file_mode = 640 and dir_mode = 750 with a root outside data_dir:
        the image and its directories open to the group, data_dir stays 0700."""
        root = os.path.abspath(self.mktemp())
        data_dir, path = await self.store_one(
            storage={"root": root, "file_mode": "640", "dir_mode": "750"})
        self.assertEqual(oct(mode(path)), oct(0o640))
        self.assertEqual(oct(mode(os.path.dirname(path))), oct(0o750))
        self.assertEqual(oct(mode(root)), oct(0o750))
        self.assertEqual(oct(mode(data_dir)), oct(0o700))
