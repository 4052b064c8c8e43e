"""A non-Python client: the Node.js example (@grpc/grpc-js + the .proto alone) against the daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parent.parent / "examples" / "node-client"

CONFIG = """
providers:
  fake: {api_key: test-key}
routes:
  - name: everything
    use: fake/echo
"""


def test_node_client_calls_generate_and_stream_generate(start_daemon) -> None:
    node = shutil.which("node")
    if node is None or not (CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.fail("node and the example's npm packages are needed: run `make test`")
    daemon = start_daemon(CONFIG)
    result = subprocess.run([node, str(CLIENT / "client.js"), daemon.address, "hello from node"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    unary, stream = (json.loads(line) for line in result.stdout.splitlines())
    assert unary["call"] == "Generate"
    assert "fake/echo says: hello from node" in unary["text"]
    assert (unary["route"]["rule"], unary["route"]["provider"], unary["route"]["model"]) == ("everything", "fake", "echo")
    assert unary["usage"]["output_tokens"] > 0
    assert stream["kinds"][0] == "route_chosen" and stream["kinds"][-1] == "done"
    assert stream["kinds"].count("text_delta") > 1
    assert stream["text"] == unary["text"]
    assert stream["route"]["provider"] == "fake"
