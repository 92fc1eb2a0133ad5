"""seamline.coordinator."""
