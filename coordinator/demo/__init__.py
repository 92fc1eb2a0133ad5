"""``seamline demo``: onboard a live stream end to end on the embedded defaults."""
