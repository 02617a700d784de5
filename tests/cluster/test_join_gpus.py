"""`p2pexec join --gpus N`, and the GPUs a node offers when not told: those `nvidia-smi`
lists (a fake one on a temporary PATH here), else none."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pexec.cli import build_parser, join_config
from p2pexec.config import NodeConfig, detect_gpus
from p2pexec.errors import LocalUsageError
from p2pexec.net.security import new_token

LISTS_THREE = """#!/bin/sh
[ "$1" = "--query-gpu=index" ] && [ "$2" = "--format=csv,noheader" ] || exit 3
printf '0\\n1\\n2\\n'
"""


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str | None
                    ) -> None:
    """PATH is only a directory holding `script` as nvidia-smi (None: no nvidia-smi)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    if script is not None:
        tool = directory / "nvidia-smi"
        tool.write_text(script)
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(directory))


def join(*options: str) -> NodeConfig:
    return join_config(build_parser().parse_args(["join", *options]), new_token())


def test_gpus_option_sets_what_the_node_offers(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, LISTS_THREE)
    assert build_parser().parse_args(["join", "--gpus", "2"]).gpus == 2
    config = join("--gpus", "2", "--cpus", "4")
    assert config.num_gpus == 2 and config.offered() == {"CPU": 4.0, "GPU": 2.0}
    assert "GPU" not in join("--gpus", "0").offered()  # told: nvidia-smi is not asked
    with pytest.raises(LocalUsageError, match="num_gpus must be a whole number"):
        join("--gpus", "-1")
    with pytest.raises(LocalUsageError, match=r"--gpus"):
        join("--resources", "GPU=1")


def test_without_gpus_option_the_node_offers_what_nvidia_smi_lists(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, LISTS_THREE)
    assert detect_gpus() == 3
    assert join("--cpus", "1").offered() == {"CPU": 1.0, "GPU": 3.0}
    assert NodeConfig.embedded(num_cpus=1).num_gpus == 3  # px.init's node too
    assert NodeConfig.embedded(num_cpus=1, num_gpus=1).num_gpus == 1


@pytest.mark.parametrize("script", [None, "#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n"],
                         ids=["absent", "failing"])
def test_no_or_a_failing_nvidia_smi_means_no_gpus(tmp_path, monkeypatch, script):
    fake_nvidia_smi(tmp_path, monkeypatch, script)
    assert detect_gpus() == 0
    assert join("--cpus", "1").offered() == {"CPU": 1.0}
