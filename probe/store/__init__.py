"""The ring store: what the law lets the probe keep, for as long as it allows, and not a byte more.

`framing.py` is the file format (CRC32C-framed msgpack records in segment files), `records.py` the
allowlist of what a record may hold, `index.py` the per-segment summaries queries use to skip
segments, `retention.py` the legal time limits, `ring.py` the `RingStore` itself (append, fsync,
recovery, purge, eviction), `query.py` and `export.py` what entitled people read out of it,
`audit.py` who read what and why.
"""
