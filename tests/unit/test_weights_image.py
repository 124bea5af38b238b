"""Weights images: one packed host copy per server, mapped by every process that serves the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from deepplan_backend.runtime import prepared as prepared_module
from deepplan_backend.runtime.prepared import prepare_imaged, prepare_shared, release_shared
from deepplan_backend.runtime.weights_image import IMAGES_ENV, ImageKey, images_enabled
from deepplan_backend.runtime.zoo import load_model, source_identity

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def folder():
    """An image folder in shared memory, as a server's residency folder is (else on disk: the code is the same)."""
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="deepplan-test-images-", dir=base) as d:
        yield Path(d)


def _images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.img"))


def _output(module: torch.nn.Module, name: str) -> torch.Tensor:
    ref = load_model(name)
    inputs = ref.example_inputs(2, None if ref.family == "resnet" else 8, seed=3)
    with torch.inference_mode():
        return module(**inputs)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-resnet", "tiny-roberta"])
def test_mapped_image_serves_the_same_model_as_a_build(folder, name):
    built = prepare_imaged(folder, name)
    mapped = prepare_imaged(folder, name)
    assert built.origin.startswith("prepared in image") and mapped.origin.startswith("mapped from image")
    assert set(mapped.prepare_ms) == {"map", "skeleton", "bind", "pin"}
    assert mapped.table == built.table
    assert mapped.store.buffer.data_ptr() != built.store.buffer.data_ptr()  # two mappings of one file
    want = _output(load_model(name).module, name)
    assert torch.equal(_output(built.model.module, name), want)
    assert torch.equal(_output(mapped.model.module, name), want)
    built.image.release()
    assert _images(folder), "deleted while another user still maps it"
    mapped.image.release()
    assert _images(folder) == [], "the last user's release leaves the image behind"


def test_another_process_maps_the_image_and_the_last_release_deletes_it(folder):
    here = prepare_imaged(folder, "tiny-bert")
    script = (
        "import json, sys, torch\n"
        "from pathlib import Path\n"
        "from deepplan_backend.runtime.prepared import prepare_imaged\n"
        "from deepplan_backend.runtime.zoo import load_model\n"
        "p = prepare_imaged(Path(sys.argv[1]), 'tiny-bert')\n"
        "x = load_model('tiny-bert').example_inputs(2, 8, seed=3)\n"
        "with torch.inference_mode():\n"
        "    out = p.model.module(**x)\n"
        "print(json.dumps({'origin': p.origin, 'sum': float(out.double().sum())}))\n"
        "p.image.release()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["origin"].startswith("mapped from image")
    assert result["sum"] == pytest.approx(float(_output(here.model.module, "tiny-bert").double().sum()), rel=1e-6)
    assert _images(folder), "the other process's release deleted an image this process still maps"
    here.image.release()
    assert _images(folder) == []


def test_processes_starting_together_build_the_image_once(folder):
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from deepplan_backend.runtime.prepared import prepare_imaged\n"
        "p = prepare_imaged(Path(sys.argv[1]), 'tiny-gpt2')\n"
        "print(p.origin.split(' image')[0])\n"
        "sys.stdin.read()\n"  # hold the image until the test has seen both
        "p.image.release()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )
        for _ in range(2)
    ]  # fmt: skip
    try:
        origins = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        for p in procs:
            p.communicate(timeout=60)
    assert origins == ["mapped from", "prepared in"], [p.stderr for p in procs]
    assert _images(folder) == [], "the image outlived both of its users' releases"


