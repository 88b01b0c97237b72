"""Decoding where the batch lands (`--decode torchcodec|torchvision`): close to PIL's pixels, recorded in the store,
PNGs and JPEGs the decoder refuses fall back to PIL, a file neither reads is one line naming it."""

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gcctl.datasets import load_dataset
from gcctl.datasets.decoding import DECODERS, decode_batch, jpeg_decoder
from gcctl.datasets.images import EncodedImageDataset, read_rgb
from gcctl.errors import GcctlError
from gcctl.store import FeatureStore, Shard, extract, merge
from gcctl.store.format import extraction_identity


def _bytes_of(image: Image.Image, kind: str, **save) -> torch.Tensor:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **save)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


LIBRARIES = DECODERS[1:]


@pytest.mark.parametrize("decode", LIBRARIES)
def test_a_librarys_decoding_stores_nearly_the_features_of_pil_and_records_it(jpeg_waterbirds, micro_bundle, tmp_path, decode):
    table = load_dataset("waterbirds", jpeg_waterbirds)
    extract(table, micro_bundle, tmp_path / "pil.h5", batch_size=64, dtype="float32")
    summary = extract(table, micro_bundle, tmp_path / "tv.h5", batch_size=64, dtype="float32", decode=decode, workers=1)
    assert summary["decode"] == decode and summary["rows"] == len(table.frame)
    with FeatureStore(tmp_path / "pil.h5") as pil, FeatureStore(tmp_path / "tv.h5") as tv:
        assert pil.provenance["decode"] == "pil" and tv.provenance["decode"] == decode
        assert extraction_identity(pil.provenance) != extraction_identity(tv.provenance)
        cosine = (pil.load_features() * tv.load_features()).sum(axis=1)
        assert cosine.min() > 0.99 and not np.array_equal(pil.load_features(), tv.load_features())
        np.testing.assert_array_equal(tv.ids, pil.ids)


def test_a_partial_of_the_other_decoder_is_restarted_not_resumed(jpeg_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", jpeg_waterbirds)
    extract(table, micro_bundle, tmp_path / "tv.h5", batch_size=64, decode="torchcodec")
    shutil.move(tmp_path / "tv.h5", tmp_path / "f.h5.partial")  # as if cut short: a PIL run must not keep its rows
    summary = extract(table, micro_bundle, tmp_path / "f.h5", batch_size=64)
    assert summary["resumed_from"] == 0
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.provenance["decode"] == "pil"


def test_a_store_from_before_the_decoder_was_recorded_reads_as_pil():
    recorded = {"dtype": "float16", "decode": "pil"}
    assert extraction_identity({"dtype": "float16"}) == extraction_identity(recorded)


def test_workers_hand_over_only_the_files_bytes_in_cpu_memory(jpeg_waterbirds):
    table = load_dataset("waterbirds", jpeg_waterbirds)
    data, row = EncodedImageDataset(table, indices=[3])[0]
    assert row == 3 and data.device.type == "cpu" and data.dtype == torch.uint8
    assert bytes(data.tolist()) == (jpeg_waterbirds / table.frame["path"][3]).read_bytes()


@pytest.mark.parametrize("decode", LIBRARIES)
def test_a_png_and_a_jpeg_the_decoder_refuses_fall_back_to_pil(tmp_path, decode):
    transparent = Image.new("RGBA", (5, 4), (10, 200, 30, 0))  # flattened onto white, as PIL's path does
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8))
    encoded = [_bytes_of(transparent, "PNG"), _bytes_of(photo, "JPEG"), _bytes_of(photo, "JPEG")[:-40].clone()]
    paths = [str(tmp_path / name) for name in ("a.png", "b.jpg", "c.jpg")]  # c.jpg cut short: PIL refuses it too
    for path, data in zip(paths, encoded):
        (tmp_path / path).write_bytes(bytes(data.tolist()))
    decode_jpeg = jpeg_decoder(decode)
    with pytest.raises(GcctlError, match=r"^cannot read image .*c\.jpg: "):
        decode_batch(decode_jpeg, encoded, paths, torch.device("cpu"))
    png, jpeg = decode_batch(decode_jpeg, encoded[:2], paths[:2], torch.device("cpu"))
    np.testing.assert_array_equal(png.permute(1, 2, 0).numpy(), np.asarray(read_rgb(paths[0])))
    assert png.shape == (3, 4, 5) and int(png[0, 0, 0]) == 255
    assert jpeg.shape == (3, 6, 8)
    np.testing.assert_array_equal(jpeg.permute(1, 2, 0).numpy(), np.asarray(read_rgb(paths[1])))  # libjpeg-turbo, both


