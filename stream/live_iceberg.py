"""Re-export of the Iceberg live-append code, which lives in :mod:`backfill.iceberg_live`.

Live and history share one table code path (DESIGN); import from ``backfill.iceberg_live`` in
new code. Kept for existing imports (``bench/live.py``, test helpers).
"""

from backfill.iceberg_live import (
    LIVE_OFFSET_PREFIX,
    MAINTENANCE_PROPERTIES,
    AssertLiveOffsets,
    IcebergLiveTable,
    LiveOffsetsMovedError,
    live_offset_properties,
    live_offsets_from_properties,
)

__all__ = [
    "LIVE_OFFSET_PREFIX",
    "MAINTENANCE_PROPERTIES",
    "AssertLiveOffsets",
    "IcebergLiveTable",
    "LiveOffsetsMovedError",
    "live_offset_properties",
    "live_offsets_from_properties",
]
