"""rayseg.apis.init_model / inference_model on the tiny shapes model, with real image and checkpoint files."""
import os

import cv2
import numpy as np
import pytest
import torch

from rayseg.apis import inference_model, init_model, show_result
from rayseg.config import load_config
from rayseg.datasets.compose import enable_aug_test
from rayseg.datasets.demo import DEMO_CLASSES, DEMO_PALETTE, make_demo_dataset
from rayseg.datasets.ray_data import DeviceNormalizer
from rayseg.datasets.transforms import rescale_size
from rayseg.engine.checkpoint import atomic_torch_save, weights_file_payload
from rayseg.errors import CheckpointError, ConfigError, DataError
from rayseg.models import build_segmentor

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "tests", "configs", "tiny_shapes.yaml")
TEST_SCALE = (64, 64)  # the test pipeline's MultiScaleFlipAug img_scale in tiny_shapes.yaml


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny-shapes model with non-default weights saved as latest.pth, plus demo images."""
    root = tmp_path_factory.mktemp("inference")
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = build_segmentor(cfg["model"])
    with torch.no_grad():  # move BN statistics and the classifier away from their initial values
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
        model.decode_head.conv_seg.weight.mul_(50)
    ckpt = root / "latest.pth"
    atomic_torch_save(weights_file_payload(model.state_dict(), cfg, 7, classes=["bg", "c", "r", "t"],
                                           palette=[[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]), str(ckpt))
    bare = root / "bare.pth"  # no meta: classes/palette must come from the dataset class
    torch.save({"state_dict": model.state_dict()}, bare)
    make_demo_dataset(str(root / "data"), num_train=0, num_val=2, size=(64, 64), seed=1)
    images = sorted((root / "data" / "img_dir" / "val").glob("*.png"))
    odd = root / "odd_size.png"  # another size and aspect ratio than the training data
    cv2.imwrite(str(odd), cv2.resize(cv2.imread(str(images[0])), (90, 50)))
    return {"cfg": cfg, "model": model.eval(), "ckpt": str(ckpt), "bare": str(bare),
            "images": [str(p) for p in images], "odd": str(odd)}


def manual_predict(model, cfg, img):
    """The test pipeline written out by hand: keep-ratio resize to 64×64, normalise, predict."""
    h, w = img.shape[:2]
    new_w, new_h = rescale_size(w, h, TEST_SCALE)
    resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    normalizer = DeviceNormalizer.from_pipeline(cfg["data"]["test"]["pipeline"])
    x = normalizer(torch.from_numpy(resized)[None])
    with torch.no_grad():
        return x, model.predict(x, ori_shape=(h, w))[0].numpy()


def test_init_model_loads_weights_and_meta(trained):
    model = init_model(CONFIG, trained["ckpt"])
    assert not model.training
    for key, value in trained["model"].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.CLASSES == ("bg", "c", "r", "t")
    assert model.PALETTE == [[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]
    assert model.cfg["data"]["test"]["pipeline"] == trained["cfg"]["data"]["test"]["pipeline"]


def test_init_model_from_a_dict_takes_classes_from_the_dataset_class(trained):
    model = init_model(trained["cfg"], trained["bare"], cfg_options=["model.test_cfg.mode=whole",
                                                                      "data.test.pipeline.1.img_scale=[32,32]"])
    assert model.CLASSES == DEMO_CLASSES and model.PALETTE == DEMO_PALETTE
    assert model.cfg["data"]["test"]["pipeline"][1]["img_scale"] == [32, 32]
    assert trained["cfg"]["data"]["test"]["pipeline"][1]["img_scale"] == [64, 64]  # caller's dict untouched
    ckpt_dir = os.path.dirname(trained["ckpt"])  # a folder without checkpoint.pt
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        init_model(CONFIG, ckpt_dir)


def test_inference_on_path_array_and_list_matches_manual_predict(trained):
    model = init_model(CONFIG, trained["ckpt"])
    path = trained["images"][0]
    img = cv2.imread(path)
    got = inference_model(model, path)
    _, expected = manual_predict(trained["model"], trained["cfg"], img)
    assert got.shape == img.shape[:2] and got.dtype == np.int64
    assert np.array_equal(got, expected)
    assert len(np.unique(got)) > 1  # the weights give a non-trivial map, so equality means something
    assert np.array_equal(inference_model(model, img), got)
    results = inference_model(model, [path, trained["odd"], img])
    assert isinstance(results, list) and len(results) == 3
    assert np.array_equal(results[0], got) and np.array_equal(results[2], got)
    odd = cv2.imread(trained["odd"])
    assert results[1].shape == (50, 90)
    assert np.array_equal(results[1], manual_predict(trained["model"], trained["cfg"], odd)[1])
    # The result plugs into show_result with the model's palette.
    overlay = show_result(trained["odd"], results[1], model.PALETTE)
    assert overlay.shape == (50, 90, 3)


def test_inference_with_aug_test_averages_scales_and_flips(trained):
    model = init_model(CONFIG, trained["ckpt"])
    model.cfg["data"]["test"]["pipeline"] = enable_aug_test(model.cfg["data"]["test"]["pipeline"],
                                                            ratios=(0.5, 1.0), flip=True)
    img = cv2.imread(trained["odd"])
    got = inference_model(model, img)
    assert got.shape == (50, 90)
    # By hand: two scales of (64, 64) × {plain, horizontally flipped}, softmax, un-flip, average.
    normalizer = DeviceNormalizer.from_pipeline(trained["cfg"]["data"]["test"]["pipeline"])
    total = 0
    with torch.no_grad():
        for scale in ((32, 32), (64, 64)):
            new_w, new_h = rescale_size(90, 50, scale)
            resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            for flip in (False, True):
                x = np.ascontiguousarray(resized[:, ::-1]) if flip else resized
                probs = trained["model"].inference(normalizer(torch.from_numpy(x)[None]), (50, 90)).softmax(1)
                total = total + (probs.flip(3) if flip else probs)
    assert np.array_equal(got, (total / 4).argmax(1)[0].numpy())
    assert not np.array_equal(got, inference_model(init_model(CONFIG, trained["ckpt"]), img))


def test_unreadable_inputs_raise_data_errors_naming_them(trained, tmp_path):
    model = init_model(CONFIG, trained["ckpt"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match="broken.png"):
        inference_model(model, str(broken))
    missing = tmp_path / "missing.jpg"
    with pytest.raises(DataError, match="missing.jpg"):
        inference_model(model, [trained["images"][0], str(missing)])
    with pytest.raises(DataError, match=r"\(4, 4, 2\)"):
        inference_model(model, np.zeros((4, 4, 2), np.uint8))
    bare = build_segmentor(trained["cfg"]["model"])
    with pytest.raises(ConfigError, match="init_model"):
        inference_model(bare, trained["images"][0])