def _photo_bytes(tmp_path, name="p.jpg", **save):
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (6, 8, 3), dtype=np.uint8))
    data = _bytes_of(photo, "JPEG", **save)
    (tmp_path / name).write_bytes(data.numpy().tobytes())
    return data, str(tmp_path / name)


def test_a_jpeg_the_decoder_refuses_but_pil_reads_is_decoded_by_pil(tmp_path):
    refused, refused_path = _photo_bytes(tmp_path, "refused.jpg")
    accepted, accepted_path = _photo_bytes(tmp_path, "accepted.jpg", quality=50)
    library = jpeg_decoder("torchvision")

    def refusing(data, mode, device):  # refuses the batch, then the one file alone
        if isinstance(data, list) or data is refused:
            raise RuntimeError("unsupported JPEG")
        return library(data, mode=mode, device=device)

    alone, kept = decode_batch(refusing, [refused, accepted], [refused_path, accepted_path], torch.device("cpu"))
    np.testing.assert_array_equal(alone.permute(1, 2, 0).numpy(), np.asarray(read_rgb(refused_path)))
    np.testing.assert_array_equal(kept.numpy(), library(accepted, mode="RGB").numpy())


def test_the_library_decodes_on_the_cpu_for_a_device_that_is_not_cuda(tmp_path):
    data, path = _photo_bytes(tmp_path)
    asked = []

    def recording(batch, mode, device):
        asked.append(device)
        return jpeg_decoder("torchvision")(batch, mode=mode, device=device)

    (image,) = decode_batch(recording, [data], [path], torch.device("meta"))  # as MPS: no JPEG decoder there
    assert asked == [torch.device("cpu")] and image.device.type == "meta"


def test_out_of_gpu_memory_while_decoding_is_one_line(tmp_path):
    data, path = _photo_bytes(tmp_path)

    def exhausted(batch, mode, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(GcctlError, match=r"^decoding a batch of 1 JPEGs ran out of GPU memory; lower --batch-size$"):
        decode_batch(exhausted, [data], [path], torch.device("cpu"))


def test_a_decompression_bomb_with_exif_is_one_line_naming_it(tmp_path, monkeypatch):
    exif = Image.Exif()
    exif[0x0112] = 1
    data, path = _photo_bytes(tmp_path, exif=exif.tobytes())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 48 pixels: over twice the limit, PIL refuses it
    with pytest.raises(GcctlError, match=rf"^cannot read image {path}: .*decompression bomb"):
        decode_batch(jpeg_decoder("torchvision"), [data], [path], torch.device("cpu"))


def test_a_library_too_old_or_that_cannot_load_is_one_line(monkeypatch):
    import importlib
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda package: "0.19.1+cpu")
    with pytest.raises(GcctlError, match=r"^--decode torchvision needs torchvision 0\.20 or later \(installed: 0\.19\); "):
        jpeg_decoder("torchvision")

    def broken(name):
        raise OSError("libnvjpeg.so.12: cannot open shared object file")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(GcctlError, match=r"^--decode torchcodec: the installed torchcodec cannot load its JPEG decoder "
                                         r"\(libnvjpeg.*\); install the release built for this torch"):
        jpeg_decoder("torchcodec")


def test_a_decoder_whose_package_is_missing_is_one_line(monkeypatch):
    import importlib

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(GcctlError, match=r"^--decode torchcodec needs the torchcodec package \(pip install 'gcctl\[decode\]' .*choose --decode pil$"):
        jpeg_decoder("torchcodec")
    assert jpeg_decoder("pil") is None


