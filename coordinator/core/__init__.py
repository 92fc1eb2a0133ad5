"""The kernel: values, errors, ports, lineage, the job spec and redaction. Imports nothing else from seamline."""
