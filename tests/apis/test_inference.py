"""rayseg.apis.init_model / inference_model on the tiny shapes model, with real image and checkpoint files."""
import os

import cv2
import numpy as np
import pytest
import torch
from inference_fixtures import perturbed_tiny_model

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
    model = perturbed_tiny_model(cfg)
    ckpt = root / "latest.pth"
    atomic_torch_save(weights_file_payload(model.state_dict(), cfg, 7, classes=["bg", "c", "r", "t"],
                                           palette=[[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]), str(ckpt))
    bare = root / "bare.pth"  # no meta: classes/palette must come from the dataset class
    torch.save({"state_dict": model.state_dict()}, bare)
    make_demo_dataset(str(root / "data"), num_train=0, num_val=2, size=(64, 64), seed=1)
    images = sorted((root / "data" / "img_dir" / "val").glob("*.png"))
    odd = root / "odd_size.png"  # another size and aspect ratio than the training data
    cv2.imwrite(str(odd), cv2.resize(cv2.imread(str(images[0])), (90, 50)))
    return {"cfg": cfg, "model": model, "ckpt": str(ckpt), "bare": str(bare),
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


def test_mmseg_1x_checkpoint_gives_its_dataset_meta_classes(trained, tmp_path):
    """MMSeg 1.x keeps names and colours in meta.dataset_meta (and a message hub next to the weights)."""
    path = tmp_path / "iter_40000.pth"
    classes, palette = ["sky", "disc", "box", "wedge"], [[9, 9, 9], [8, 8, 8], [7, 7, 7], [6, 6, 6]]
    torch.save({"state_dict": trained["model"].state_dict(), "meta": {"mmseg_version": "1.2.2", "dataset_meta": {
        "classes": tuple(classes), "palette": palette}}, "message_hub": {"runtime_info": {"iter": 40000}}}, path)
    model = init_model(CONFIG, str(path))
    assert model.CLASSES == tuple(classes) and model.PALETTE == palette


def test_init_model_reads_a_file_uri_and_a_loaded_state(trained):
    from rayseg.inference import load_inference_model

    uri = "file://" + trained["ckpt"]
    model = init_model(CONFIG, uri)
    path = trained["images"][0]
    expected = inference_model(init_model(CONFIG, trained["ckpt"]), path)
    assert np.array_equal(inference_model(model, path), expected)
    state = {"state_dict": trained["model"].state_dict(), "meta": {"classes": ["a", "b", "c", "d"]}}
    loaded = load_inference_model(trained["cfg"], state)
    assert loaded.CLASSES == ("a", "b", "c", "d") and np.array_equal(inference_model(loaded, path), expected)


def test_inference_models_are_strict_and_never_fetch_pretrained_weights(trained, tmp_path):
    cfg = load_config(CONFIG, ["model.backbone.init_cfg={type: Pretrained, checkpoint: /nonexistent/r18.pth}"])
    model = init_model(cfg, trained["ckpt"])  # the checkpoint replaces the backbone: nothing is fetched
    assert torch.equal(model.backbone.stem[0].weight, trained["model"].backbone.stem[0].weight)
    with pytest.raises(CheckpointError, match="r18.pth"):
        init_model(cfg)  # without a checkpoint the initial weights are the config's
    other = load_config(CONFIG, ["model.decode_head.num_classes=5"])
    with pytest.raises(CheckpointError, match="decode_head.conv_seg.weight"):
        init_model(other, trained["ckpt"])  # a classifier of another size is an error, not random labels


def test_predictor_batches_same_size_results_like_single_images(trained):
    """Predictor.predict stacks same-size plain results (one forward pass) and keeps the input order;
    aug-test results go through aug_predict in the same call."""
    from rayseg.inference import Predictor, TestPipeline

    model = init_model(CONFIG, trained["ckpt"])
    pipeline = TestPipeline(model.cfg)
    predictor = Predictor.for_pipeline(model, pipeline.pipeline_cfg)
    imgs = [trained["images"][0], trained["odd"], trained["images"][1]]
    one_by_one = [predictor.predict([pipeline(p)])[0] for p in imgs]
    together = predictor.predict([pipeline(p) for p in imgs])
    for a, b in zip(one_by_one, together):
        assert np.array_equal(a, b)
    assert [p.shape for p in together] == [(64, 64), (50, 90), (64, 64)]
    aug_cfg = dict(model.cfg, data={"test": dict(model.cfg["data"]["test"], pipeline=enable_aug_test(
        model.cfg["data"]["test"]["pipeline"], ratios=(0.5, 1.0), flip=True))})
    aug = TestPipeline(aug_cfg)(trained["odd"])
    assert len(aug["aug_variants"]) == 4
    mixed = predictor.predict([pipeline(imgs[0]), aug])
    assert np.array_equal(mixed[0], one_by_one[0])
    model.cfg = aug_cfg
    assert np.array_equal(mixed[1], inference_model(model, trained["odd"]))