def test_a_corrupt_jpeg_is_one_line_naming_it_and_leaves_no_store(jpeg_waterbirds, tmp_path, run_cli):
    broken = tmp_path / "broken"
    shutil.copytree(jpeg_waterbirds, broken)
    table = load_dataset("waterbirds", broken)
    damaged = broken / table.frame["path"][5]
    damaged.write_bytes(damaged.read_bytes()[:60])
    code, out, err = run_cli("extract", "--dataset", "waterbirds", "--root", str(broken), "--model", "gcctl-micro",
                             "--device", "cpu", "--decode", "torchcodec", "--out", str(tmp_path / "f.h5"))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and f"cannot read image {damaged}" in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "f.h5").exists()


def test_an_unknown_decoder_is_one_line(jpeg_waterbirds, tmp_path, run_cli):
    code, _, err = run_cli("extract", "--dataset", "waterbirds", "--root", str(jpeg_waterbirds), "--model", "gcctl-micro",
                           "--device", "cpu", "--decode", "nvjpeg", "--out", str(tmp_path / "f.h5"))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "--decode 'nvjpeg'" in lines[0] and "pil, torchcodec, torchvision" in lines[0]
    assert not list(tmp_path.iterdir())


def test_merge_refuses_shards_of_two_decoders(jpeg_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", jpeg_waterbirds)
    extract(table, micro_bundle, tmp_path / "a.h5", batch_size=64, shard=Shard(0, 2))
    extract(table, micro_bundle, tmp_path / "b.h5", batch_size=64, shard=Shard(1, 2), decode="torchcodec")
    with pytest.raises(GcctlError, match="extracted differently.*decode"):
        merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "whole.h5")
    assert not (tmp_path / "whole.h5").exists()


def test_a_batch_of_mixed_sizes_is_each_image_transformed_alone(micro_bundle):
    from gcctl.clip.preprocess import decoded_batch, preprocess_uint8

    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
              for height, width in ((40, 50), (32, 32), (40, 50), (64, 36))]
    batch = decoded_batch(images, micro_bundle.model.visual.preprocess_cfg)
    for image, row in zip(images, batch):
        alone = preprocess_uint8(image.permute(1, 2, 0)[None], micro_bundle.model)
        torch.testing.assert_close(row, alone[0], rtol=0, atol=0)


def test_a_model_that_squashes_is_refused_before_any_work(jpeg_waterbirds, micro_bundle, tmp_path):
    micro_bundle.model.visual.preprocess_cfg = {**micro_bundle.model.visual.preprocess_cfg, "resize_mode": "squash"}
    table = load_dataset("waterbirds", jpeg_waterbirds)
    with pytest.raises(GcctlError, match=r"^--decode torchcodec: .*resize_mode is 'squash'; extract with --decode pil$"):
        extract(table, micro_bundle, tmp_path / "f.h5", decode="torchcodec")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("decode", LIBRARIES)
def test_a_jpeg_its_exif_says_to_rotate_keeps_the_geometry_of_pil(tmp_path, decode):
    photo = Image.fromarray(np.linspace(0, 255, 6 * 8 * 3).reshape(6, 8, 3).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": TorchCodec would turn it upright, PIL does not
    data = _bytes_of(photo, "JPEG", exif=exif.tobytes())
    (tmp_path / "r.jpg").write_bytes(data.numpy().tobytes())
    (image,) = decode_batch(jpeg_decoder(decode), [data], [str(tmp_path / "r.jpg")], torch.device("cpu"))
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), np.asarray(read_rgb(str(tmp_path / "r.jpg"))))


def test_an_empty_file_is_one_line_naming_it(jpeg_waterbirds, tmp_path):
    broken = shutil.copytree(jpeg_waterbirds, tmp_path / "broken")
    table = load_dataset("waterbirds", broken)
    empty = broken / table.frame["path"][5]
    empty.write_bytes(b"")
    data, row = EncodedImageDataset(table, indices=[5])[0]
    assert row == 5 and data.numel() == 0
    with pytest.raises(GcctlError, match=rf"^cannot read image {empty}: "):
        decode_batch(jpeg_decoder("torchcodec"), [data], [str(empty)], torch.device("cpu"))
