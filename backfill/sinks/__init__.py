"""Table code of both sides (history slices and live micro-batches), one folder per table format."""
