"""`p2pexec token new` / `p2pexec token id`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from p2pexec.cli import main
from p2pexec.net.security import ClusterKeys


def test_token_new_prints_a_fresh_url_safe_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "new"]) == 0
    assert main(["token", "new"]) == 0
    first, second = capsys.readouterr().out.split()
    assert first != second
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first)


def test_token_id_from_flag_and_environment(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    token = "a-token-of-the-cluster-0123"
    assert main(["token", "id", "--token", token]) == 0
    monkeypatch.setenv("P2PEXEC_TOKEN", token)
    assert main(["token", "id"]) == 0
    assert capsys.readouterr().out.split() == [ClusterKeys(token).cluster_id] * 2


def test_token_id_without_token_or_with_short_token_fails_clearly(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2PEXEC_TOKEN", raising=False)
    assert main(["token", "id"]) == 2
    assert main(["token", "id", "--token", "short"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "p2pexec: no token given (use --token or $P2PEXEC_TOKEN)",
        "p2pexec: cluster token too short (5 characters, need 16); make one with "
        "`p2pexec token new`"]


def test_console_entry_point_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "p2pexec.cli", "token", "new"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}\n", out)


def test_new_tokens_never_start_with_a_dash_so_token_flags_parse() -> None:
    from p2pexec.net.security import new_token

    tokens = [new_token() for _ in range(2000)]  # one in 64 raw tokens starts with "-"
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == 2000 and all(len(t) == 43 for t in tokens)
