"""jobs/get_flops.py and rayseg.tools.flops: counts checked against the analytic formula of a convolution."""
import json

import pytest
import torch
import torch.nn as nn

from rayseg.tools.flops import count_flops, human
from tool_helpers import TINY, load_job, run_job


def conv_flops(cin, cout, k, h_out, w_out):
    """torch's count for a convolution: 2 FLOPs per multiply-add (the bias is not counted)."""
    return 2 * cin * cout * k * k * h_out * w_out


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_single_conv_matches_the_formula():
    report = count_flops(OneConv().eval(), (20, 30))
    assert report.flops == conv_flops(3, 8, 3, 10, 15) == 64800
    assert report.macs == 32400
    assert report.params == report.inference_params == 8 * 3 * 9 + 8
    conv = next(m for m in report.modules if m.name == "conv")
    assert (conv.type, conv.depth, conv.flops, conv.params) == ("Conv2d", 1, 64800, 224)
    assert "Input shape: (1, 3, 20, 30)" in report.format()
    assert "32.400 KMACs" in report.format() and "64.800 KFLOPs" in report.format()


def test_human_units():
    assert [human(n) for n in (999, 1000, 1_234_567, 3.5e9, 2e12)] == ["999 ", "1.000 K", "1.235 M", "3.500 G",
                                                                        "2.000 T"]


def test_job_per_module_table_and_json(tmp_path):
    out = tmp_path / "flops.json"
    proc = run_job("get_flops.py", TINY, "--shape", 64, 48, "--depth", 2, "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["shape"] == [64, 48]
    mods = {m["name"]: m for m in report["modules"]}
    # The decode head's classifier: a 1×1 conv from 64 channels to 4 classes on the stride-8 map (8×6).
    assert mods["decode_head.conv_seg"]["flops"] == conv_flops(64, 4, 1, 8, 6)
    assert mods["decode_head.conv_seg"]["params"] == 64 * 4 + 4
    # The backbone's stem: 3→8 3×3 stride 2 on 64×48 (out 32×24).
    assert mods["backbone.stem.0"]["flops"] == conv_flops(3, 8, 3, 32, 24)
    # Every FLOP is in the backbone or the decode head; the auxiliary head does not run at inference.
    assert report["flops"] == mods["backbone"]["flops"] + mods["decode_head"]["flops"] > 0
    assert mods["auxiliary_head"]["flops"] == 0
    assert report["macs"] == report["flops"] // 2
    model_params = sum(mods[n]["params"] for n in ("backbone", "decode_head", "auxiliary_head"))
    assert report["params"] == model_params
    assert report["inference_params"] == model_params - mods["auxiliary_head"]["params"]
    lines = proc.stdout.splitlines()
    assert "Input shape: (1, 3, 64, 48)" in lines
    assert any(line.startswith("    backbone.stem ") for line in lines)  # depth 2, indented
    assert not any(line.lstrip().startswith("backbone.stem.0 ") for line in lines)  # depth 3 left out
    row = next(line for line in lines if line.startswith("  decode_head "))
    assert row.split()[1] == "FCNHead"


@pytest.mark.parametrize("args, message", [
    (["--shape", 0, 64], "--shape takes H W"),
    (["--shape", 1, 2, 3], "--shape takes H W"),
    (["--cfg-options", "model.backbone.type=NoSuchBackbone"], "NoSuchBackbone"),
])
def test_job_bad_arguments_exit_2(args, message, capsys):
    assert load_job("get_flops.py").main([str(TINY), *map(str, args)]) == 2
    err = capsys.readouterr().err
    # One "error: ..." line and no traceback; other lines may come from the session's Ray, which forwards its
    # processes' warnings (e.g. the raylet's low-disk one) into this process's stderr.
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def test_model_refusing_the_size_names_the_shape():
    class Picky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 1)

        def forward(self, x):
            if x.shape[-1] % 16:
                raise ValueError("input size must be divisible by 16")
            return self.conv(x)

    from rayseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot run on --shape 32 40: input size must be divisible by 16"):
        count_flops(Picky(), (32, 40))
    assert count_flops(Picky(), (32, 48)).flops == 2 * 3 * 32 * 48
    assert torch.is_grad_enabled()
