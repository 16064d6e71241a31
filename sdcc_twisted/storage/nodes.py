"""Each node's own folders, so that several sdcc processes share one storage
root and one data directory.

``[server] node_id`` names them: temp files go to ``{root}/.tmp/{node_id}``,
the write-ahead log and the pending journal to
``{data_dir}/nodes/{node_id}``.  A node cleans up and replays only its own
folders at start, never another node's in-flight files.  Temp files stay on
the root's filesystem, so the final rename is still atomic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from sdcc_twisted.storage.journal import INDEX_LOG, PENDING_DIR
from sdcc_twisted.storage.files import make_private_dirs

__all__ = ["NODES_DIR", "TEMP_DIR", "NodePaths", "adopt_legacy_files"]

#: The nodes' folders under ``[server] data_dir``.
NODES_DIR: Final = "nodes"
#: The nodes' temp folders under the storage root.
TEMP_DIR: Final = ".tmp"


@dataclass(frozen=True)
class NodePaths:
    """Where one node keeps what is its own.

    Attributes:
        node_id: ``[server] node_id``.
        temp_dir: ``{root}/.tmp/{node_id}``: files while they arrive.
        node_dir: ``{data_dir}/nodes/{node_id}``: the write-ahead log.
        journal_dir: ``{node_dir}/pending``: the pending journal.
    """

    node_id: str
    temp_dir: str
    node_dir: str
    journal_dir: str

    @classmethod
    def for_node(cls, data_dir: str, storage_root: str, node_id: str) -> NodePaths:
        """The folders of ``node_id`` (a name config has checked to be one
        safe path part)."""
        node_dir = os.path.join(data_dir, NODES_DIR, node_id)
        return cls(node_id, os.path.join(storage_root, TEMP_DIR, node_id), node_dir,
                   os.path.join(node_dir, PENDING_DIR))


def adopt_legacy_files(data_dir: str, paths: NodePaths) -> int:
    """Move the write-ahead log segments and journal entries that a version
    without node folders left directly in ``data_dir`` into this node's
    folders, so that they are recovered; return how many moved.

    Two nodes starting at once may race for one file: the one whose rename
    succeeds owns it.  Blocking; call at start-up before the log is opened.
    """
    moved = 0
    make_private_dirs(paths.journal_dir)     # journal entries hold patient data
    legacy_journal = os.path.join(data_dir, PENDING_DIR)
    prefix = INDEX_LOG + "."
    segments = sorted((n for n in _listdir(data_dir)
                       if n.startswith(prefix) and n[len(prefix):].isdigit()),
                      key=lambda n: int(n[len(prefix):]))
    sources = [(data_dir, name, paths.node_dir) for name in segments]
    sources += [(legacy_journal, name, paths.journal_dir)
                for name in _listdir(legacy_journal)
                if name.endswith(".json") and not name.startswith(".")]
    for directory, name, target in sources:
        destination = os.path.join(target, name)
        if directory == data_dir:
            # segment numbers restart in the node folder: keep them apart
            destination = os.path.join(target, f"{INDEX_LOG}.{_next_free(target)}")
        try:
            os.rename(os.path.join(directory, name), destination)
        except FileNotFoundError:
            continue
        moved += 1
    return moved


def _listdir(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _next_free(directory: str) -> int:
    """A write-ahead log segment number not used in ``directory``."""
    prefix = INDEX_LOG + "."
    numbers = [int(n[len(prefix):]) for n in _listdir(directory)
               if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return max(numbers, default=0) + 1
