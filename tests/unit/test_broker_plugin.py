"""The pytest plugin fails loudly (never skips) when it cannot provide a broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

TEST_USING_KAFKA = '''
def test_needs_kafka(kafka_bootstrap: str) -> None:
    assert kafka_bootstrap
'''


def test_unreachable_kafka_bootstrap_fails_the_test_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "test_uses_kafka.py").write_text(TEST_USING_KAFKA)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
        env = os.environ | {"KAFKA_BOOTSTRAP": dead}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
             str(tmp_path / "test_uses_kafka.py")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout
    assert "skipped" not in done.stdout
    assert f"no Kafka broker for the tests: KAFKA_BOOTSTRAP={dead} does not answer" in done.stdout
