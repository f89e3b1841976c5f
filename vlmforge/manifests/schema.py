"""Manifest table schemas. Column names are lower_snake_case; each has a one-line description that
`vlmforge manifest columns` prints and the dataset card repeats."""

from __future__ import annotations

import pyarrow as pa

# (name, type, description) of the columns every build has.
BASE_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("key", pa.string(), "sample key, unique in the build; the tar members are <key>.<field>"),
    ("split", pa.string(), "split name (train, val, test, ...)"),
    ("shard", pa.string(), "shard file name, relative to the build folder"),
    ("offset", pa.int64(), "byte offset of the sample's first tar header inside the shard"),
    ("builder", pa.string(), "builder that made the sample"),
    ("version", pa.string(), "builder version"),
    ("source", pa.string(), "source the sample came from (coco, llava-json, imagefolder, a build id)"),
    ("source_id", pa.string(), "id of the input inside the source (image id, record id, path)"),
    ("image_sha256", pa.string(), "sha256 of the stored image bytes; null for text-only samples"),
    ("image_format", pa.string(), "stored image field (jpg, png); null for text-only samples"),
    ("width", pa.int32(), "stored image width in pixels"),
    ("height", pa.int32(), "stored image height in pixels"),
    ("json_sha256", pa.string(), "sha256 of the sample's json member"),
    ("sample_bytes", pa.int64(), "bytes the sample takes in the shard, headers included"),
]

REJECT_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("split", pa.string(), "split the input belonged to"),
    ("shard", pa.string(), "shard that was open when the input was dropped"),
    ("source_id", pa.string(), "id of the dropped input"),
    ("stage", pa.string(), "stage that dropped it"),
    ("reason", pa.string(), "short machine-friendly reason (missing_image, corrupt_image, ...)"),
    ("detail", pa.string(), "human-readable detail"),
]


def schema_of(columns: list[tuple[str, pa.DataType, str]]) -> pa.Schema:
    return pa.schema([pa.field(name, typ) for name, typ, _ in columns])


REJECT_SCHEMA = schema_of(REJECT_COLUMNS)
