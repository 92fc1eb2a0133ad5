"""seamline.backfill."""
