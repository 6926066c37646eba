"""``python -m model_export import``: every family (torchvision's six builders, SegFormer, smp's
Unet, FPN and DeepLabV3Plus) imported with weights made here, exported, served by one real
server, and answering as the library's own forward pass does; docs/MODEL.md's commands are the
ones run. Also: a parity failure writes nothing, and a download without a network is one line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from model_export.__main__ import main
from model_export.export import Graph, ParityError
from model_export.importers import SMP_ARCHITECTURES, TORCHVISION_MODELS
from model_export.importers.presets import PRESETS, class_set
from model_export.importers.publish import Built, Release, next_version, publish
from model_export.importers.torchvision_ops import declare_missing_ops
from model_export.importers.weights import RANDOM_INIT_SEED, Weights
from tests.images import encoded
from tests.support import ROOT, Server, palette_labels, running_server

declare_missing_ops()
import segmentation_models_pytorch as smp  # noqa: E402
from torchvision.models import get_model_builder  # noqa: E402
from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402

SIZE = 64  # every import's input size: small, and one native bucket (no padding)
SEGFORMER_HUB_ID = "nvidia/segformer-b0-finetuned-ade-512-512"
Forward = Callable[[torch.Tensor], torch.Tensor]  # normalised batch -> logits at its size


def doc_imports() -> list[list[str]]:
    """The `python -m model_export import` commands of docs/MODEL.md's "Serving a real-photo
    model" section, as argument lists after `python -m model_export import`."""
    text = (ROOT / "docs" / "MODEL.md").read_text()
    section = text[text.index("## Serving a real-photo model") :].split("\n## ")[0]
    lines = " ".join(re.findall(r"```sh\n(.*?)```", section, re.S)).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in lines.splitlines()]
    return [c[4:] for c in commands if c[:4] == ["python", "-m", "model_export", "import"]]


def _torchvision(name: str, *, aux: bool = False) -> nn.Module:
    """The builder's network as ``--random-init`` makes it (same seed), or with aux heads."""
    torch.manual_seed(RANDOM_INIT_SEED)
    model = get_model_builder(name)(weights=None, weights_backbone=None, num_classes=21,
                                    aux_loss=aux)  # fmt: skip
    return model.eval()


def _calibrated(model: nn.Module) -> nn.Module:
    """``model`` with batch-norm statistics from a random batch. Randomly initialised,
    MobileNetV3's activations fade to ~1e-9 and every pixel gets the same label, which would
    prove little; calibrated, they stay near 1 and the labels vary."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batches seen: here one
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)))
    return model.eval()


def _saved(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _tiny_segformer(folder: Path) -> SegformerForSemanticSegmentation:
    """A tiny SegFormer (one block per stage, 8-64 channels) with ADE20K's 150 labels and a
    processor config whose normalisation is not ImageNet's, saved as a Hugging Face
    directory."""
    torch.manual_seed(1)
    config = SegformerConfig(
        num_labels=150,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=32,
    )
    model = SegformerForSemanticSegmentation(config).eval()
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        '{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}'
    )
    return model


class Imported:
    """The imports of this module: model name -> the library's own forward pass."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.forward: dict[str, Forward] = {}

    def run(self, argv: list[str], forward: Forward) -> None:
        """``python -m model_export import ARGV`` at SIZE into the repository."""
        assert main(["import", *argv, "--size", str(SIZE), "--repository", str(self.repo)]) == 0
        name = argv[argv.index("--name") + 1]
        assert (self.repo / name / "1" / "model.onnx").is_file()
        self.forward[name] = forward


def _import_docs_commands(imports: Imported, tmp: Path) -> None:
    """docs/MODEL.md's imports, the download swapped for weights made here: torchvision's with
    auxiliary heads (which the import drops), SegFormer's as a local directory."""
    torchvision_command, segformer_command = doc_imports()
    assert torchvision_command[:2] == ["torchvision", "deeplabv3_mobilenet_v3_large"]
    model = _calibrated(_torchvision("deeplabv3_mobilenet_v3_large", aux=True))
    weights = _saved(model, tmp / "deeplabv3.pt")
    argv = [f"--weights={weights}" if a == "--pretrained" else a for a in torchvision_command]
    imports.run(argv, lambda x: model(x)["out"])

    assert segformer_command[:2] == ["segformer", SEGFORMER_HUB_ID]
    segformer = _tiny_segformer(tmp / "segformer")
    argv = ["segformer", str(tmp / "segformer"), *segformer_command[2:]]
    argv.remove("--pretrained")
    imports.run(argv, lambda x: _upsampled(segformer(pixel_values=x).logits))


def _upsampled(logits: torch.Tensor) -> torch.Tensor:
    """HF's post_process_semantic_segmentation: bilinear, half-pixel centres, to the input."""
    return F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    tmp = tmp_path_factory.mktemp("import")
    imports = Imported(tmp / "models")
    _import_docs_commands(imports, tmp)
    # The ResNet networks as --random-init makes them (their labels vary as they are)...
    for name in ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101"):
        model = _torchvision(name)
        argv = ["torchvision", name, "--classes", "voc", "--name", name, "--random-init"]
        imports.run(argv, lambda x, m=model: m(x)["out"])
    # ... LR-ASPP (the docs' command imported the other MobileNetV3) with calibrated weights.
    lraspp = _calibrated(_torchvision("lraspp_mobilenet_v3_large"))
    weights = _saved(lraspp, tmp / "lraspp.pt")
    argv = ["torchvision", "lraspp_mobilenet_v3_large", "--weights", str(weights),
            "--classes", "voc", "--name", "lraspp_mobilenet_v3_large"]  # fmt: skip
    imports.run(argv, lambda x: lraspp(x)["out"])
    for architecture in SMP_ARCHITECTURES:
        model = getattr(smp, architecture)(
            encoder_name="resnet18", encoder_weights=None, classes=19
        ).eval()
        weights = _saved(model, tmp / f"{architecture}.pt")
        argv = ["smp", architecture, "--encoder", "resnet18", "--weights", str(weights),
                "--classes", "cityscapes", "--name", f"city-{architecture.lower()}"]  # fmt: skip
        imports.run(argv, model)
    return imports


