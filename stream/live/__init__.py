"""The live side: the loop, its bookkeeping, the batch writer shared by both engines, lag and metrics."""
