"""Running a job: the runner and its worker pool, preparation, progress, the lag gate, reprocess, the end of `seamline run`."""