@pytest.mark.parametrize("damage", ["magic", "truncate", "key"])
def test_an_unusable_image_is_built_again(folder, damage, capsys):
    good = prepare_imaged(folder, "tiny-bert")
    path = good.image.path
    data = bytearray(path.read_bytes())
    good.image.release()  # its only user: the image is gone; write a damaged one in its place
    if damage == "magic":
        data[:4] = b"XXXX"
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        header_end = data.index(b'"key": "') + len('"key": "')
        data[header_end : header_end + 4] = b"0000"
    path.write_bytes(bytes(data))
    capsys.readouterr()
    again = prepare_imaged(folder, "tiny-bert")
    assert "unusable" in capsys.readouterr().out
    assert again.origin.startswith("prepared in image")
    assert torch.equal(_output(again.model.module, "tiny-bert"), _output(load_model("tiny-bert").module, "tiny-bert"))
    again.image.release()


def test_no_room_in_shared_memory_falls_back_to_a_private_copy(folder, monkeypatch, capsys):
    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    p = prepare_imaged(folder, "tiny-bert")
    assert p.image is None and p.origin == "prepared"
    assert "packs its own copy" in capsys.readouterr().out
    assert list(folder.iterdir()) == [folder / f"{ImageKey(source_identity('tiny-bert'), 'float32', 0).digest}.lock"]
    assert torch.equal(_output(p.model.module, "tiny-bert"), _output(load_model("tiny-bert").module, "tiny-bert"))


def test_dtype_and_seed_make_other_images(folder):
    a = prepare_imaged(folder, "tiny-bert")
    b = prepare_imaged(folder, "tiny-bert", seed=1)
    c = prepare_imaged(folder, "tiny-bert", dtype="float16")
    assert len(_images(folder)) == 3
    assert not torch.equal(a.store.buffer[:4096], b.store.buffer[:4096])
    for p in (a, b, c):
        p.image.release()


def test_shared_users_keep_the_image_until_the_last_release(folder):
    first = prepare_shared("tiny-roberta", image_folder=folder)
    second = prepare_shared("tiny-roberta", image_folder=folder)
    assert first.store is second.store and first.model.module is not second.model.module
    assert len(_images(folder)) == 1
    release_shared("tiny-roberta")
    assert len(_images(folder)) == 1
    release_shared("tiny-roberta")
    assert _images(folder) == []
    assert ("tiny-roberta", "float32", 0) not in prepared_module._shared_stores


def test_every_shared_user_says_how_its_weights_came(folder):
    """A served instance is a clone of the process's first user: it must report a mapped image as mapped."""
    elsewhere = prepare_imaged(folder, "tiny-roberta")  # stands for the process that built the image
    first = prepare_shared("tiny-roberta", image_folder=folder)
    second = prepare_shared("tiny-roberta", image_folder=folder)
    assert first.origin == second.origin == f"mapped from image {elsewhere.image.path.name}"
    release_shared("tiny-roberta")
    release_shared("tiny-roberta")
    elsewhere.image.release()
    assert _images(folder) == []


def test_a_checkpoint_source_changes_with_its_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    before = source_identity(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    assert source_identity(str(tmp_path)) != before
    assert source_identity("tiny-bert") != source_identity("bert-base")


def test_images_only_in_memory_and_not_when_turned_off(monkeypatch):
    if Path("/dev/shm").is_dir():
        assert images_enabled(Path("/dev/shm/deepplan-residency-1"))
    assert not images_enabled(Path("/proc/self"))  # procfs: not memory we may write weights to
    monkeypatch.setenv(IMAGES_ENV, "0")
    assert not images_enabled(Path("/dev/shm/deepplan-residency-1"))


def test_a_folder_others_can_write_is_not_used(folder, capsys):
    """Whoever can write the image folder could hand the server's processes other weights: a private copy then."""
    images = folder / "weights"
    images.mkdir(mode=0o777)
    images.chmod(0o777)
    p = prepare_imaged(images, "tiny-bert")
    assert p.image is None and p.origin == "prepared"
    assert "others cannot write" in capsys.readouterr().out
    assert list(images.iterdir()) == []
    fresh = prepare_imaged(folder / "new", "tiny-bert")  # created private
    assert fresh.image is not None and (folder / "new").stat().st_mode & 0o777 == 0o700
    fresh.image.release()