@pytest.fixture(scope="module")
def server(imported: Imported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SEGSERVE_MODEL_REPOSITORY": str(imported.repo), "SEGSERVE_WORKER_THREADS": "2"}
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(env, log_path, ready_timeout=180) as srv:
        yield srv


EXPECTED = {  # model name -> its class preset
    "voc-deeplab-mnv3": "voc",  # the docs' commands
    "ade-segformer-b0": "ade20k",
    **{name: "voc" for name in TORCHVISION_MODELS if name != "deeplabv3_mobilenet_v3_large"},
    **{f"city-{architecture.lower()}": "cityscapes" for architecture in SMP_ARCHITECTURES},
}


def test_every_import_is_served_with_its_preset_classes(server: Server) -> None:
    with server.client() as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == set(EXPECTED)
    for name, preset in EXPECTED.items():
        (version,) = models[name]["versions"]
        assert [(c["label"], tuple(c["color"])) for c in version["classes"]] == list(
            zip(PRESETS[preset].labels, PRESETS[preset].colours, strict=True)
        ), name
        assert version["input"]["resize"] == "native"
        assert version["input"]["max_side"] == SIZE
    # SegFormer's normalisation is its processor config's: here not ImageNet's.
    segformer = models["ade-segformer-b0"]["versions"][0]["normalization"]
    assert (segformer["mean"], segformer["std"]) == ([0.5] * 3, [0.25] * 3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_served_labels_are_the_librarys_own(name: str, imported: Imported, server: Server) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    with server.client() as client:
        (version,) = client.get(f"/models/{name}").json()["versions"]
        response = client.post(
            "/segment",
            content=encoded(Image.fromarray(rgb)),
            params={"model": name, "format": "png"},
        )
    assert response.status_code == 200, response.text
    mean, std = (np.array(version["normalization"][k], np.float32) for k in ("mean", "std"))
    x = ((rgb.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
    with torch.inference_mode():
        expected = imported.forward[name](torch.from_numpy(x)).argmax(1)[0].numpy()
    assert len(np.unique(expected)) > 1  # one label everywhere would prove little
    agreement = (palette_labels(response.content) == expected).mean()
    assert agreement >= 0.999, (name, agreement)


class _Diverging(nn.Module):
    """A 1x1 convolution whose exported graph negates its logits: a broken export."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return -y if torch.compiler.is_exporting() else y


def test_a_parity_failure_writes_nothing(tmp_path: Path) -> None:
    built = Built(_Diverging(), 2, "diverging", "none", Weights(), Graph(), stride=1)
    (tmp_path / "broken" / "1").mkdir(parents=True)  # an earlier version stays as it is
    dataset, classes = "two", class_set(str(_labels(tmp_path, "background", "thing")))[1]
    with pytest.raises(ParityError, match="argmax agreement"):
        publish(built, Release("broken", tmp_path), classes, dataset, size=32)
    assert [p.name for p in (tmp_path / "broken").iterdir()] == ["1"]
    assert not any((tmp_path / "broken" / "1").iterdir())
    with pytest.raises(ParityError):  # a new model: not even its folder is left
        publish(built, Release("new", tmp_path), classes, dataset, size=32)
    assert not (tmp_path / "new").exists()


def _labels(folder: Path, *labels: str) -> Path:
    path = folder / "classes.txt"
    path.write_text("\n".join(labels) + "\n")
    return path


def test_the_version_is_one_more_than_the_highest(tmp_path: Path) -> None:
    assert next_version(tmp_path, "m") == 1
    for name in ("1", "3", "notes"):
        (tmp_path / "m" / name).mkdir(parents=True)
    assert next_version(tmp_path, "m") == 4


def test_weights_that_do_not_fit_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "unet.pt"
    model = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=19)
    torch.save(model.state_dict(), weights)
    argv = ["import", "smp", "Unet", "--encoder", "resnet18", "--weights", str(weights),
            "--classes", "voc", "--name", "u", "--repository", str(tmp_path / "m")]  # fmt: skip
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: the weights do not fit smp.Unet(resnet18):")
    assert "segmentation_head.0.bias is (19,) in the weights but (21,)" in line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["torchvision", "deeplabv3_mobilenet_v3_large", "--classes", "voc", "--pretrained"],
        ["segformer", SEGFORMER_HUB_ID, "--classes", "ade20k", "--pretrained"],
    ],
    ids=["torchvision", "segformer"],
)
def test_a_download_without_network_is_one_clear_line(argv: list[str], tmp_path: Path) -> None:
    # An empty torch hub and Hugging Face cache, the Hub offline: nothing to find, nothing to
    # wait for (this machine has no route out; the offline switch spares HF's retries).
    env = os.environ | {
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "model_export", "import", *argv, "--name", "m",
         "--repository", str(tmp_path / "models")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: cannot download"), line
    assert "on a machine with internet" in line
    if argv[0] == "torchvision":
        assert "https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-" in line
        assert f"{tmp_path / 'torch' / 'hub' / 'checkpoints'}/" in line
    else:
        assert f"hf download {SEGFORMER_HUB_ID} --local-dir DIR" in line
    assert not (tmp_path / "models").exists()
