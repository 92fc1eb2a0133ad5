"""seamline.reconcile."""
