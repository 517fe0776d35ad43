"""Blob storage: the contract (:mod:`gateway.storage.base`) and the stores that implement it.

The local folder (:mod:`gateway.storage.local`) is the embedded default; ``[storage] url =
"s3://bucket/prefix"`` selects S3-compatible object storage (:mod:`gateway.storage.s3`), which
every API and worker replica can share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.storage.base import CHUNK_SIZE, BlobAppender, BlobInfo, BlobMissing, BlobStore, StorageFull
from gateway.storage.local import LocalBlobStore

if TYPE_CHECKING:
    from gateway.settings import Settings


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: object storage for an ``s3://`` URL, else the local folder."""
    scratch = settings.resolved_scratch_dir
    url = settings.storage.url
    if url:
        from gateway.storage.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings.storage, scratch)
    return LocalBlobStore(settings.resolved_blob_dir, scratch)


__all__ = [
    "CHUNK_SIZE",
    "BlobAppender",
    "BlobInfo",
    "BlobMissing",
    "BlobStore",
    "LocalBlobStore",
    "StorageFull",
    "open_blob_store",
]
