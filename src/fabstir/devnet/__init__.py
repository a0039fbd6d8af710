"""A marketplace on this machine: a bootstrap peer and hosts in processes of their own (``fabstir devnet``),
and the devnet file through which the SDK and the CLI find them."""

from ._bootstrap import BootstrapPeer
from ._devnet import Devnet, DevnetOptions, devnet_status, stop_devnet
from ._file import DevnetFile, DevnetProcess, default_devnet_dir, read_devnet_file

__all__ = [
    "BootstrapPeer",
    "Devnet",
    "DevnetFile",
    "DevnetOptions",
    "DevnetProcess",
    "default_devnet_dir",
    "devnet_status",
    "read_devnet_file",
    "stop_devnet",
]
