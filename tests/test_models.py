"""Models: the embedded weights really load, other weights files and URLs load, the registry answers."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
import torch
from safetensors.torch import save_file

from imgclf.data.augment import center_batch
from imgclf.data.decode import load_presized
from imgclf.errors import UserError
from imgclf.models import create_model, layer_groups, list_models
from imgclf.models.weights import download, load_into, read_state_dict


def test_embedded_weights_predict_imagenet_ants_and_bees(hymenoptera):
    """Zero-shot ImageNet predictions on real photos name ImageNet's ant (310) and bee (309)."""
    model, meta = create_model(num_classes=1000)
    assert meta.pretrained == "embedded" and meta.mean == (0.5, 0.5, 0.5)
    model.eval()
    mean, std = torch.tensor(meta.mean), torch.tensor(meta.std)
    for cls, imagenet_id in (("ants", 310), ("bees", 309)):
        files = sorted((hymenoptera / "val" / cls).glob("*.jpg"))[:12]
        x = center_batch(torch.stack([load_presized(f, 256) for f in files]), 224, mean, std)
        with torch.no_grad():
            top = model(x).argmax(-1)
        assert (top == imagenet_id).float().mean() >= 0.75, (cls, top.tolist())


def test_random_init_model_does_not_know_ants():
    model, meta = create_model(num_classes=1000, pretrained=False)
    assert meta.pretrained == "none"
    # a random head on random weights: the classifier is not the embedded one
    ref, _ = create_model(num_classes=1000)
    assert not torch.allclose(model.classifier.weight, ref.classifier.weight)


def test_new_head_and_layer_groups_cover_every_parameter_once():
    model, _ = create_model(num_classes=3)
    assert model.get_classifier().out_features == 3
    groups = layer_groups(model)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups[-1]} == {id(p) for p in model.get_classifier().parameters()}


def test_weights_file_safetensors_and_pth_round_trip(tmp_path):
    src, _ = create_model("resnet18", num_classes=4, pretrained=False)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model, meta = create_model("resnet18", num_classes=4, weights=str(tmp_path / name))
        assert meta.pretrained.endswith(name)
        assert torch.equal(model.conv1.weight, src.conv1.weight)
        assert torch.equal(model.fc.weight, src.fc.weight)  # same class count: head kept
    # another class count: body loaded, head fresh
    model, _ = create_model("resnet18", num_classes=2, weights=str(tmp_path / "w.safetensors"))
    assert torch.equal(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_weights_by_position_and_wrong_arch(tmp_path):
    src, _ = create_model("resnet18", num_classes=2, pretrained=False)
    renamed = {f"t{i}": v for i, v in enumerate(src.state_dict().values())}
    dst, _ = create_model("resnet18", num_classes=2, pretrained=False)
    assert load_into(dst, renamed) == len(renamed)
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    with pytest.raises(UserError, match="wrong --arch"):
        create_model("efficientnet_lite0", num_classes=2, weights=str(tmp_path / "r18.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(UserError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server over tmp_path/www, standing in for a weights host."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_weights_from_url_with_checksum(tmp_path, http_dir):
    import hashlib

    root, url = http_dir
    src, _ = create_model("resnet18", num_classes=2, pretrained=False)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(root / "plain.safetensors"))
    digest = hashlib.sha256((root / "plain.safetensors").read_bytes()).hexdigest()
    (root / f"r18-{digest[:8]}.safetensors").write_bytes((root / "plain.safetensors").read_bytes())
    (root / "r18-deadbeef.safetensors").write_bytes((root / "plain.safetensors").read_bytes())
    cache = tmp_path / "cache"
    got = download(f"{url}/r18-{digest[:8]}.safetensors", cache, progress=False)
    assert got.read_bytes() == (root / "plain.safetensors").read_bytes()
    with pytest.raises(UserError, match="checksum"):
        download(f"{url}/r18-deadbeef.safetensors", cache, progress=False)
    assert not list(cache.glob("*.part")) and not (cache / "r18-deadbeef.safetensors").exists()
    with pytest.raises(UserError, match="download failed"):
        download(f"{url}/missing.safetensors", cache, progress=False)


def test_registry_lists_and_rejects():
    names = list_models()
    assert names[0] == "efficientnet_lite0" and "resnet18" in names
    assert list_models("*lite0*")[0] == "efficientnet_lite0"
    with pytest.raises(UserError, match="unknown architecture"):
        create_model("resnet_does_not_exist", num_classes=2)


def test_default_norm_matches_the_model_meta_without_building_it():
    from imgclf.models.registry import default_norm

    for arch in ("efficientnet_lite0", "resnet18"):
        _, meta = create_model(arch, num_classes=2, pretrained=False)
        assert default_norm(arch) == (meta.mean, meta.std)
