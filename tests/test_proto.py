"""The wire API: generated stubs match proto/, buf lint passes, stubs import from the installed package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GENERATED = ["router_pb2.py", "router_pb2.pyi", "router_pb2_grpc.py"]
BUF = ROOT / "examples" / "node-client" / "node_modules" / ".bin" / "buf"


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    from grpc_tools import protoc

    result = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}", str(PROTO / "mmrouter" / "v1" / "router.proto"),
    ])
    assert result == 0
    for name in GENERATED:
        fresh = (tmp_path / "mmrouter" / "v1" / name).read_bytes()
        committed = (PROTO / "mmrouter" / "v1" / name).read_bytes()
        assert fresh == committed, f"{name} drifted from router.proto: run `make proto` and commit"


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf") or (str(BUF) if BUF.exists() else None)
    if buf is None:
        pytest.fail("buf is not installed: run `make test` (it installs buf from npm)")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_go_stubs_generate_from_the_proto_as_its_comment_says(tmp_path: Path) -> None:
    """protoc-gen-go refuses a .proto without go_package; the comment above it gives the command."""
    from grpc_tools import protoc

    plugins = [shutil.which(name) for name in ("protoc-gen-go", "protoc-gen-go-grpc")]
    if None in plugins:
        pytest.fail("protoc-gen-go and protoc-gen-go-grpc are not installed: run `make system-deps`")
    result = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO}", f"--go_out={tmp_path}", "--go_opt=paths=source_relative",
        f"--go-grpc_out={tmp_path}", "--go-grpc_opt=paths=source_relative",
        *[f"--plugin={path}" for path in plugins], str(PROTO / "mmrouter" / "v1" / "router.proto"),
    ])
    assert result == 0
    messages = (tmp_path / "mmrouter" / "v1" / "router.pb.go").read_text()
    service = (tmp_path / "mmrouter" / "v1" / "router_grpc.pb.go").read_text()
    assert "\npackage routerv1\n" in messages and "type GenerateRequest struct" in messages
    assert "\npackage routerv1\n" in service and "func NewRouterServiceClient(" in service


def test_every_element_of_the_proto_is_commented() -> None:
    """Other languages' users read the .proto: no message, field, enum value or RPC without a comment."""
    lines = (PROTO / "mmrouter" / "v1" / "router.proto").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        declares = stripped.startswith(("message ", "enum ", "service ", "rpc ", "oneof ")) or (
            stripped.endswith(";") and "=" in stripped and not stripped.startswith(("option", "syntax", "//")))
        if declares and not lines[i - 1].strip().startswith("//"):
            undocumented.append(stripped)
    assert undocumented == []


def test_stubs_import_from_the_installed_distribution(tmp_path: Path) -> None:
    code = ("from mmrouter.v1 import router_pb2, router_pb2_grpc; "
            "print(router_pb2.DESCRIPTOR.services_by_name['RouterService'].full_name, "
            "hasattr(router_pb2_grpc, 'RouterServiceStub'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["mmrouter.v1.RouterService", "True"], result.stderr
