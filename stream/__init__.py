"""seamline.stream."""
